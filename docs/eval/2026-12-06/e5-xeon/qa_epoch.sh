#!/usr/bin/env bash
# After the curve (points.sh done): E5's end + the first stage of `make train-natural` (1 epoch of scp on
# the natural QA records) at learning rate LR, then the same point, reported under TAG.
#   qa_epoch.sh 3e-4 qa       # the lr chosen on dev
#   qa_epoch.sh 1e-4 qa1e4
set -euo pipefail
LR=$1; TAG=$2
cd "$(dirname "$0")/../../../.."  # the repository root
export D=.cache/e5x E=.cache/eval-e5x OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
export LD_PRELOAD=$PWD/.venv/lib/python3.11/site-packages/ray/core/libjemalloc.so
date -u
test -f $D/data/qa.jsonl || grep '^{"data_type": "qa"' $D/data/pretrain.jsonl > $D/data/qa.jsonl
.venv/bin/clara train scp $D/data/qa.jsonl --init-from $D/scp --out $D/scp-$TAG --epochs 1 --lr "$LR" \
  --batch-size 8 --grad-accum 2 --save-every 10 --no-dropout --seed 0 --dtype auto
echo QA-DONE; date -u
THREADS=2 HELD1=1 bash docs/eval/2026-12-01/e5/point.sh "$TAG" $D/scp-$TAG
echo QA-POINT-DONE
