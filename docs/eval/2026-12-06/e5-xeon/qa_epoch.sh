#!/usr/bin/env bash
# After the curve: E5's end + the first stage of `make train-natural` (1 epoch of scp on the natural
# QA records, lr 3e-4 as chosen on dev), then the same point (40-step memory-only generator stage, evals).
cd "$(dirname "$0")/../../../.."  # the repository root
D=.cache/e5x
until grep -q POINTS-DONE $D/points.log; do sleep 30; done
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
export LD_PRELOAD=$PWD/.venv/lib/python3.11/site-packages/ray/core/libjemalloc.so
date -u
grep '^{"data_type": "qa"' $D/data/pretrain.jsonl > $D/data/qa.jsonl
.venv/bin/clara train scp $D/data/qa.jsonl --init-from $D/scp --out $D/scp-qa --epochs 1 --lr 3e-4 \
  --batch-size 8 --grad-accum 2 --save-every 10 --no-dropout --seed 0 --dtype auto
echo QA-DONE rc=$?; date -u
THREADS=2 HELD1=1 bash docs/eval/2026-12-06/e5-xeon/point.sh qa $D/scp-qa
echo QA-POINT-DONE
