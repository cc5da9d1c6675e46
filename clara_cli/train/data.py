"""Training data: the official CLaRa JSONL formats, validated, and the prompts built from them.

Pretraining (stage `scp`), one document per record (the official stage 1 uses top-k 1):
    {"data_type": "qa", "question": ["q1", ...], "answers": ["a1", ...], "docs": ["doc"]}
    {"data_type": "paraphrase", "answers": ["a paraphrase of doc"], "docs": ["doc"]}
Instruction tuning (`instruct`) and end-to-end (`e2e`):
    {"question": "q", "docs": ["d1", ...], "answer": "a" | "answers": [..] | "golden_answers": [..],
     "pos_index": [i, ...]}

Bad input fails before any training with one line naming file:line. The prompts (prompts.py)
follow the official code: a chat template whose `<MEM*>` slots the memories overwrite, the
target as the assistant turn.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from ..corpora import HeldOutGuard
from ..errors import ClaraError, UsageError
from ..jsonl import read_json_lines
from ..prompts import (  # noqa: F401  (re-exported: the prompts live in prompts.py)
    PARAPHRASE_INSTRUCTIONS,
    PARAPHRASE_SYSTEM,
    QA_SYSTEM,
    chat_prompt_and_response,
    memory_slots,
    paraphrase_instruction,
)

STAGES = ("scp", "instruct", "e2e", "retrieval", "generator")

@dataclass
class PretrainRecord:
    """One `scp` example: a document and the text the generator must produce from its memory."""

    data_type: str  # "qa" or "paraphrase"
    docs: list[str]
    questions: list[str]
    answers: list[str]
    line: int = 0

    def target(self) -> str:
        if self.data_type == "paraphrase":
            return self.answers[0]
        return "\n".join(f"Question: {q}\nAnswer: {a}" for q, a in zip(self.questions, self.answers, strict=True))


@dataclass
class QARecord:
    """One `instruct` / `e2e` example: a question, candidate documents, the answer."""

    question: str
    docs: list[str]
    answer: str
    pos_index: list[int] = field(default_factory=list)
    line: int = 0


Record = PretrainRecord | QARecord


# ---------------------------------------------------------------------- reading and validation
def _str_list(obj: dict, key: str, where: str, allow_empty: bool = False) -> list[str]:
    value = obj.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f'{where}: "{key}" must be a list of strings')
    if not allow_empty and (not value or not all(v.strip() for v in value)):
        raise UsageError(f'{where}: "{key}" must hold at least one non-empty string (and no empty ones)')
    return value


def parse_record(obj: object, stage: str, where: str) -> Record:
    """One JSON value -> a validated record for `stage`, or UsageError naming `where` (file:line)."""
    if not isinstance(obj, dict):
        raise UsageError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if stage not in STAGES:
        raise UsageError(f"unknown stage {stage!r} (use {', '.join(STAGES)})")
    if stage == "scp":
        if isinstance(obj.get("question"), str) and "data_type" not in obj:
            raise UsageError(f"{where}: this is an instruction/e2e record (question is a string); scp needs "
                             '{"data_type", "question": [..], "answers": [..], "docs": [doc]}')
        data_type = obj.get("data_type", "qa")
        if data_type not in ("qa", "paraphrase"):
            raise UsageError(f'{where}: "data_type" must be "qa" or "paraphrase", got {data_type!r}')
        docs = _str_list(obj, "docs", where)
        answers = _str_list(obj, "answers", where)
        if data_type == "paraphrase":
            return PretrainRecord("paraphrase", docs, [], answers, line=_line(where))
        questions = _str_list(obj, "question", where)
        if len(questions) != len(answers):
            raise UsageError(f'{where}: "question" has {len(questions)} items but "answers" has {len(answers)}')
        return PretrainRecord("qa", docs, questions, answers, line=_line(where))

    if stage == "retrieval" and (isinstance(obj.get("question"), list) or "data_type" in obj):
        return parse_record(obj, "scp", where)  # QA lines of one document: read_records expands them
    if isinstance(obj.get("question"), list) or "data_type" in obj:
        raise UsageError(f"{where}: this is a pretraining record (data_type / question list); {stage} needs "
                         '{"question": "..", "docs": [..], "answer": ".."}')
    question = obj.get("question")
    if not isinstance(question, str) or not question.strip():
        raise UsageError(f'{where}: "question" must be a non-empty string')
    docs = _str_list(obj, "docs", where)
    # the official reader's order: answer (str), answers (list), golden_answers (list, first one)
    if isinstance(obj.get("answer"), str):
        answer = obj["answer"]
    elif "answers" in obj:
        answer = _str_list(obj, "answers", where)[0]
    elif "golden_answers" in obj:
        answer = _str_list(obj, "golden_answers", where)[0]
    else:
        raise UsageError(f'{where}: no answer: give "answer" (string), "answers" or "golden_answers" (lists)')
    if not answer.strip():
        raise UsageError(f"{where}: the answer is empty")
    pos = obj.get("pos_index", [])
    if not isinstance(pos, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in pos):
        raise UsageError(f'{where}: "pos_index" must be a list of integers')
    bad = [i for i in pos if not 0 <= i < len(docs)]
    if bad:
        raise UsageError(f'{where}: "pos_index" {bad} out of range for {len(docs)} docs')
    return QARecord(question, docs, answer, sorted(set(pos), key=pos.index), line=_line(where))


def as_retrieval_records(record: Record) -> list[QARecord]:
    """A retrieval example is (question, its document): an scp QA record gives one per QA
    line, a paraphrase record none; e2e/instruct records are taken as they are."""
    if isinstance(record, QARecord):
        return [record]
    if record.data_type != "qa":
        return []
    return [QARecord(q, list(record.docs), a, [0], line=record.line)
            for q, a in zip(record.questions, record.answers, strict=True) if q.strip()]


def _line(where: str) -> int:
    tail = where.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def read_records(path: str | Path, stage: str, max_examples: int | None = None) -> list[Record]:
    """All records of a JSONL file (blank lines skipped), validated for `stage`."""
    path = Path(path)
    records: list[Record] = []
    for where, obj in read_json_lines(path):
        records.append(parse_record(obj, stage, where))
        if max_examples is not None and len(records) >= max_examples:
            break
    if stage == "retrieval":  # the scp file's QA lines work too: one question per record
        records = [q for r in records for q in as_retrieval_records(r)]
    if not records:
        raise UsageError(f"{path}: no training records")
    return records


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------- development split
@functools.lru_cache(maxsize=1)
def dev_texts() -> frozenset[str]:
    """The texts of the development-split paragraphs (empty without the corpus package)."""
    from ..corpora import wiki_paragraphs

    try:
        return frozenset(p["text"] for p in wiki_paragraphs("dev"))
    except ClaraError:
        return frozenset()  # corpus not installed: nothing of it can be in the data


def drop_dev_documents(records: list[Record]) -> tuple[list[Record], int]:
    """Leave the development split (corpora.is_dev) out, so that no stage learns from the
    paragraphs recipes are chosen on: an `scp` record about a dev paragraph is dropped; a
    question whose positive document is a dev paragraph is dropped, and dev paragraphs leave the
    other questions' candidate lists."""
    dev = dev_texts()
    kept, dropped = [], 0
    for r in records:
        if isinstance(r, PretrainRecord):
            if dev.intersection(r.docs):
                dropped += 1
            else:
                kept.append(r)
            continue
        pos = {r.docs[i] for i in r.pos_index}
        if pos & dev or not r.docs:
            dropped += 1
            continue
        docs = [d for d in r.docs if d not in dev]
        if len(docs) != len(r.docs):
            r = QARecord(r.question, docs, r.answer, [docs.index(d) for d in pos], line=r.line)
        kept.append(r)
    return kept, dropped


# ---------------------------------------------------------------------- held-out guard
@functools.lru_cache(maxsize=1)
def held_out_guard() -> HeldOutGuard:
    """The guard (corpora.HeldOutGuard, the one held-out rule) is built once per process: it
    reads the whole corpus."""
    return HeldOutGuard()


# ---------------------------------------------------------------------- token ids
def split_ids(tokenizer, prompt: str, full: str, max_length: int) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids). The target is tokenized on its own after the prompt, which is
    exactly what the generator sees at inference; it is right-truncated to fit max_length."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if full.startswith(prompt):
        t = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    else:  # templates that rewrite earlier turns: fall back to the official prompt-length split
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        p, t = ids[:len(p)], ids[len(p):]
    if len(p) >= max_length:
        raise UsageError(f"a prompt of {len(p)} tokens does not fit --max-length {max_length}")
    return p, t[:max_length - len(p)]
