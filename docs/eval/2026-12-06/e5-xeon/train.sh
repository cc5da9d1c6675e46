#!/usr/bin/env bash
# E5 on an Intel Xeon with AMX: one scp schedule from the shipped default over the first 4,300
# records (reconstruction + natural QA) of the natural synth file; a model kept every 80 steps.
cd "$(dirname "$0")/../../../.."  # the repository root
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export LD_PRELOAD=$PWD/.venv/lib/python3.11/site-packages/ray/core/libjemalloc.so
date -u
test -f .cache/e5x/data/pretrain.jsonl || .venv/bin/clara synth --split train --seed 0 --questions natural --out .cache/e5x/data
.venv/bin/clara train scp .cache/e5x/data/pretrain.jsonl --init-from default --out .cache/e5x/scp \
  --max-examples 4300 --epochs 1 --keep-every 80 \
  --batch-size 8 --grad-accum 2 --save-every 10 --no-dropout --seed 0 --dtype auto
echo TRAIN-DONE rc=$?; date -u
