"""`clara eval`: CLaRa over a store against text RAG with the same base LM, side by side.

Metrics (computed in metrics.py; the report is written by eval_report.py) are the RAG
literature's (docs/design.md §1), on SQuAD-normalised strings, each the max
over the gold answers of a question:
  EM        normalised prediction == normalised gold
  F1        token-level F1 of the normalised strings
  Cover-EM  normalised gold occurs (as a substring, as FlashRAG's "acc") in the normalised
            prediction
  Recall@k  share of a question's gold items (chunk ids, or titles) found among the top k
            (with one gold item: the hit rate)

Systems: `clara` (query reasoner retrieval + generator reading memory tokens) and
`text-<retriever>` (BM25 / all-MiniLM-L6-v2 retrieval + the same base LM with its adapters
switched off, reading the raw chunk text with the same system prompt); optionally `text-gold`,
the same reader given the gold chunks (perfect retrieval: the reader's ceiling). Every question is
answered one at a time (batch 1), greedy, so latencies are per query as the paper reports.

Timing: `prefill` runs from building the prompt (chat template, tokenizing, for clara writing
the memory vectors into the embeddings) until the logits of the first new token exist (stamped
by a logits processor: one forward over the whole prompt plus generate's small setup);
`decode` is the rest of `generate` (one forward per further token). `retrieve` is the
query encoding, the search and (clara) reading the memory rows. Index building (MiniLM
embeddings of the corpus, BM25 statistics) and compression are offline costs, reported apart.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import ClaraError, UsageError
from .eval_report import (  # noqa: F401  (re-exported: the output side lives in eval_report)
    TABLE_COLUMNS,
    caveats,
    format_table,
    markdown_table,
    plot_report,
    read_report,
    table_rows,
    write_report,
)
from .jsonl import json_lines, parse_json_line
from .metrics import (  # noqa: F401  (re-exported: the metrics live in metrics)
    answer_scores,
    cover_em,
    exact_match,
    normalize_answer,
    recall_at_k,
    token_f1,
)
from .model import ClaraModel, device_name
from .progress import progress_bar
from .prompts import SYSTEM_PROMPT, chat_prompt, text_user_turn

# ---------------------------------------------------------------------------------------------
# questions


@dataclass
class EvalQuestion:
    question: str
    answers: list[str]
    gold_chunk_ids: list[str] = field(default_factory=list)
    gold_titles: list[str] = field(default_factory=list)


def _string_list(obj: dict, key: str, where: str, required: bool = False) -> list[str]:
    value = obj.get(key)
    if value is None:
        if required:
            raise UsageError(f"{where}: missing \"{key}\"")
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise UsageError(f"{where}: \"{key}\" must be a list of non-empty strings")
    return value


def parse_question(obj, where: str) -> EvalQuestion:
    """{question, answers|answer|golden_answers, gold_chunk_ids?, gold_titles?} -> EvalQuestion."""
    if not isinstance(obj, dict):
        raise UsageError(f"{where}: expected a JSON object")
    if not isinstance(obj.get("question"), str) or not obj["question"].strip():
        raise UsageError(f"{where}: \"question\" must be a non-empty string")
    key = next((k for k in ("answers", "answer", "golden_answers") if k in obj), "answers")
    answers = _string_list(obj, key, where, required=True)
    if not answers:
        raise UsageError(f"{where}: \"{key}\" is empty")
    return EvalQuestion(obj["question"], answers, _string_list(obj, "gold_chunk_ids", where),
                        _string_list(obj, "gold_titles", where))


def load_questions(path: str | Path, limit: int | None = None, stdin=None) -> list[EvalQuestion]:
    """Questions from a JSON Lines file (or `-` with stdin); errors name the line."""
    name = "<stdin>" if str(path) == "-" else str(path)
    try:
        lines = stdin if str(path) == "-" else Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise UsageError(f"cannot read {name}: {err.strerror or err}") from None
    out: list[EvalQuestion] = []
    for where, line in json_lines(lines, name):
        out.append(parse_question(parse_json_line(line, where), where))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise UsageError(f"{name}: no questions")
    return out


# ---------------------------------------------------------------------------------------------
# timed greedy generation


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    decode_s: float


@torch.inference_mode()
def timed_generate(decoder, tokenizer, attention_mask: torch.Tensor, max_new_tokens: int,
                   input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                   started: float | None = None) -> Generation:
    """Greedy generation of one prompt, split into prefill and decode time (module docstring).

    `started`: when building the prompt began (tokenizing, memory overwrite), counted as prefill."""
    from transformers import LogitsProcessorList

    from .answer import FirstLogitsStamp

    stamp = FirstLogitsStamp()
    kwargs = {"inputs_embeds": inputs_embeds} if inputs_embeds is not None else {"input_ids": input_ids}
    t0 = started if started is not None else time.perf_counter()
    out = decoder.generate(**kwargs, attention_mask=attention_mask, do_sample=False, top_p=None, top_k=None,
                           temperature=None, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                           logits_processor=LogitsProcessorList([stamp]))
    t1 = time.perf_counter()
    new = out[0] if inputs_embeds is not None else out[0, input_ids.shape[1]:]
    prefill = (stamp.t or t1) - t0
    return Generation(text=tokenizer.decode(new, skip_special_tokens=True).strip(),
                      prompt_tokens=int(attention_mask.sum()), new_tokens=int(len(new)),
                      prefill_s=prefill, decode_s=t1 - t0 - prefill)


@contextmanager
def adapters_disabled(decoder):
    """The bare base LM for the duration (transformers' PEFT integration keeps the adapters)."""
    decoder.disable_adapters()
    try:
        yield decoder
    finally:
        decoder.enable_adapters()


class TextRAG:
    """The text-RAG baseline: the CLaRa model's base LM with no adapter, reading raw passages.

    It shares the CLaRa model's weights (adapters switched off) unless a checkpoint changed the
    base vocabulary rows, in which case the untouched base LM is loaded beside it."""

    def __init__(self, model: ClaraModel):
        self.tokenizer = model.tokenizer
        self.model = model
        self.separate = None
        if model.full_rows:
            from transformers import AutoModelForCausalLM

            from .checkpoint import resolve_base

            path = resolve_base(model.config.base_model)
            self.separate = AutoModelForCausalLM.from_pretrained(path, dtype=model.dtype).to(model.device).eval()

    def prompt(self, question: str, passages: Sequence[str]) -> str:
        """The CLaRa generator prompt with the passages' text where the memory slots would be."""
        return chat_prompt(self.tokenizer, SYSTEM_PROMPT, text_user_turn(question, passages))

    def generate(self, question: str, passages: Sequence[str], max_new_tokens: int) -> Generation:
        started = time.perf_counter()
        enc = self.tokenizer(self.prompt(question, passages), add_special_tokens=False, return_tensors="pt")
        ids, mask = enc["input_ids"].to(self.model.device), enc["attention_mask"].to(self.model.device)
        if self.separate is not None:
            return timed_generate(self.separate, self.tokenizer, mask, max_new_tokens, input_ids=ids, started=started)
        with adapters_disabled(self.model.decoder) as decoder:
            return timed_generate(decoder, self.tokenizer, mask, max_new_tokens, input_ids=ids, started=started)


# ---------------------------------------------------------------------------------------------
# the evaluation


@dataclass
class QuestionResult:
    system: str
    question: str
    answers: list[str]
    prediction: str
    em: float
    f1: float
    cover_em: float
    recall: float | None
    retrieved: list[str]  # chunk ids, rank order
    retrieved_titles: list[str]
    context_tokens: int  # the whole prompt the generator reads
    passage_tokens: int  # the part of it that carries the retrieved documents
    new_tokens: int
    retrieve_s: float
    prefill_s: float
    decode_s: float
    recall_at_1: float | None = None  # the same recall over the first retrieved chunk only

    @property
    def total_s(self) -> float:
        return self.retrieve_s + self.prefill_s + self.decode_s

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total_s"] = self.total_s
        return d


@dataclass
class SystemSummary:
    system: str
    retriever: str
    reader: str
    n: int
    em: float
    f1: float
    cover_em: float
    recall_at_k: float | None
    n_recall: int
    context_tokens: float
    passage_tokens: float
    new_tokens: float
    retrieve_ms: float
    prefill_ms: float
    decode_ms: float
    total_ms: float
    total_p50_ms: float
    total_p90_ms: float
    answers_per_s: float
    correct: int
    tokens_per_correct: float | None
    seconds_per_correct: float | None
    index_s: float
    recall_at_1: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(system: str, retriever: str, reader: str, results: list[QuestionResult],
              index_s: float = 0.0) -> SystemSummary:
    n = len(results)
    recalls = [r.recall for r in results if r.recall is not None]
    recalls_1 = [r.recall_at_1 for r in results if r.recall_at_1 is not None]
    totals = np.array([r.total_s for r in results]) if results else np.zeros(1)
    correct = int(sum(r.cover_em for r in results))
    tokens = float(sum(r.context_tokens for r in results))

    def mean(values) -> float:
        values = list(values)
        return float(sum(values) / len(values)) if values else 0.0

    return SystemSummary(
        system=system, retriever=retriever, reader=reader, n=n,
        em=100 * mean(r.em for r in results), f1=100 * mean(r.f1 for r in results),
        cover_em=100 * mean(r.cover_em for r in results),
        recall_at_k=100 * mean(recalls) if recalls else None, n_recall=len(recalls),
        context_tokens=mean(r.context_tokens for r in results),
        passage_tokens=mean(r.passage_tokens for r in results),
        new_tokens=mean(r.new_tokens for r in results),
        retrieve_ms=1000 * mean(r.retrieve_s for r in results),
        prefill_ms=1000 * mean(r.prefill_s for r in results),
        decode_ms=1000 * mean(r.decode_s for r in results),
        total_ms=1000 * float(totals.mean()),
        total_p50_ms=1000 * float(np.percentile(totals, 50)),
        total_p90_ms=1000 * float(np.percentile(totals, 90)),
        answers_per_s=n / float(totals.sum()) if totals.sum() > 0 else 0.0,
        correct=correct,
        tokens_per_correct=tokens / correct if correct else None,
        seconds_per_correct=float(totals.sum()) / correct if correct else None,
        index_s=index_s, recall_at_1=100 * mean(recalls_1) if recalls_1 else None)


@dataclass
class EvalReport:
    k: int
    max_new_tokens: int
    n_questions: int
    store: str
    store_version: int
    chunks: int
    model: str
    fingerprint: str
    trained: bool
    dtype: str
    systems: list[SystemSummary]
    results: list[QuestionResult]
    seconds: float
    machine: str = ""  # where the timings were measured (model.device_name) ...
    threads: int = 0   # ... and with how many torch threads

    def meta(self) -> dict:
        return {"k": self.k, "max_new_tokens": self.max_new_tokens, "n_questions": self.n_questions,
                "store": self.store, "store_version": self.store_version, "chunks": self.chunks,
                "model": self.model, "fingerprint": self.fingerprint, "trained": self.trained,
                "dtype": self.dtype, "machine": self.machine, "threads": self.threads,
                "seconds": round(self.seconds, 2)}


def _scored(system: str, q: EvalQuestion, gen: Generation, retrieved: list[tuple[str, str, str]],
            passage_tokens: int, retrieve_s: float) -> QuestionResult:
    s = answer_scores(gen.text, q.answers)
    return QuestionResult(system=system, question=q.question, answers=q.answers, prediction=gen.text,
                          em=s["em"], f1=s["f1"], cover_em=s["cover_em"],
                          recall=recall_at_k(retrieved, q.gold_chunk_ids, q.gold_titles),
                          recall_at_1=recall_at_k(retrieved[:1], q.gold_chunk_ids, q.gold_titles),
                          retrieved=[c for c, _, _ in retrieved], retrieved_titles=[t for _, _, t in retrieved],
                          context_tokens=gen.prompt_tokens, passage_tokens=passage_tokens,
                          new_tokens=gen.new_tokens, retrieve_s=retrieve_s, prefill_s=gen.prefill_s,
                          decode_s=gen.decode_s)


# clara's system name and the retriever behind it, per answer.Retriever mode
CLARA_SYSTEMS = {"latent": ("clara", "clara query reasoner"), "bm25": ("clara-bm25", "the store's BM25"),
                 "hybrid": ("clara-hybrid", "query reasoner + BM25 (RRF)")}


def clara_system(mode: str, expand: int = 0) -> tuple[str, str, str]:
    """(system, retriever, reader) names of clara's row for a retriever mode and expansion."""
    system, retriever = CLARA_SYSTEMS[mode]
    if expand:
        return f"{system}-expand{expand}", retriever, f"clara generator ({expand} raw + memory tokens)"
    return system, retriever, "clara generator (memory tokens)"


def run_clara(snapshot, model: ClaraModel, questions: Sequence[EvalQuestion], k: int, max_new_tokens: int,
              titles: dict[str, str], retriever, tick=None, expand: int | None = None) -> list[QuestionResult]:
    """CLaRa end to end through `answer.iter_answers`, the same path as `clara ask`: the
    retriever's top-k memories (query reasoner, the store's BM25, or both fused) -> generator,
    one question at a time so that its timings are per-question latencies. `expand`: the
    raw text of the best `expand` chunks instead of their memory (answer.iter_answers)."""
    from .answer import ask, iter_answers

    expand = model.config.expand if expand is None else expand
    system = clara_system(retriever.mode, expand)[0]
    slot_tokens = model.config.n_mem + (1 if model.config.sep else 0)
    ask(snapshot, model, [questions[0].question], k, 2, retriever, expand=expand)  # first-call costs, untimed
    out = []
    answers = iter_answers(snapshot, model, [q.question for q in questions], k, max_new_tokens, retriever,
                           batch_size=1, expand=expand)
    for q, a in zip(questions, answers, strict=True):
        t = a.timings
        gen = Generation(text=a.answer, prompt_tokens=a.context_tokens, new_tokens=a.new_tokens,
                         prefill_s=t["prefill_s"], decode_s=t["decode_s"])
        retrieved = [(h.chunk_id, h.doc_id, titles.get(h.chunk_id, h.doc_id)) for h in a.sources]
        raw = a.sources[:expand]
        passage = slot_tokens * (len(a.sources) - len(raw)) + sum(
            len(model.tokenizer(h.text.strip() + "\n", add_special_tokens=False).input_ids) for h in raw)
        out.append(_scored(system, q, gen, retrieved, passage, t["retrieve_s"] + t["read_s"]))
        if tick:
            tick()
    return out


def run_text_rag(reader: TextRAG, retriever, corpus, questions: Sequence[EvalQuestion], k: int,
                 max_new_tokens: int, tick=None) -> list[QuestionResult]:
    """A standard retriever's top-k chunk texts read by the bare base LM."""
    system = f"text-{retriever.name}"
    warm = retriever.search([questions[0].question], k)[0]
    reader.generate(questions[0].question, [corpus.texts[r] for r, _ in warm], 2)
    out = []
    for q in questions:
        t0 = time.perf_counter()
        ranked = retriever.search([q.question], k)[0]
        retrieve_s = time.perf_counter() - t0
        passages = [corpus.texts[r] for r, _ in ranked]
        gen = reader.generate(q.question, passages, max_new_tokens)
        passage_tokens = sum(len(reader.tokenizer(p, add_special_tokens=False).input_ids) for p in passages)
        retrieved = [(corpus.chunk_ids[r], corpus.doc_ids[r], corpus.titles[r]) for r, _ in ranked]
        out.append(_scored(system, q, gen, retrieved, passage_tokens, retrieve_s))
        if tick:
            tick()
    return out


def parse_baselines(spec: str | Sequence[str] | None) -> list[str]:
    """"bm25,minilm" -> ["bm25", "minilm"]; "none" or "" -> []."""
    from .retrievers import RETRIEVERS

    if spec is None:
        return []
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if names in ([], ["none"]):
        return []
    known = [*RETRIEVERS, "gold"]
    bad = [n for n in names if n not in known]
    if bad:
        raise UsageError(f"unknown baseline retriever {bad[0]!r} (use {', '.join(known)} or none)")
    return list(dict.fromkeys(names))


class GoldLookup:
    """The `gold` baseline: the chunks a question's gold ids or titles name, in corpus order — the
    reader's accuracy when retrieval is perfect (questions without gold get no passage)."""

    name = "gold"

    def __init__(self, corpus, questions: Sequence[EvalQuestion]):
        by_id = {c: i for i, c in enumerate(corpus.chunk_ids)}
        by_title: dict[str, list[int]] = {}
        for i, (doc_id, title) in enumerate(zip(corpus.doc_ids, corpus.titles, strict=True)):
            for name in {title.casefold(), doc_id.casefold(), doc_id.removeprefix("wiki:").casefold()}:
                by_title.setdefault(name, []).append(i)
        self.rows: dict[str, list[int]] = {}
        for q in questions:
            rows = [by_id[c] for c in q.gold_chunk_ids if c in by_id]
            if not q.gold_chunk_ids:
                rows = sorted({i for t in q.gold_titles for i in by_title.get(t.casefold(), [])})
            self.rows[q.question] = rows

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        return [[(i, 1.0) for i in self.rows.get(q, [])[:k]] for q in queries]


def evaluate(snapshot, model: ClaraModel, questions: Sequence[EvalQuestion], k: int = 5,
             max_new_tokens: int = 64, baselines: Sequence[str] = ("bm25", "minilm"),
             progress: bool = True, retriever=None, expand: int | None = None) -> EvalReport:
    """Every question through clara and through text RAG with each baseline retriever.

    `retriever` (an answer.Retriever) picks clara's memories: latent, bm25 or hybrid (default: answer.DEFAULT_RETRIEVER);
    the system is then named clara, clara-bm25 or clara-hybrid."""
    from .answer import Retriever, check_model
    from .retrievers import ChunkCorpus, build_retriever

    if not questions:
        raise UsageError("no questions to evaluate")
    check_model(snapshot, model)
    t_start = time.perf_counter()
    corpus = ChunkCorpus.from_snapshot(snapshot)
    if not len(corpus):
        raise ClaraError("the store has no chunks")
    titles = dict(zip(corpus.chunk_ids, corpus.titles, strict=True))
    summaries, results = [], []
    bar = progress_bar(total=len(questions) * (1 + len(baselines)), desc="eval", unit="q", enabled=progress)
    try:
        retriever = retriever or Retriever(snapshot)
        res = run_clara(snapshot, model, questions, k, max_new_tokens, titles, retriever, tick=lambda: bar.update(1),
                        expand=expand)
        summaries.append(summarize(*clara_system(retriever.mode, model.config.expand if expand is None else expand),
                                   res))
        results += res
        reader = TextRAG(model) if baselines else None
        for name in baselines:
            t0 = time.perf_counter()
            retriever = GoldLookup(corpus, questions) if name == "gold" else build_retriever(name, corpus.texts)
            index_s = time.perf_counter() - t0
            res = run_text_rag(reader, retriever, corpus, questions, k, max_new_tokens, tick=lambda: bar.update(1))
            label = {"bm25": "BM25", "minilm": "all-MiniLM-L6-v2", "gold": "gold chunks (oracle)"}.get(name, name)
            summaries.append(summarize(f"text-{name}", label, "base LM, raw text", res, index_s=index_s))
            results += res
    finally:
        bar.close()
    return EvalReport(k=k, max_new_tokens=max_new_tokens, n_questions=len(questions), store=str(snapshot.root),
                      store_version=snapshot.version, chunks=len(corpus), model=model.source,
                      fingerprint=model.fingerprint, trained=model.trained,
                      dtype=str(model.dtype).removeprefix("torch."), systems=summaries, results=results,
                      seconds=time.perf_counter() - t_start, machine=device_name(model.device),
                      threads=torch.get_num_threads())
