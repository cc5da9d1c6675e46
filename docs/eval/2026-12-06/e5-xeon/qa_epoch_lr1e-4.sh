#!/usr/bin/env bash
# After the curve: E5's end + the first stage of `make train-natural` (1 epoch of scp on the natural
# QA records, here lr 1e-4 against the lr 3e-4 chosen on dev), then the same point (40-step memory-only generator stage, evals).
cd "$(dirname "$0")/../../../.."  # the repository root
D=.cache/e5x
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
export LD_PRELOAD=$PWD/.venv/lib/python3.11/site-packages/ray/core/libjemalloc.so
date -u
test -f $D/data/qa.jsonl
.venv/bin/clara train scp $D/data/qa.jsonl --init-from $D/scp --out $D/scp-qa1e4 --epochs 1 --lr 1e-4 \
  --batch-size 8 --grad-accum 2 --save-every 10 --no-dropout --seed 0 --dtype auto
echo QA-DONE rc=$?; date -u
THREADS=2 HELD1=1 bash docs/eval/2026-12-06/e5-xeon/point.sh qa1e4 $D/scp-qa1e4
echo QA-POINT-DONE
