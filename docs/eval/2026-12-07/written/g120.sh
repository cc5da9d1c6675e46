#!/usr/bin/env bash
# G120 (RULE-G120.md): S4's compressor run with a 120-step generator stage instead of 40, then ship.sh's
# retrieval stage, export (rank 16, --expand 1) and dev sets at the model's defaults (hybrid). Log of
# the run of 2026-12-07: g120.log (its folders were named g120-gen / g120-ret / cand-g120 then; the
# same computation: ship.sh also keeps every 25th retrieval step).
set -euo pipefail
cd "$(dirname "$0")/../../../.."  # the repository root
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
export LD_PRELOAD=$PWD/.venv/lib/python3.11/site-packages/ray/core/libjemalloc.so MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0
D=.cache/e5x
.venv/bin/clara train generator $D/data-nw3/instruct-mix.jsonl --init-from $D/scp-wq4-3e-4 --out $D/gen-g120 --max-examples 1920 \
  --steps 120 --expand-rate 0 --lr 2e-4 --batch-size 8 --grad-accum 2 --save-every 10 --no-dropout --seed 0 --dtype auto
for STEP in retrieval export dev; do
  SRC=g120 NAME=g120 DATA=data-nw3 RETRIEVERS=hybrid bash docs/eval/2026-12-07/written/ship.sh $STEP
done
