#!/usr/bin/env bash
# E5: one scp schedule from the shipped default over the first 4,300 records (recon + natural QA) of the natural synth file.
cd /work/main
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export LD_PRELOAD=$PWD/.venv/lib/python3.11/site-packages/ray/core/libjemalloc.so
date -u
.venv/bin/clara train scp .cache/nat5/data/pretrain.jsonl --init-from default --out .cache/nat5/scp \
  --max-examples 4300 --epochs 1 --keep-every 80 \
  --batch-size 8 --grad-accum 2 --save-every 10 --no-dropout --seed 0 --dtype auto
echo TRAIN-DONE rc=$?; date -u
