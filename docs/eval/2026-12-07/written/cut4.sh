#!/usr/bin/env bash
# Cut first (C4; RULE-CUT.md): S4's compressor run cut to LoRA r 16, then the generator and retrieval
# stages at r 16 against the cut memories, a bf16 export with --expand 1, the written dev and dev sets at
# the model's defaults (hybrid). As run on 2026-12-07 (log: cut4.log).
set -euo pipefail
cd "$(dirname "$0")/../../../.."  # the repository root
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
export LD_PRELOAD=$PWD/.venv/lib/python3.11/site-packages/ray/core/libjemalloc.so MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0
D=.cache/e5x E=.cache/eval-e5x C=.venv/bin/clara
date -u
test -f $D/cut4-scp/clara.json || .venv/bin/python -m clara_cli.train.export $D/scp-wq4-3e-4 $D/cut4-scp fp32 --rank 16
$C train generator $D/data-nw3/instruct-mix.jsonl --init-from $D/cut4-scp --out $D/cut4-gen --max-examples 640 --steps 40 \
  --expand-rate 0 --lr 2e-4 --batch-size 8 --grad-accum 2 --save-every 10 --no-dropout --seed 0 --dtype auto
date -u
$C train retrieval $D/data-nw3/pretrain.jsonl --init-from $D/cut4-gen --out $D/cut4-ret --max-examples 6000 \
  --steps 100 --batch-size 32 --save-every 25 --no-dropout --seed 0 --dtype auto
date -u
.venv/bin/python -m clara_cli.train.export $D/cut4-ret $D/cand-cut4 bf16 --expand 1
$C --store $E/store-dev-cut4 update $E/dev.jsonl --model $D/cand-cut4 --dtype auto
for X in 0 1; do
  $C --store $E/store-dev-cut4 eval $E/dev_qa_written-415.jsonl -k 5 --model $D/cand-cut4 --dtype auto --expand $X \
    --retriever hybrid --baseline none --report $E/dev_qa_written-415-cut4-hybrid-expand$X
done
date -u; echo CUT4-DEVW-DONE
for X in 0 1; do
  $C --store $E/store-dev-cut4 eval data/dev_qa.jsonl -k 5 --model $D/cand-cut4 --dtype auto --expand $X \
    --retriever hybrid --baseline none --report $E/dev_qa-cut4-hybrid-expand$X
done
date -u; echo CUT4-DONE
