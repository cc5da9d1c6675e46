#!/usr/bin/env bash
# Held-out columns of a point (the curve; they choose nothing): point.sh's last part for TAG's exported model.
#   heldout.sh TAG      (THREADS=2 when nothing runs beside it)
set -euo pipefail
TAG=$1; T=${THREADS:-1}
cd "$(dirname "$0")/../../../.."  # the repository root
export OMP_NUM_THREADS=$T MKL_NUM_THREADS=$T
export LD_PRELOAD=$PWD/.venv/lib/python3.11/site-packages/ray/core/libjemalloc.so
C=.venv/bin/clara; D=${D:-.cache/e5x}; E=${E:-.cache/eval-e5x}
date -u
$C --store $E/store-heldout-$TAG update $E/heldout.jsonl --model $D/cand-$TAG --dtype auto
for X in 0 1; do
  $C --store $E/store-heldout-$TAG eval data/heldout_qa.jsonl -k 5 --model $D/cand-$TAG --dtype auto --expand $X \
    --retriever bm25 --baseline none --report $E/heldout-$TAG-bm25-expand$X
done
date -u
