#!/usr/bin/env bash
# Issue 11's curve, one new point: a fresh compressor at the long run's settings (lr 3e-4, LoRA r 64,
# docs/TRAINING.md "The long run goes on") trained from the start on the natural rules' scp data
# (reconstruction and natural QA interleaved, as E5), 6,400 examples (the long run's step 400),
# a model kept every 100 steps. Resumable: run it again after any stop. Then one point per kept
# model with docs/eval/2026-12-01/e5/point.sh (40-step memory-only natural generator stage, dev and
# held-out stores, BM25 at k = 5).
set -euo pipefail
cd "$(dirname "$0")/../../../.."  # the repository root
D=${D:-.cache/e5x}   # holds data/pretrain.jsonl and data/instruct.jsonl of `clara synth --questions natural`
export LD_PRELOAD=$PWD/.venv/lib/python3.11/site-packages/ray/core/libjemalloc.so
export MALLOC_CONF=muzzy_decay_ms:-1,oversize_threshold:0
date -u
.venv/bin/clara train scp $D/data/pretrain.jsonl --out $D/fresh-nat --max-examples 6400 --epochs 1 \
  --lr 3e-4 --lora-r 64 --batch-size 8 --grad-accum 2 --save-every 10 --keep-every 100 --no-dropout --seed 0 \
  --dtype auto --compile
date -u
