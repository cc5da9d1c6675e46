#!/usr/bin/env bash
# Choosing hybrid's fusion on the development split (docs/TRAINING.md, "Hybrid fusion"): Recall@1/@5
# of the fusion weights, then answers at --expand 1 with the shipped model, fusion as before
# (old_hybrid.py: equal weights, ties by key) against the chosen one and BM25 alone.
# Questions: data/dev_qa.jsonl (40, written) and the 241 natural `clara synth` questions about dev
# paragraphs (SYNTH: a `clara synth --split train --seed 0 --questions natural` pretrain.jsonl).
set -euo pipefail
cd "$(dirname "$0")/../../../.."  # the repository root
SYNTH=${SYNTH:-.cache/e5x/data/pretrain.jsonl}
E=${E:-.cache/eval-dev}
OUT=docs/eval/2026-12-07/hybrid
mkdir -p $E
.venv/bin/python benchmarks/retrieval_dev.py default --fusions > $OUT/retrieval-dev-written.txt
.venv/bin/python benchmarks/retrieval_dev.py default --fusions --synth $SYNTH > $OUT/retrieval-dev-synth.txt
.venv/bin/python -c "import json, sys; sys.path.insert(0, 'benchmarks')
from retrieval_dev import synth_dev_questions
from clara_cli.corpora import wiki_paragraphs
dev = list(wiki_paragraphs('dev'))
for q in synth_dev_questions(sys.argv[1], [p['title'] for p in dev], [p['text'] for p in dev]):
    print(json.dumps(q))" "$SYNTH" > $E/synth-natural-dev.jsonl
test -f $E/dev.jsonl || .venv/bin/python -m clara_cli.corpora 5000 dev > $E/dev.jsonl
.venv/bin/clara --store $E/store-default update $E/dev.jsonl --model default --dtype auto
for Q in written synth; do
  QS=data/dev_qa.jsonl; [ $Q = synth ] && QS=$E/synth-natural-dev.jsonl
  .venv/bin/clara --store $E/store-default eval $QS -k 5 --dtype auto --expand 1 --retriever hybrid --baseline none \
    --report $OUT/dev-$Q-hybrid-expand1
  .venv/bin/python $OUT/old_hybrid.py --store $E/store-default eval $QS -k 5 --dtype auto --expand 1 \
    --retriever hybrid --baseline none --report $OUT/dev-$Q-old-hybrid-expand1
  .venv/bin/clara --store $E/store-default eval $QS -k 5 --dtype auto --expand 1 --retriever bm25 --baseline none \
    --report $OUT/dev-$Q-bm25-expand1
done
