#!/usr/bin/env bash
# One point of the curve: SNAP -> 40-step memory-only natural generator stage -> bf16 export ->
# dev store + dev eval (expand 0, 1; BM25) -> held-out store + held-out eval (expand 0, and 1 when HELD1=1).
# D: the run's folder (synth data, models), E: the reports' folder; the E5 runs of 2026-12-06 set both.
# INSTRUCT: the generator stage's data (default $D/data/instruct.jsonl); DEV_ONLY=1 stops after dev;
# GEN_STEPS: the generator stage's steps of 16 examples (default 40).
set -euo pipefail
TAG=$1; SNAP=$2; T=${THREADS:-1}
cd "$(dirname "$0")/../../../.."  # the repository root
export OMP_NUM_THREADS=$T MKL_NUM_THREADS=$T
export LD_PRELOAD=$PWD/.venv/lib/python3.11/site-packages/ray/core/libjemalloc.so
C=.venv/bin/clara; D=${D:-.cache/nat5}; E=${E:-.cache/eval-nat}
mkdir -p $E
date -u; echo "POINT $TAG from $SNAP"
$C train generator ${INSTRUCT:-$D/data/instruct.jsonl} --init-from $SNAP --out $D/gen-$TAG --max-examples $((16 * ${GEN_STEPS:-40})) --steps ${GEN_STEPS:-40} \
  --expand-rate 0 --lr 2e-4 --batch-size 8 --grad-accum 2 --save-every 10 --no-dropout --seed 0 --dtype auto
.venv/bin/python -m clara_cli.train.export $D/gen-$TAG $D/cand-$TAG bf16
test -f $E/dev.jsonl || .venv/bin/python -m clara_cli.corpora 5000 dev > $E/dev.jsonl
test -f $E/heldout.jsonl || .venv/bin/python -m clara_cli.corpora 5000 heldout > $E/heldout.jsonl
$C --store $E/store-dev-$TAG update $E/dev.jsonl --model $D/cand-$TAG --dtype auto
for X in 0 1; do
  $C --store $E/store-dev-$TAG eval data/dev_qa.jsonl -k 5 --model $D/cand-$TAG --dtype auto --expand $X \
    --retriever bm25 --baseline none --report $E/dev-$TAG-bm25-expand$X
done
date -u; echo "DEV-DONE $TAG"
test -z "${DEV_ONLY:-}" || exit 0
$C --store $E/store-heldout-$TAG update $E/heldout.jsonl --model $D/cand-$TAG --dtype auto
for X in 0 ${HELD1:+1}; do
  $C --store $E/store-heldout-$TAG eval data/heldout_qa.jsonl -k 5 --model $D/cand-$TAG --dtype auto --expand $X \
    --retriever bm25 --baseline none --report $E/heldout-$TAG-bm25-expand$X
done
date -u; echo "POINT-DONE $TAG"
