#!/usr/bin/env bash
# G120 (RULE-G120.md): S4's compressor run, a 120-step generator stage, the retrieval stage, the export,
# the written dev and dev sets at the model's defaults (hybrid). As run on 2026-12-07 (log: g120.log).
set -euo pipefail
cd "$(dirname "$0")/../../../.."  # the repository root
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
export LD_PRELOAD=$PWD/.venv/lib/python3.11/site-packages/ray/core/libjemalloc.so MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0
D=.cache/e5x E=.cache/eval-e5x C=.venv/bin/clara
date -u
$C train generator $D/data-nw3/instruct-mix.jsonl --init-from $D/scp-wq4-3e-4 --out $D/g120-gen --max-examples 1920 --steps 120 \
  --expand-rate 0 --lr 2e-4 --batch-size 8 --grad-accum 2 --save-every 10 --no-dropout --seed 0 --dtype auto
date -u
$C train retrieval $D/data-nw3/pretrain.jsonl --init-from $D/g120-gen --out $D/g120-ret --max-examples 6000 \
  --steps 100 --batch-size 32 --save-every 25 --no-dropout --seed 0 --dtype auto
date -u
.venv/bin/python -m clara_cli.train.export $D/g120-ret $D/cand-g120 bf16 --rank 16 --expand 1
$C --store $E/store-dev-g120 update $E/dev.jsonl --model $D/cand-g120 --dtype auto
for X in 0 1; do
  $C --store $E/store-dev-g120 eval $E/dev_qa_written-415.jsonl -k 5 --model $D/cand-g120 --dtype auto --expand $X \
    --retriever hybrid --baseline none --report $E/dev_qa_written-415-g120-hybrid-expand$X
done
date -u; echo G120-DEVW-DONE
for X in 0 1; do
  $C --store $E/store-dev-g120 eval data/dev_qa.jsonl -k 5 --model $D/cand-g120 --dtype auto --expand $X \
    --retriever hybrid --baseline none --report $E/dev_qa-g120-hybrid-expand$X
done
date -u; echo G120-DONE
