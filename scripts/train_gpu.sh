#!/usr/bin/env bash
# Train the shipped default model's whole recipe on one GPU and write the shippable model (three
# bf16 adapter files + token rows, LoRA rank 16, --expand 1) to OUT_DIR/model.
#
#   scripts/train_gpu.sh OUT_DIR                 # one H100/H200-class GPU
#   SMOKE=1 scripts/train_gpu.sh /tmp/smoke      # the same pipeline on a tiny budget (CPU is fine)
#
# The recipe is scripts/train_written.sh's, unchanged (`make train-written` runs the same script on
# the CPU): the same data, batch 8 x grad-accum 2, --no-dropout, seed 0, lr 3e-4 for the six scp
# runs; --device auto = cuda, --dtype auto = bf16, packed micro-batches. On the GPU the blocks are
# not compiled (unmeasured there), checkpoints come every 100 steps instead of 10 (an r 64
# checkpoint writes ~0.7 GB), and the five `clara synth` data sets are made in parallel.
# Sizing, derived and not measured on a GPU (docs/TRAINING.md, "The host's share of a GPU step"): a
# 135M model is host-bound there; 1,407 steps (~2,800 micro-batches of 8, two per pass) at 0.13-0.30 s
# of host work each, measured on a CPU (benchmarks/gpu_host_floor.py) ≈ 5.2-6.7 min, plus ≈ 2-2.5 min
# of synth, process starts, the retrieval stage's memory cache and export: ≈ 7.5-9 min with a host
# core as fast as an AMD EPYC's here.
# When a GPU is present the script first prints benchmarks/kernels.py's figures.
# BASE_MODEL=DIR trains on another base LM (the tests use a tiny one).
set -euo pipefail

OUT_DIR=${1:?usage: scripts/train_gpu.sh OUT_DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PY

cd "$ROOT"
start=$(date +%s)
if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    "$PY" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0))'
    "$PY" benchmarks/kernels.py || echo "benchmarks/kernels.py failed; training anyway" >&2
fi
COMPILE=${COMPILE-} SAVE_EVERY=${SAVE_EVERY:-100} RETRIEVAL_SAVE_EVERY=${RETRIEVAL_SAVE_EVERY:-100} JOBS=${JOBS:-5} \
    bash scripts/train_written.sh "${WORK:-$OUT_DIR/.work}" "$OUT_DIR/model"
echo "model in $OUT_DIR/model; $(( $(date +%s) - start )) s in all"
