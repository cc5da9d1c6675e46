#!/usr/bin/env bash
# The shipped default model on the held-out questions with BM25 retrieval and --expand 1, beside E5's
# held-out --expand 1 rows (docs/eval/2026-12-06/e5-xeon/); read for the table only.
set -euo pipefail
cd "$(dirname "$0")/../../../.."  # the repository root
E=${E:-.cache/eval-e5x}
mkdir -p $E
test -f $E/heldout.jsonl || .venv/bin/python -m clara_cli.corpora 5000 heldout > $E/heldout.jsonl
.venv/bin/clara --store $E/store-heldout-shipped update $E/heldout.jsonl --dtype auto
for X in 0 1; do
  .venv/bin/clara --store $E/store-heldout-shipped eval data/heldout_qa.jsonl -k 5 --dtype auto --expand $X \
    --retriever bm25 --baseline none --report $E/heldout-shipped-bm25-expand$X
done
