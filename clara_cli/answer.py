"""Retrieval and generation for `clara search` / `clara ask`, on one consistent store snapshot."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from .errors import ClaraError, ModelMismatchError
from .index import flatten_normalized, index_ids, load_index
from .model import ClaraModel
from .progress import notice
from .store import Snapshot

HIT_FIELDS = ("chunk_id", "doc_id", "source", "start", "end", "text")


@dataclass
class Hit:
    rank: int
    score: float
    chunk_id: str
    doc_id: str
    source: str
    start: int
    end: int
    text: str
    key: int = -1

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("key")
        return d


def check_model(snapshot: Snapshot, model: ClaraModel) -> None:
    bound = snapshot.model
    if bound is None:
        raise ClaraError("the store has no compressed chunks yet (run `clara compress` first)")
    if bound["fingerprint"] != model.fingerprint:
        raise ModelMismatchError(f"the store was compressed with model {bound['fingerprint']} "
                                 f"({bound.get('spec')}); this model is {model.fingerprint} ({model.source})")


class Retriever:
    """The FAISS index of a snapshot plus exact search over rows not indexed yet."""

    def __init__(self, snapshot: Snapshot):
        self.snapshot = snapshot
        self.index = load_index(snapshot)
        self.live = np.asarray(snapshot.memory_keys(), dtype=np.int64)
        indexed = index_ids(self.index) if self.index is not None else np.zeros(0, np.int64)
        self.n_stale = int((~np.isin(indexed, self.live)).sum())
        self.unindexed = self.live[~np.isin(self.live, indexed)]
        if self.index is None and len(self.live) == 0:
            raise ClaraError("nothing to search: no chunk is compressed yet (run `clara compress`)")
        if len(self.unindexed):
            notice(f"{len(self.unindexed)} compressed chunks are not indexed yet (searched exactly; "
                   "run `clara index`)")
        chunks = snapshot.chunks(columns=list(HIT_FIELDS))
        self.rows = {int(cid, 16): i for i, cid in enumerate(chunks.column("chunk_id").to_pylist())}
        self.chunks = chunks

    def search_vectors(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """(key, score) per query, best first, over live rows only."""
        results: list[list[tuple[int, float]]] = [[] for _ in range(len(queries))]
        if self.index is not None and self.index.ntotal:
            fetch = min(self.index.ntotal, k + self.n_stale)
            scores, keys = self.index.search(queries, fetch)
            live = set(self.live.tolist())
            for qi in range(len(queries)):
                results[qi] = [(int(key), float(s)) for key, s in zip(keys[qi], scores[qi], strict=True)
                               if key >= 0 and int(key) in live]
        if len(self.unindexed):
            extra = flatten_normalized(self.snapshot.read_memory(self.unindexed))
            scores = queries @ extra.T
            for qi in range(len(queries)):
                results[qi] += [(int(key), float(s)) for key, s in zip(self.unindexed, scores[qi], strict=True)]
        return [sorted(r, key=lambda x: -x[1])[:k] for r in results]

    def hits(self, ranked: list[tuple[int, float]]) -> list[Hit]:
        out = []
        for rank, (key, score) in enumerate(ranked, start=1):
            row = self.rows[key]
            fields = {f: self.chunks.column(f)[row].as_py() for f in HIT_FIELDS}
            out.append(Hit(rank=rank, score=round(score, 6), key=key, **fields))
        return out


def search(snapshot: Snapshot, model: ClaraModel, queries: list[str], k: int = 5,
           retriever: Retriever | None = None) -> list[list[Hit]]:
    """Top-k chunks per query by cosine of flattened query-reasoner and memory vectors."""
    check_model(snapshot, model)
    retriever = retriever or Retriever(snapshot)
    q = flatten_normalized(model.encode_queries(queries))
    return [retriever.hits(r) for r in retriever.search_vectors(q, k)]


@dataclass
class Answer:
    question: str
    answer: str
    sources: list[Hit]
    context_tokens: int
    timings: dict

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.answer,
                "sources": [h.to_dict() for h in self.sources],
                "context_tokens": self.context_tokens, "timings": self.timings}


def ask(snapshot: Snapshot, model: ClaraModel, questions: list[str], k: int = 5, max_new_tokens: int = 64,
        retriever: Retriever | None = None) -> list[Answer]:
    """Retrieve top-k memories per question and generate from them (the compressed context)."""
    check_model(snapshot, model)
    retriever = retriever or Retriever(snapshot)
    out: list[Answer] = []
    for question in questions:
        t0 = time.perf_counter()
        hits = search(snapshot, model, [question], k, retriever)[0]
        t1 = time.perf_counter()
        memory = snapshot.read_memory(np.array([h.key for h in hits], dtype=np.int64))
        answer = model.generate([question], [memory], max_new_tokens=max_new_tokens)[0]
        t2 = time.perf_counter()
        prompt_tokens = len(model.tokenizer(model.prompt(question, len(hits)), add_special_tokens=False).input_ids)
        out.append(Answer(question, answer, hits, context_tokens=prompt_tokens,
                          timings={"retrieve_s": round(t1 - t0, 4), "generate_s": round(t2 - t1, 4),
                                   "total_s": round(t2 - t0, 4)}))
    return out
