"""Recall of the query reasoner on the development split, for choosing a retrieval recipe.

The corpus is every paragraph of the development split of the training paragraphs
(`corpora.is_dev`, ~490, which the retrieval stage never trains on); the questions are
`data/dev_qa.jsonl`, written by a person over some of them (natural questions, not the
rule-made cloze sentences the stage trains on). Held-out paragraphs and questions are not
read here: they only make the final table (`make eval-default`).

    python benchmarks/retrieval_dev.py MODEL [MODEL ...] [--dtype auto] [--json]
    python benchmarks/retrieval_dev.py default --fusions --synth SYNTH/pretrain.jsonl

`--synth` takes the questions from a `clara synth` file's QA lines about dev paragraphs instead
(rule-made, ~6x as many: Recall@1 in finer steps). `--fusions` adds hybrid's fusion with other
weights of the query reasoner's ranks (answer.HYBRID_LATENT_WEIGHT is the one chosen).

Per model: Recall@1/@5 with the model's own scoring (centred where it records a center), with
the plain flattened cosine of the method, with the dev corpus' own mean subtracted (centering
without training), and the model's scoring fused with BM25 by weighted reciprocal rank (what
`--retriever hybrid` does); BM25 alone once. Document memories are computed once per
compressor and cached.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

from clara_cli.answer import FUSION_DEPTH, HYBRID_LATENT_WEIGHT, rrf
from clara_cli.checkpoint import adapter_files, load_model
from clara_cli.corpora import wiki_paragraphs
from clara_cli.model import cpu_name, resolve_dtype, retrieval_scores
from clara_cli.retrievers import BM25Retriever

ROOT = Path(__file__).resolve().parents[1]
FUSION_WEIGHTS = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05)  # --fusions: the query reasoner's weight against BM25's 1


def compressor_key(path: str, dtype: torch.dtype) -> str:
    """Memories depend on the base, the compressor adapter and the token rows (and dtype)."""
    folder = Path(path) if path != "default" else ROOT / "clara_cli" / "default_model"
    h = hashlib.sha256(str(dtype).encode())
    files = [f for f in adapter_files(folder) if "encoder_adapter" in f.name] + [folder / "token_rows.safetensors"]
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def recall(ranked: list[list[int]], gold: list[set[int]], k: int) -> float:
    return 100.0 * sum(bool(set(t[:k]) & g) for t, g in zip(ranked, gold, strict=True)) / len(gold)


def ranks(scores: torch.Tensor, depth: int = FUSION_DEPTH) -> list[list[int]]:
    return scores.topk(min(depth, scores.shape[1]), dim=1).indices.tolist()


def fused(latent: list[list[int]], lexical: list[list[int]], latent_weight: float = HYBRID_LATENT_WEIGHT,
          ) -> list[list[int]]:
    """Reciprocal rank fusion as `--retriever hybrid` does it (answer.rrf), the latent ranks weighted."""
    return [[key for key, _ in rrf([[(i, 0.0) for i in a], [(i, 0.0) for i in b]], FUSION_DEPTH,
                                   weights=(latent_weight, 1.0))]
            for a, b in zip(latent, lexical, strict=True)]


def synth_dev_questions(path: str, titles: list[str], texts: list[str]) -> list[dict]:
    """The QA lines of a `clara synth` scp file whose document is a dev paragraph, as questions.

    Rule-made, so more numerous than the written ones (finer Recall@1) but of another kind. The
    lines are `clara eval` questions too (docs/eval/2026-12-07/hybrid/dev.sh writes them out)."""
    by_text = {t: titles[i] for i, t in enumerate(texts)}
    out = []
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        if r.get("data_type") == "qa" and r["docs"][0] in by_text:
            out += [{"question": q, "answers": [a], "gold_titles": [by_text[r["docs"][0]]]}
                    for q, a in zip(r["question"], r["answers"], strict=True)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--questions", default=str(ROOT / "data" / "dev_qa.jsonl"))
    ap.add_argument("--synth", help="a `clara synth` pretrain.jsonl: its QA lines about dev paragraphs "
                    "become the questions instead of --questions")
    ap.add_argument("--fusions", action="store_true",
                    help=f"also fuse with the query reasoner's ranks weighted {FUSION_WEIGHTS}")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "retrieval-dev"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    paras = list(wiki_paragraphs("dev"))
    titles = [p["title"] for p in paras]
    if args.synth:
        questions = synth_dev_questions(args.synth, titles, [p["text"] for p in paras])
    else:
        questions = [json.loads(line) for line in Path(args.questions).read_text().splitlines() if line.strip()]
    gold = [{titles.index(t) for t in q["gold_titles"]} for q in questions]
    dtype = resolve_dtype(args.dtype)
    bm25 = [[i for i, _ in r] for r in BM25Retriever([p["text"] for p in paras]).search(
        [q["question"] for q in questions], FUSION_DEPTH)]
    meta = {"questions": len(questions), "corpus": len(paras)}
    rows = [{"model": "-", "scoring": "BM25", "R@1": round(recall(bm25, gold, 1), 1),
             "R@5": round(recall(bm25, gold, 5), 1), **meta}]
    for spec in args.models:
        model = load_model(None if spec == "default" else spec, device="cpu", dtype=args.dtype)
        cache = Path(args.cache) / f"{compressor_key(spec, dtype)}.pt"
        if cache.is_file():
            memory = torch.load(cache, weights_only=True)
        else:
            t0 = time.perf_counter()
            memory = model.compress([p["text"] for p in paras], batch_size=16)
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(memory, cache)
            print(f"compressed {len(paras)} dev paragraphs in {time.perf_counter() - t0:.0f} s", flush=True)
        t0 = time.perf_counter()
        query = model.encode_queries([q["question"] for q in questions])
        seconds = time.perf_counter() - t0
        corpus_mean = memory.reshape(len(memory), -1).mean(0)
        own = ranks(retrieval_scores(query, memory, model.retrieval_center))
        variants = [("model" if model.retrieval_center is not None else "plain cosine (model)", own),
                    (f"model x{HYBRID_LATENT_WEIGHT} + BM25 (hybrid)", fused(own, bm25))]
        if args.fusions:
            variants += [(f"model x{w} + BM25", fused(own, bm25, w)) for w in FUSION_WEIGHTS if w != HYBRID_LATENT_WEIGHT]
        if model.retrieval_center is not None:
            variants.append(("plain cosine", ranks(retrieval_scores(query, memory, None))))
        variants.append(("dev-corpus mean removed", ranks(retrieval_scores(query, memory, corpus_mean))))
        for scoring, ranked in variants:
            rows.append({"model": spec, "scoring": scoring, "R@1": round(recall(ranked, gold, 1), 1),
                         "R@5": round(recall(ranked, gold, 5), 1), **meta, "query_s": round(seconds, 2)})
    meta = {"cpu": cpu_name(), "dtype": str(dtype).replace("torch.", "")}
    if args.json:
        for r in rows:
            print(json.dumps({**r, **meta}))
        return
    print(f"{meta['cpu']}, {meta['dtype']}: {len(questions)} dev questions over {len(paras)} dev paragraphs")
    print(f"{'model':<40} {'scoring':<26} {'R@1':>6} {'R@5':>6}")
    for r in rows:
        print(f"{r['model'][-40:]:<40} {r['scoring']:<26} {r['R@1']:>6} {r['R@5']:>6}")


if __name__ == "__main__":
    main()
