#!/usr/bin/env bash
# The shipped model on the held-out questions with the fusion chosen on dev (dev.sh), and with the
# fusion as before (old_hybrid.py) in the same run; read for the README's table only.
set -euo pipefail
cd "$(dirname "$0")/../../../.."  # the repository root
E=${E:-.cache/eval-e5x}
OUT=docs/eval/2026-12-07/hybrid
mkdir -p $E
test -f $E/heldout.jsonl || .venv/bin/python -m clara_cli.corpora 5000 heldout > $E/heldout.jsonl
.venv/bin/clara --store $E/store-heldout-shipped update $E/heldout.jsonl --dtype auto
for X in 1 0; do
  .venv/bin/clara --store $E/store-heldout-shipped eval data/heldout_qa.jsonl -k 5 --dtype auto --expand $X \
    --retriever hybrid --baseline none --report $OUT/heldout-hybrid-expand$X
done
.venv/bin/python $OUT/old_hybrid.py --store $E/store-heldout-shipped eval data/heldout_qa.jsonl -k 5 --dtype auto \
  --expand 1 --retriever hybrid --baseline none --report $OUT/heldout-old-hybrid-expand1
find $OUT -name "*.png" -delete
