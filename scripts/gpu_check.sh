#!/usr/bin/env bash
# Issue 12's GPU check as one command on a lent GPU machine (docs/TRAINING.md, "One GPU"). Here,
# first: `bash scripts/device_carry.sh`; then the device tool runs, from the repository root,
#   bash scripts/gpu_check.sh        with carry [".device"], timeout ~540 s; logs go to $OUT
# It uses that machine's own torch / transformers / peft (kernels/hf.py takes transformers 4.x and
# 5.x), and a base of the default base's shape with random weights, since the real weights cannot
# travel (scripts/random_base.py). In at most ~8 minutes:
#   1. benchmarks/train_throughput.py on cuda: seconds per step of scp / instruct / e2e at the
#      recipe's sizes (micro-batches one by one, and in one pass as clara train runs them), which
#      times scripts/train_gpu.sh's ~1,400 steps
#   2. scripts/train_gpu.sh with SMOKE=1 on cuda: benchmarks/kernels.py's figures (the Triton
#      attention and scoring against PyTorch's SDPA/FlashAttention), then the shipped recipe's five
#      synth sets, eight runs and export, unchanged, on a tiny budget; its stage times give the
#      per-process start cost
#   3. one full-size `clara synth` in the background meanwhile: the data step's time
# GPU_CHECK_DEVICE=cpu runs the same on a CPU with tiny sizes (how it is tested here).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PY:-python3}
DEV=${GPU_CHECK_DEVICE:-cuda}
OUT=${OUT:-$ROOT/gpu-check}
mkdir -p "$OUT"
C=${CARRY_DIR:-/tmp/clara-carry}
mkdir -p "$C" && tar -xJf .device/carry.tar.xz -C "$C" || { echo "no .device/carry.tar.xz: run scripts/device_carry.sh here first" >&2; exit 2; }
# the repository itself (clara is not installed there: kernels/ is imported as clara_kernels, as
# pyproject.toml's package-dir maps it) and the carried corpus and packages
ln -sfn "$ROOT/kernels" "$C/site/clara_kernels"
export PYTHONPATH=$ROOT:$C/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export CLARA_CACHE_DIR=${CLARA_CACHE_DIR:-/tmp/clara-cache}
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/steps.txt"; }

log "versions"
"$PY" -c 'import sys, torch, transformers, peft; print(sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0))' 2>&1 | tee "$OUT/versions.txt"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

# on a CPU (the test of this script), one small scp measurement that fits the throughput timeout
if [ "$DEV" = cuda ]; then SYNTH_LIMIT_FULL=; STEPS=3; CPU_SIZES=
else SYNTH_LIMIT_FULL="--limit 20"; STEPS=1; CPU_SIZES="--stages scp --warmup-batch 1 --no-compile"; fi
log "full-size synth in the background"
( time "$PY" -m clara_cli.cli synth --split train --seed 0 --questions natural $SYNTH_LIMIT_FULL \
    --out /tmp/gpu-check-synth --json > "$OUT/synth.txt" 2>&1 ) &
SYNTH_PID=$!

log "random base"
"$PY" scripts/random_base.py "$C/base" /tmp/random-base > "$OUT/random_base.txt" 2>&1 || { cat "$OUT/random_base.txt"; exit 1; }

log "train throughput"
timeout 150 "$PY" benchmarks/train_throughput.py --device "$DEV" --base-model /tmp/random-base \
    --steps "$STEPS" --docs 40 $CPU_SIZES ${THROUGHPUT_FLAGS:-} > "$OUT/throughput.txt" 2>&1
echo "rc=$?" >> "$OUT/throughput.txt"
log "the shipped recipe, SMOKE=1"
rm -rf /tmp/gpu-check-smoke
( time SMOKE=1 DEVICE="$DEV" BASE_MODEL=/tmp/random-base PY="$PY" timeout 300 bash scripts/train_gpu.sh /tmp/gpu-check-smoke ) \
    > "$OUT/smoke.txt" 2>&1
echo "rc=$?" >> "$OUT/smoke.txt"
log "waiting for synth"
wait "$SYNTH_PID"; echo "rc=$?" >> "$OUT/synth.txt"
log "done"
grep -h "tokens/s\|rc=\|real\|Elapsed" "$OUT"/*.txt | head -60
