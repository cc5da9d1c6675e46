#!/usr/bin/env bash
# The candidate default from the written-questions run (wq-scp-3e-4: the fresh natural compressor + its
# natural QA epoch + an epoch of scp on the written QA, then the 40-step generator stage on the
# natural + written mix): the retrieval stage (query reasoner + center) against its memories, as
# `make train-retrieval` but over the natural + written scp file and 100 steps, then a bf16 export
# with every LoRA pair cut to rank 16 (the shipped size), then dev stores at the model's defaults.
#   ship.sh retrieval | ship.sh export | ship.sh dev
set -euo pipefail
cd "$(dirname "$0")/../../../.."  # the repository root
export D=.cache/e5x E=.cache/eval-e5x T=${THREADS:-2}
export OMP_NUM_THREADS=$T MKL_NUM_THREADS=$T
export LD_PRELOAD=$PWD/.venv/lib/python3.11/site-packages/ray/core/libjemalloc.so
export MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0
C=.venv/bin/clara
date -u
case $1 in
retrieval)
  $C train retrieval $D/data-nw/pretrain.jsonl --init-from $D/gen-wq-scp-3e-4 --out $D/ret-wq --max-examples 6000 \
    --steps 100 --batch-size 32 --save-every 25 --keep-every 25 --no-dropout --seed 0 --dtype auto ;;
export)
  .venv/bin/python -m clara_cli.train.export $D/ret-wq $D/cand-ship bf16 --rank 16
  # ours: `ask` reads the best source as text (selective expansion), as the shipped model; chosen on dev below
  .venv/bin/python - $D/cand-ship/clara.json <<'PY'
import json, sys
meta = json.load(open(sys.argv[1])); meta["config"]["expand"] = 1
json.dump(meta, open(sys.argv[1], "w"), indent=2); open(sys.argv[1], "a").write("\n")
PY
  ;;
dev)
  $C --store $E/store-dev-ship update $E/dev.jsonl --model $D/cand-ship --dtype auto
  for Q in dev_qa dev_qa_written; do for X in 0 1; do for R in hybrid bm25; do
    $C --store $E/store-dev-ship eval data/$Q.jsonl -k 5 --model $D/cand-ship --dtype auto --expand $X \
      --retriever $R --baseline none --report $E/$Q-ship-$R-expand$X
  done; done; done ;;
esac
date -u
