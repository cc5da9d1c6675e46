"""Do memory tokens carry the answer, or does the generator answer from what it already knows?

Each question is answered from one memory, twice: the memory of its own paragraph, and that
of the *next* question's paragraph (unrelated). Memory-only prompts as `ask --expand 0 -k 1`
builds them, greedy, Cover-EM. If both score alike, the memories add nothing the model did not
already know. Two question sets, both on the development split (held-out ones are not read):

    written   data/dev_qa.jsonl (40 general-knowledge questions); a question's paragraph is the
              top BM25 chunk of STORE (its own for 39 of 40)
    synth     the rule-made questions of `clara synth`'s instruct file whose positive document
              is a development-split paragraph (`--synth FILE --records N`); answers are spans
              of that paragraph, which a small model rarely knows beforehand

    python benchmarks/memory_control.py MODEL --store STORE [--json]
    python benchmarks/memory_control.py MODEL --synth .cache/train-default/data/instruct.jsonl --records 200
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--store", help="written questions: the model's store of the dev paragraphs")
    ap.add_argument("--questions", default="data/dev_qa.jsonl")
    ap.add_argument("--synth", help="synth questions: clara synth's instruct.jsonl")
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import clara_cli
    from clara_cli.checkpoint import load_model
    from clara_cli.corpora import is_held_out
    from clara_cli.metrics import cover_em
    from clara_cli.model import cpu_name, dtype_name
    from clara_cli.train.data import dev_texts, read_records

    if args.synth:
        dev = dev_texts()
        records = [r for r in read_records(args.synth, "instruct")
                   if r.pos_index and r.docs[r.pos_index[0]] in dev][:args.records]
        questions = [r.question for r in records]
        rows = [{"answers": [r.answer]} for r in records]
        chunks = [r.docs[r.pos_index[0]] for r in records]
        model = load_model(args.model, device="cpu", dtype="auto")
    else:
        if not args.store:
            raise SystemExit("written questions need --store (or use --synth)")
        rows = [json.loads(line) for line in open(args.questions)]
        if any(is_held_out(t) for r in rows for t in r.get("gold_titles", [])):
            raise SystemExit("held-out questions are read only for final tables (issue 11, item 4)")
        questions = [r["question"] for r in rows]
        store = clara_cli.open_store(args.store, model=args.model)
        chunks = [store.search(q, k=1, retriever="bm25")[0].text for q in questions]
        model = store.load_model()
    start = time.perf_counter()
    with torch.inference_mode():
        memories = [model.compress([c]) for c in chunks]                # [1, n_mem, h] each
        others = memories[1:] + memories[:1]                            # the next question's chunk
        own, other = [], []
        for lo in range(0, len(questions), 16):
            own += model.generate(questions[lo:lo + 16], memories[lo:lo + 16])
            other += model.generate(questions[lo:lo + 16], others[lo:lo + 16])
    score = {name: 100 * sum(cover_em(a, r["answers"]) for a, r in zip(answers, rows, strict=True)) / len(rows)
             for name, answers in (("own", own), ("other", other))}
    result = {"model": args.model, "set": "synth" if args.synth else "written", "questions": len(rows),
              "cover_em_own_memory": round(score["own"], 1), "cover_em_other_memory": round(score["other"], 1),
              "seconds": round(time.perf_counter() - start, 1), "cpu": cpu_name(),
              "dtype": dtype_name(model.dtype), "threads": torch.get_num_threads()}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.model}: Cover-EM {result['cover_em_own_memory']} with its own chunk's memory, "
              f"{result['cover_em_other_memory']} with another's ({len(rows)} questions) "
              f"[{result['cpu']}, {result['dtype']}, {result['threads']} threads]")


if __name__ == "__main__":
    main()
