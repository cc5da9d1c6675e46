#!/usr/bin/env bash
# The written dev questions (data/dev_qa_written.jsonl, 230 about 101 dev paragraphs) over a point's dev
# store: memory only (and raw text of the first hit when EXPAND1=1), BM25, k = 5, as point.sh scores dev.
#   devw.sh TAG [MODEL] [STORE]     (defaults: $D/cand-TAG over $E/store-dev-TAG)
set -euo pipefail
TAG=$1; T=${THREADS:-1}
cd "$(dirname "$0")/../../../.."  # the repository root
export OMP_NUM_THREADS=$T MKL_NUM_THREADS=$T
D=${D:-.cache/e5x}; E=${E:-.cache/eval-e5x}
MODEL=${2:-$D/cand-$TAG}; STORE=${3:-$E/store-dev-$TAG}
for X in 0 ${EXPAND1:+1}; do
  .venv/bin/clara --store "$STORE" eval data/dev_qa_written.jsonl -k 5 --model "$MODEL" --dtype auto --expand $X \
    --retriever ${RETRIEVER:-bm25} --baseline none --report $E/devw-$TAG-${RETRIEVER:-bm25}-expand$X
done
