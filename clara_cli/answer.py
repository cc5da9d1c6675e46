"""Retrieval and generation for `clara search` / `clara ask`, on one consistent store snapshot.

This is the only retrieve -> read memory -> generate path: `clara ask`, `clara eval`, the
server and the Python API all answer through `iter_answers`."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .errors import ClaraError, UsageError
from .progress import notice
from .store.keys import chunk_ids_to_keys

if TYPE_CHECKING:  # torch, faiss and transformers load only when a command needs them
    from .model import ClaraModel
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
    """Before reading memory with `model`: the store must be bound to a model, and to this one
    (`Snapshot.check_model` owns the fingerprint comparison and its message, exit code 5)."""
    if snapshot.model is None:
        raise ClaraError("the store has no compressed chunks yet (run `clara compress` first)")
    snapshot.check_model(model.fingerprint)


RETRIEVER_MODES = ("latent", "bm25", "hybrid")
#: What ask, search and eval use without --retriever: the mode that measured best on the
#: development split (benchmarks/retrieval_dev.py; docs/TRAINING.md "Retrieval").
DEFAULT_RETRIEVER = "hybrid"
RRF_K = 60  # reciprocal rank fusion constant (Cormack et al. 2009)
FUSION_DEPTH = 50  # ranks fused from each side
#: The query reasoner's weight in hybrid's fusion, BM25's being 1. BM25 puts the paragraph first
#: more often than the query reasoner (dev split: Recall@1 97.5 against 83-85), and `ask` reads
#: the first hit as text; at 0.1 the query reasoner can still lift into the top 5 a paragraph
#: that BM25 ranks lower (down to rank 12 when the others get no latent credit). Chosen on the development split (benchmarks/retrieval_dev.py --fusions;
#: docs/TRAINING.md, "Hybrid fusion").
HYBRID_LATENT_WEIGHT = 0.1


def rrf(rankings: list[list[tuple[int, float]]], k: int, c: int = RRF_K,
        weights: Sequence[float] | None = None) -> list[tuple[int, float]]:
    """Weighted reciprocal rank fusion: sum of weight/(c + rank) over the rankings a key appears in.

    Equal sums (a key first in one ranking and second in the other against the reverse) go to
    the key the most weighted ranking puts higher (the first of equals), then to the lower key."""
    weights = list(weights) if weights is not None else [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    fused: dict[int, float] = {}
    for weight, ranked in zip(weights, rankings, strict=True):
        for rank, (key, _) in enumerate(ranked, start=1):
            fused[key] = fused.get(key, 0.0) + weight / (c + rank)
    lead = rankings[max(range(len(weights)), key=lambda i: (weights[i], -i))] if rankings else []
    lead_rank = {key: rank for rank, (key, _) in enumerate(lead)}
    return sorted(fused.items(), key=lambda kv: (-kv[1], lead_rank.get(kv[0], len(lead)), kv[0]))[:k]


class Retriever:
    """latent (the method's cosine through the store's index), bm25 (the store's BM25), or
    hybrid (both fused by reciprocal rank); only live chunks with memory are returned."""

    def __init__(self, snapshot: Snapshot, mode: str = DEFAULT_RETRIEVER, nprobe: int | None = None,
                 ef_search: int | None = None, rerank: int | None = None):
        if mode not in RETRIEVER_MODES:
            raise UsageError(f"unknown retriever {mode!r} (use {', '.join(RETRIEVER_MODES)})")
        self.snapshot, self.mode = snapshot, mode
        self.vector = None
        if mode != "bm25":  # bm25 alone needs neither torch nor faiss
            from .index import VectorSearch

            self.vector = VectorSearch(snapshot, nprobe, ef_search, rerank)
        self.live = np.asarray(snapshot.memory_keys(), dtype=np.int64)
        if len(self.live) == 0 and mode != "bm25":
            raise ClaraError("nothing to search: no chunk is compressed yet (run `clara compress`)")
        if len(self.live) == 0:  # bm25 can search chunks that are not compressed yet
            self.live = np.asarray(snapshot.chunk_keys(), dtype=np.int64)
        self.lexical = None
        if mode != "latent":
            from .lexical import StoreBM25

            self.lexical = StoreBM25.load(snapshot) or StoreBM25.over(snapshot)
        chunks = snapshot.chunks(columns=list(HIT_FIELDS))
        self.rows = {key: i for i, key in enumerate(chunk_ids_to_keys(chunks.column("chunk_id")).tolist())}
        self.chunks = chunks

    def search_vectors(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """(key, cosine) per query, best first: queries are L2-normalised flattened vectors."""
        if self.vector is None:
            raise ClaraError("this retriever is bm25 only")
        return self.vector.search(queries, k)

    def search(self, model: ClaraModel | None, texts: list[str], k: int) -> list[list[tuple[int, float]]]:
        """(key, score) per query text: cosine (latent), BM25 score (bm25), or RRF score (hybrid)."""
        depth = max(k, FUSION_DEPTH) if self.mode == "hybrid" else k
        latent = lexical = None
        if self.vector is not None:
            if model is None:
                raise ClaraError("latent retrieval needs the model (query reasoner)")
            latent = self.search_vectors(self.vector.query_vectors(model.encode_queries(texts)), depth)
        if self.lexical is not None:
            lexical = self.lexical.search_keys(texts, depth, self.live)
        if self.mode == "latent":
            return latent
        if self.mode == "bm25":
            return lexical
        return [rrf([a, b], k, weights=(HYBRID_LATENT_WEIGHT, 1.0)) for a, b in zip(latent, lexical, strict=True)]

    def hits(self, ranked: list[tuple[int, float]]) -> list[Hit]:
        out = []
        for rank, (key, score) in enumerate(ranked, start=1):
            row = self.rows[key]
            fields = {f: self.chunks.column(f)[row].as_py() for f in HIT_FIELDS}
            out.append(Hit(rank=rank, score=round(score, 6), key=key, **fields))
        return out


def search(snapshot: Snapshot, model: ClaraModel | None, queries: list[str], k: int = 5,
           retriever: Retriever | None = None) -> list[list[Hit]]:
    """Top-k chunks per query: by cosine of flattened query-reasoner and memory vectors (latent),
    BM25, or both fused (hybrid)."""
    retriever = retriever or Retriever(snapshot)
    if retriever.mode != "bm25" or (model is not None and snapshot.model is not None):
        check_model(snapshot, model)
    return [retriever.hits(r) for r in retriever.search(model, queries, k)]


def select_sources(hits: list[Hit], min_score: float | None = None) -> list[Hit]:
    """The hits an answer may read: those scoring at least min_score (None: all). An empty
    list means the question has no matching sources and gets no generated answer: text made
    up without sources would read as if it came from the store (`clara ask` exit code 7)."""
    if min_score is None:
        return list(hits)
    return [h for h in hits if h.score >= min_score]


def fit_question(model: ClaraModel, question: str, k: int, max_new_tokens: int,
                 expanded: Sequence[str] = ()) -> tuple[str, str | None]:
    """The question, its tokens cut at the end so that the generator's prompt with k memory slots
    (and the expanded texts) fits its context (positions left after max_new_tokens, and the
    prompt limit); with a one-line notice when it was cut. A prompt cut silently loses the
    question's end and the answer cue, and the generator answers something else."""
    from .model import MAX_PROMPT_TOKENS

    positions = getattr(model.decoder.config, "max_position_embeddings", None) or MAX_PROMPT_TOKENS + max_new_tokens
    limit = min(MAX_PROMPT_TOKENS, positions - max_new_tokens)
    tok = model.tokenizer

    def length(q: str) -> int:
        return len(tok(model.prompt(q, k, expanded), add_special_tokens=False).input_ids)

    total = length(question)
    if total <= limit:
        return question, None
    frame = length("")
    if frame >= limit:
        raise UsageError(f"{k} memory slots and {max_new_tokens} new tokens do not fit the generator's "
                         f"context ({positions} positions): lower -k or --max-new-tokens")
    ids = tok(question, add_special_tokens=False).input_ids
    keep, fitted = limit - frame, ""
    while keep > 0:  # tokens at a cut can merge with the prompt's differently: shrink until it fits
        fitted = tok.decode(ids[:keep], skip_special_tokens=True)
        over = length(fitted) - limit
        if over <= 0:
            break
        keep, fitted = keep - over, ""
    return fitted, (f"the question is too long for the generator's context: its first {keep} of "
                    f"{len(ids)} tokens were used ({limit}-token prompt limit)")


@dataclass
class Answer:
    question: str
    answer: str | None  # None: no matching sources, nothing generated
    sources: list[Hit]
    context_tokens: int  # prompt tokens the generator read (template, question, memory slots)
    timings: dict  # seconds of the batch this question was answered in (see iter_answers)
    new_tokens: int = field(default=0, compare=False)

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.answer,
                "sources": [h.to_dict() for h in self.sources],
                "context_tokens": self.context_tokens,
                "timings": {name: round(s, 4) for name, s in self.timings.items()}}


class FirstLogitsStamp:
    """A logits processor that only records when generate first produced logits: the end of
    prefill (one forward over the whole prompt), the start of decoding."""

    def __init__(self):
        self.t: float | None = None

    def __call__(self, input_ids, scores):
        if self.t is None:
            self.t = time.perf_counter()
        return scores


def iter_answers(snapshot: Snapshot, model: ClaraModel, questions: Sequence[str], k: int = 5,
                 max_new_tokens: int = 64, retriever: Retriever | None = None,
                 batch_size: int = 8, min_score: float | None = None, expand: int | None = None) -> Iterator[Answer]:
    """Answers in question order, `batch_size` questions at a time: retrieve top-k per question,
    read their memory rows (one CRC-checked read per batch), generate greedily from them. A
    question without matching sources (select_sources) gets answer None and no generation; one
    too long for the generator's context is cut to fit (fit_question, with a notice).

    `expand` N > 0 (selective expansion, ours, after REFRAG): the generator reads the raw text of
    the N best sources and the memory tokens of the others (None: the model's `config.expand`,
    0 for Apple's checkpoints). Our generator was not trained on such prompts (README).

    Each answer's timings are its batch's: retrieve_s (query encoding and search), read_s
    (memory rows), prefill_s (building the prompt until the first new token's logits), decode_s
    (the other new tokens), generate_s (prefill + decode) and total_s. `clara eval` answers
    with batch_size 1, so they are per-question latencies there."""
    from transformers import LogitsProcessorList

    if batch_size < 1:
        raise UsageError("batch_size must be at least 1")
    expand = model.config.expand if expand is None else expand
    if expand < 0:
        raise UsageError("expand must be at least 0")
    check_model(snapshot, model)
    retriever = retriever or Retriever(snapshot)
    for start in range(0, len(questions), batch_size):
        batch = list(questions[start:start + batch_size])
        t0 = time.perf_counter()
        hits = [select_sources(retriever.hits(r), min_score) for r in retriever.search(model, batch, k)]
        answered = [i for i, hs in enumerate(hits) if hs]
        expanded = [[h.text for h in hits[i][:expand]] for i in answered]  # read as text
        compressed = [hits[i][expand:] for i in answered]  # read as memory tokens
        prompts = []
        for i, texts, rest in zip(answered, expanded, compressed, strict=True):
            fitted, note = fit_question(model, batch[i], len(rest), max_new_tokens, texts)
            if note:
                notice(note)
            prompts.append(fitted)
        t1 = time.perf_counter()
        memory = snapshot.read_memory(np.array([h.key for rest in compressed for h in rest], dtype=np.int64))
        memories = list(memory.split([len(rest) for rest in compressed]))
        t2 = time.perf_counter()
        stamp = FirstLogitsStamp()
        generated = model.generate(prompts, memories, max_new_tokens=max_new_tokens, expanded=expanded,
                                   logits_processor=LogitsProcessorList([stamp]), details=True) if prompts else []
        t3 = time.perf_counter()
        prefill = (stamp.t or t3) - t2
        timings = {"retrieve_s": t1 - t0, "read_s": t2 - t1, "prefill_s": prefill, "decode_s": t3 - t2 - prefill,
                   "generate_s": t3 - t2, "total_s": t3 - t0}
        by_question = dict(zip(answered, generated, strict=True))
        for i, (question, sources) in enumerate(zip(batch, hits, strict=True)):
            gen = by_question.get(i)
            if gen is None:
                yield Answer(question, None, [], context_tokens=0, timings={**timings, "prefill_s": 0.0,
                             "decode_s": 0.0, "generate_s": 0.0, "read_s": 0.0})
                continue
            yield Answer(question, gen.text, sources, context_tokens=gen.prompt_tokens, timings=dict(timings),
                         new_tokens=gen.new_tokens)


def ask(snapshot: Snapshot, model: ClaraModel, questions: Sequence[str], k: int = 5, max_new_tokens: int = 64,
        retriever: Retriever | None = None, batch_size: int = 8, min_score: float | None = None,
        expand: int | None = None) -> list[Answer]:
    """Retrieve top-k memories per question and generate from them (the compressed context);
    a question without matching sources gets answer None."""
    return list(iter_answers(snapshot, model, questions, k, max_new_tokens, retriever, batch_size, min_score,
                             expand))
