#!/usr/bin/env bash
# The recipe of the shipped default model (S4, issue 11; docs/TRAINING.md "Written questions through
# the compressor"), from nothing. One owner for it: `make train-written` runs it on the CPU and
# scripts/train_gpu.sh on one GPU.
#
#   scripts/train_written.sh WORK_DIR OUT_MODEL
#
# A fresh compressor (lr 3e-4, LoRA r 64) on the natural rules' scp data (6,400 records), an epoch
# of scp on their QA records, then epochs on the QA records of data/train_qa_written.jsonl in the
# order they were written: the first batch (its first 3,530 lines), the second (to line 7,121), both
# again, then the rest of the file; the 40-step memory-only generator stage on the natural + written
# instruction records, the retrieval stage (query reasoner and center) against the final memories,
# then a bf16 export cut to LoRA rank 16 that reads the best source as text (--expand 1).
# Every stage resumes from its last checkpoint: rerun the same command after a stop.
#
# Environment (defaults are `make train-written`'s):
#   PY           python with clara installed (.venv/bin/python)
#   DEVICE       auto | cpu | cuda (auto)            DTYPE   auto | bf16 | fp32 (auto)
#   COMPILE      --compile (the default); set it empty on a GPU, where compiled blocks are unmeasured
#   SAVE_EVERY   checkpoint interval of the scp and generator stages (10); RETRIEVAL_SAVE_EVERY (25)
#   RETRIEVAL_MAX  records the retrieval stage reads (6000)
#   JOBS         clara synth runs at once (1); the five data sets are independent
#   BASE_MODEL   another base LM for the first stage (the tests use a tiny one)
#   DATA_ONLY=1  make the data sets and stop (no OUT_MODEL needed): what `make train-retrieval` and
#                `make train-generator` read
#   SMOKE=1      the same pipeline on a tiny budget: SYNTH_LIMIT (60) paragraphs, 2 records a stage in
#                micro-batches of 2, 1 generator and 2 retrieval steps (a CPU is fine)
set -euo pipefail

WORK=${1:?usage: scripts/train_written.sh WORK_DIR OUT_MODEL}
OUT_MODEL=${2:-}
[ -n "$OUT_MODEL" ] || [ -n "${DATA_ONLY:-}" ] || { echo "usage: scripts/train_written.sh WORK_DIR OUT_MODEL" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEVICE=${DEVICE:-auto}
DTYPE=${DTYPE:-auto}
COMPILE=${COMPILE---compile}
SAVE_EVERY=${SAVE_EVERY:-10}
RETRIEVAL_SAVE_EVERY=${RETRIEVAL_SAVE_EVERY:-25}
RETRIEVAL_MAX=${RETRIEVAL_MAX:-6000}
JOBS=${JOBS:-1}
WRITTEN=data/train_qa_written.jsonl

SCP_FRESH_MAX=6400; LIMIT=(); SMALL=(); GEN_MAX=640; GEN_STEPS=40; RET_STEPS=100; RET_BATCH=32
if [ -n "${SMOKE:-}" ]; then
    LIMIT=(--limit "${SYNTH_LIMIT:-60}"); SMALL=(--max-examples 2 --batch-size 2 --grad-accum 1)
    GEN_STEPS=1; RETRIEVAL_MAX=8; RET_STEPS=2; RET_BATCH=2
fi
STEP_FLAGS=(--batch-size 8 --grad-accum 2 --save-every "$SAVE_EVERY" --no-dropout --seed 0 --dtype "$DTYPE"
            --device "$DEVICE")
# COMPILE is unquoted on purpose (empty or one option); SMALL comes last, so it overrides the sizes.
SCP_FLAGS=(--epochs 1 --lr 3e-4 "${STEP_FLAGS[@]}" $COMPILE "${SMALL[@]}")
clara() { "$PY" -m clara_cli.cli "$@"; }
qa() { grep '^{"data_type": "qa"' "$1"; }
# lines of $1 not in $2 (grep exits 1 when none is left, which is not an error here)
new_lines() { grep -vxFf "$2" "$1" || [ $? -eq 1 ]; }

cd "$ROOT"
mkdir -p "$WORK"
head -n 3530 "$WRITTEN" > "$WORK/written-1.jsonl"
head -n 7121 "$WRITTEN" > "$WORK/written-2.jsonl"

# The five data sets: natural rules; written batches 1, 1-2 and all; natural + all written (the
# generator's). With JOBS > 1 the last four are made in the background while the first two scp
# runs train on the first.
pids=()
synth() {  # OUT_NAME, then clara synth's options; skipped once OUT/synth.json exists
    local out="$WORK/$1"; shift
    test -f "$out/synth.json" && return 0
    if [ "$JOBS" -le 1 ]; then clara synth --split train --seed 0 "${LIMIT[@]}" "$@" --out "$out"; return; fi
    clara synth --split train --seed 0 "${LIMIT[@]}" "$@" --out "$out" > "$out.synth.log" 2>&1 &
    pids+=($!)
    if [ "${#pids[@]}" -ge "$JOBS" ]; then wait_synth; fi
}
wait_synth() {
    local pid
    for pid in "${pids[@]}"; do wait "$pid" || { echo "clara synth failed; see $WORK/*.synth.log" >&2; exit 1; }; done
    pids=()
}
synth nat --questions natural
wait_synth
synth w1 --questions written --written "$WORK/written-1.jsonl"
synth w2 --questions written --written "$WORK/written-2.jsonl"
synth w3 --questions written --written "$WRITTEN"
synth nw --questions natural --written "$WRITTEN"

qa "$WORK/nat/pretrain.jsonl" > "$WORK/nat/qa.jsonl"
written_data() {  # the written batches' QA records (each batch's new ones too) and the generator's mix
    wait_synth
    qa "$WORK/w1/pretrain.jsonl" > "$WORK/w1/qa.jsonl"
    qa "$WORK/w2/pretrain.jsonl" > "$WORK/w2/qa.jsonl"
    new_lines "$WORK/w2/qa.jsonl" "$WORK/w1/qa.jsonl" > "$WORK/w2/qa-new.jsonl"
    qa "$WORK/w3/pretrain.jsonl" > "$WORK/w3/qa.jsonl"
    new_lines "$WORK/w3/qa.jsonl" "$WORK/w2/qa.jsonl" > "$WORK/w3/qa-new.jsonl"
    "$PY" -c "import random, sys; l = open(sys.argv[1]).readlines(); random.Random(0).shuffle(l); open(sys.argv[2], 'w').writelines(l)" \
        "$WORK/nw/instruct.jsonl" "$WORK/nw/instruct-mix.jsonl"
}
if [ -n "${DATA_ONLY:-}" ]; then written_data; echo "data in $WORK"; exit 0; fi
clara train scp "$WORK/nat/pretrain.jsonl" --out "$WORK/scp-fresh" --max-examples "$SCP_FRESH_MAX" --lora-r 64 \
    "${SCP_FLAGS[@]}" ${BASE_MODEL:+--base-model "$BASE_MODEL"}
clara train scp "$WORK/nat/qa.jsonl" --init-from "$WORK/scp-fresh" --out "$WORK/scp-nat" "${SCP_FLAGS[@]}"

written_data
clara train scp "$WORK/w1/qa.jsonl" --init-from "$WORK/scp-nat" --out "$WORK/scp-w1" "${SCP_FLAGS[@]}"
clara train scp "$WORK/w2/qa-new.jsonl" --init-from "$WORK/scp-w1" --out "$WORK/scp-w2" "${SCP_FLAGS[@]}"
clara train scp "$WORK/w2/qa.jsonl" --init-from "$WORK/scp-w2" --out "$WORK/scp-w2b" "${SCP_FLAGS[@]}"
clara train scp "$WORK/w3/qa-new.jsonl" --init-from "$WORK/scp-w2b" --out "$WORK/scp-w3" "${SCP_FLAGS[@]}"
clara train generator "$WORK/nw/instruct-mix.jsonl" --init-from "$WORK/scp-w3" --out "$WORK/generator" \
    --max-examples "$GEN_MAX" --steps "$GEN_STEPS" --expand-rate 0 --lr 2e-4 "${STEP_FLAGS[@]}" "${SMALL[@]}"
clara train retrieval "$WORK/nw/pretrain.jsonl" --init-from "$WORK/generator" --out "$WORK/retrieval" \
    --max-examples "$RETRIEVAL_MAX" --steps "$RET_STEPS" --batch-size "$RET_BATCH" --save-every "$RETRIEVAL_SAVE_EVERY" \
    --no-dropout --seed 0 --dtype "$DTYPE" --device "$DEVICE"
"$PY" -m clara_cli.train.export "$WORK/retrieval" "$OUT_MODEL" bf16 --rank 16 --expand 1
echo "model in $OUT_MODEL"
