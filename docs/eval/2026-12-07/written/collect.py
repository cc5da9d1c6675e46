"""Collect the annotators' files into data/train_qa_written.jsonl (clara eval's question format).

Each annotator got 200 training paragraphs (`python -m clara_cli.corpora 20000 train`, the Burj
Khalifa's and any naming it left out, seeded shuffle 20261207; batches 0-7 the first 1,600, 8-15
the next 1,600, 16-44 the other 5,784), the instructions in annotators/PROMPT.md, and wrote {"id", "question", "answer"}
lines (annotators/out-N.jsonl). Kept: answers found verbatim in the paragraph, not given away by the
question, first copy of a question; every paragraph is checked against the held-out rule. The
questions about development-split paragraphs (corpora.is_dev) stay in the file, as in every
`clara synth` file: the trainer leaves them out. They are also written to DEV_OUT, a second
development set of written questions for choosing recipes.

    python docs/eval/2026-12-07/written/collect.py docs/eval/2026-12-07/written/annotators \\
        data/train_qa_written.jsonl data/dev_qa_written.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from clara_cli.corpora import is_dev, is_held_out, wiki_paragraphs
from clara_cli.synth import QAPair, verbatim_ok


def main(in_dir: str, out_path: str, dev_out: str) -> None:
    paragraphs = {p["id"]: p for p in wiki_paragraphs("train")}
    kept, seen, why = [], set(), Counter()
    for f in sorted(Path(in_dir).glob("out-*.jsonl"), key=lambda f: int(f.stem.split("-")[1])):
        for line in f.read_text().splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                p = paragraphs[row["id"]]
                question, answer = row["question"].strip(), row["answer"].strip()
            except (ValueError, KeyError, AttributeError):
                why["malformed"] += 1
                continue
            if is_held_out(p["title"]):
                why["held-out"] += 1
                continue
            if not verbatim_ok(QAPair(question, answer, "written"), p["text"]):
                why["not verbatim, given away or too long"] += 1
                continue
            if (question.casefold(), p["id"]) in seen:
                why["duplicate"] += 1
                continue
            seen.add((question.casefold(), p["id"]))
            kept.append({"question": question, "answers": [answer], "gold_titles": [p["title"]]})
    Path(out_path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
    titles = {r["gold_titles"][0] for r in kept}
    print(f"{len(kept)} questions about {len(titles)} paragraphs written to {out_path}; dropped: {dict(why)}")
    dev = [r for r in kept if is_dev(r["gold_titles"][0])]
    Path(dev_out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in dev), encoding="utf-8")
    print(f"{len(dev)} of them about {len({r['gold_titles'][0] for r in dev})} development-split paragraphs: {dev_out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
