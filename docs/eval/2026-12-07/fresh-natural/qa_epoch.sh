#!/usr/bin/env bash
# After train.sh and its point (point.sh fnat-end): the fresh compressor + the first stage of
# `make train-natural` (1 epoch of scp on the natural QA records) at learning rate LR, then the same
# point, reported under TAG. The two learning rates ran side by side, one thread each:
#   qa_epoch.sh 3e-4 fnat-qa      # make train-natural's lr (chosen on dev in earlier runs)
#   qa_epoch.sh 1e-4 fnat-qa1e4
set -euo pipefail
LR=$1; TAG=$2; T=${THREADS:-1}
cd "$(dirname "$0")/../../../.."  # the repository root
export D=.cache/e5x E=.cache/eval-e5x OMP_NUM_THREADS=$T MKL_NUM_THREADS=$T
export LD_PRELOAD=$PWD/.venv/lib/python3.11/site-packages/ray/core/libjemalloc.so
export MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0
date -u
test -f $D/data/qa.jsonl || grep '^{"data_type": "qa"' $D/data/pretrain.jsonl > $D/data/qa.jsonl
.venv/bin/clara train scp $D/data/qa.jsonl --init-from $D/fresh-nat --out $D/scp-$TAG --epochs 1 --lr "$LR" \
  --batch-size 8 --grad-accum 2 --save-every 10 --no-dropout --seed 0 --dtype auto --compile
echo QA-DONE; date -u
THREADS=$T HELD1=1 bash docs/eval/2026-12-01/e5/point.sh "$TAG" $D/scp-$TAG
echo QA-POINT-DONE
