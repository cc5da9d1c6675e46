"""Answer and retrieval metrics (the RAG literature's, docs/design.md §1): SQuAD-normalised
strings, each score the max over a question's gold answers. Pure Python, no model imports."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation, drop a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _golds(golds: str | Sequence[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else list(golds)


def exact_match(prediction: str, golds: str | Sequence[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(golds)))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds: str | Sequence[str]) -> float:
    pred = normalize_answer(prediction).split()
    return max((_f1(pred, normalize_answer(g).split()) for g in _golds(golds)), default=0.0)


def cover_em(prediction: str, golds: str | Sequence[str]) -> float:
    """1 when some normalised gold answer occurs inside the normalised prediction. A gold that
    normalises to nothing (e.g. "The") never counts: it would occur in every prediction."""
    pred = normalize_answer(prediction)
    return float(any(g and g in pred for g in (normalize_answer(x) for x in _golds(golds))))


def answer_scores(prediction: str, golds: str | Sequence[str]) -> dict[str, float]:
    return {"em": exact_match(prediction, golds), "f1": token_f1(prediction, golds),
            "cover_em": cover_em(prediction, golds)}


def recall_at_k(retrieved: Sequence[tuple[str, str, str]], gold_chunk_ids: Sequence[str],
                gold_titles: Sequence[str]) -> float | None:
    """Share of gold items among retrieved (chunk_id, doc_id, title) triples; None without gold.

    Gold chunk ids are matched exactly; gold titles match a chunk's document title or doc id
    (case-insensitively, a `wiki:` id prefix ignored)."""
    if gold_chunk_ids:
        found = {c for c, _, _ in retrieved}
        return sum(g in found for g in gold_chunk_ids) / len(gold_chunk_ids)
    if gold_titles:
        names = set()
        for _, doc_id, title in retrieved:
            names.update({title.casefold(), doc_id.casefold(), doc_id.removeprefix("wiki:").casefold()})
        return sum(g.casefold() in names for g in gold_titles) / len(gold_titles)
    return None
