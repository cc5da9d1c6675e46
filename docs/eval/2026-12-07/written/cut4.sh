#!/usr/bin/env bash
# Cut first (C4; RULE-CUT.md): S4's compressor run cut to LoRA r 16, the 40-step generator stage at
# r 16 against the cut memories, then ship.sh's retrieval stage, export (no further cut) and dev sets
# at the model's defaults (hybrid). Log of the run of 2026-12-07: cut4.log (its folders were named
# cut4-gen / cut4-ret / cand-cut4 then; the same computation: ship.sh also keeps every 25th retrieval step).
set -euo pipefail
cd "$(dirname "$0")/../../../.."  # the repository root
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
export LD_PRELOAD=$PWD/.venv/lib/python3.11/site-packages/ray/core/libjemalloc.so MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0
D=.cache/e5x
test -f $D/cut4-scp/clara.json || .venv/bin/python -m clara_cli.train.export $D/scp-wq4-3e-4 $D/cut4-scp fp32 --rank 16
.venv/bin/clara train generator $D/data-nw3/instruct-mix.jsonl --init-from $D/cut4-scp --out $D/gen-cut4 --max-examples 640 \
  --steps 40 --expand-rate 0 --lr 2e-4 --batch-size 8 --grad-accum 2 --save-every 10 --no-dropout --seed 0 --dtype auto
for STEP in retrieval export dev; do
  SRC=cut4 NAME=cut4 DATA=data-nw3 RETRIEVERS=hybrid RANK= bash docs/eval/2026-12-07/written/ship.sh $STEP
done
