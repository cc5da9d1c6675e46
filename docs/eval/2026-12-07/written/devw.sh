#!/usr/bin/env bash
# The written dev questions (the first N lines of data/dev_qa_written.jsonl: 230 in the first runs, 415
# after the second batch, the file's 1,075 after the third) over a point's dev store: memory only (and raw
# text of the first hit when EXPAND1=1), BM25, k = 5, as point.sh scores dev.
#   devw.sh TAG [MODEL] [STORE]     (defaults: $D/cand-TAG over $E/store-dev-TAG; N=415)
set -euo pipefail
TAG=$1; T=${THREADS:-1}
cd "$(dirname "$0")/../../../.."  # the repository root
export OMP_NUM_THREADS=$T MKL_NUM_THREADS=$T
D=${D:-.cache/e5x}; E=${E:-.cache/eval-e5x}
MODEL=${2:-$D/cand-$TAG}; STORE=${3:-$E/store-dev-$TAG}; N=${N:-415}
QA=$E/dev_qa_written-$N.jsonl; test -s $QA || head -n $N data/dev_qa_written.jsonl > $QA
for X in 0 ${EXPAND1:+1}; do
  .venv/bin/clara --store "$STORE" eval $QA -k 5 --model "$MODEL" --dtype auto --expand $X \
    --retriever ${RETRIEVER:-bm25} --baseline none --report $E/devw-$TAG-${RETRIEVER:-bm25}-expand$X
done
