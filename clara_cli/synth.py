"""`clara synth`: training data for the three CLaRa stages from a corpus that has no QA.

The paper's salient-compressor QA came from a large LLM. Offline, on a CPU, we build it from
rules whose answers are verbatim spans of the document (so every target is grounded):

  definition  "X is a Y ..."             -> "What is X?"                  answer Y
  alias       "X, also known as Y, ..."  -> "What is X also known as?"    answer Y
  date        "... on 16 June 1963."     -> "... on what date?"           answer 16 June 1963
  year        "... completed in 1825."   -> "... completed in what year?" answer 1825
  number      "... over 700 species"     -> "... how many species ...?"   answer 700
  name        "... by author Bram Stoker" -> "... by whom?"               answer Bram Stoker

Cloze questions keep the rest of the sentence, with a leading It/He/She/They replaced by the
document's title, so the question names its subject. Every pair passes the verbatim check
(answer found in the document, answer not already in the question); `filter_model` adds an
optional answerability check by the base instruct LM reading the document (slow).

Outputs, in the official JSONL formats the trainer reads:
  pretrain.jsonl  {"data_type": "qa", "question": [..], "answers": [..], "docs": [doc]}
                  {"data_type": "paraphrase", "question": [""], "answers": [doc], "docs": [doc]}
                  (reconstruction: no offline paraphraser exists, so the target is the document)
  instruct.jsonl  {"question", "docs": [top_k docs], "answer", "pos_index": [i]}
  e2e.jsonl       {"question", "docs": [candidates], "answer", "pos_index": [i]}
Negatives are BM25's highest-ranked documents for the question that do not contain the answer.

Held-out paragraphs (corpora.HeldOutGuard: the project's one held-out rule) are never read.
Everything is deterministic for a seed.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .corpora import HeldOutGuard, split_sentences
from .errors import ClaraError, UsageError
from .metrics import normalize_answer
from .progress import notice, progress_bar


@dataclass
class SynthDoc:
    doc_id: str
    title: str
    text: str


@dataclass
class QAPair:
    question: str
    answer: str
    rule: str


@dataclass
class SynthConfig:
    seed: int = 0
    limit: int | None = None
    max_qa: int = 6  # QA pairs per document in the pretraining record
    instruct_per_doc: int = 2
    e2e_per_doc: int = 1
    top_k: int = 5  # documents per instruction-tuning example (the generator's k)
    candidates: int = 20  # documents per end-to-end example
    max_answer_char: int = 1000  # ~256 tokens: the compressor truncates beyond doc_max_length
    filter_model: bool = False


@dataclass
class SynthReport:
    out: str
    source: str
    seed: int
    documents: int
    held_out_skipped: int
    qa_pairs: int
    rules: dict
    pretrain: int
    instruct: int
    e2e: int
    filtered_by_model: int = 0
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# sources


def docs_from_wiki(split: str = "train") -> list[SynthDoc]:
    from .corpora import wiki_paragraphs

    if split != "train":
        raise UsageError("synth reads the Wikipedia training split only (held-out paragraphs are for eval)")
    return [SynthDoc(p["id"], p["title"], p["text"]) for p in wiki_paragraphs("train")]


def docs_from_snapshot(snapshot) -> list[SynthDoc]:
    """One document per live chunk (the unit the compressor sees), titled from ingest metadata."""
    from .retrievers import ChunkCorpus

    corpus = ChunkCorpus.from_snapshot(snapshot)
    return [SynthDoc(d, t, x) for d, t, x in zip(corpus.doc_ids, corpus.titles, corpus.texts, strict=True)]


# ---------------------------------------------------------------------------------------------
# QA rules

MONTHS = ("January|February|March|April|May|June|July|August|September|October|November|December")
DATE_RE = re.compile(rf"\b(?:\d{{1,2}}\s(?:{MONTHS})\s\d{{3,4}}|(?:{MONTHS})\s\d{{1,2}},\s\d{{3,4}})\b")
YEAR_RE = re.compile(r"\b(?:in|since|until|from|by|of|on|around|circa|c\.)\s(1[0-9]{3}|20[0-2][0-9])\b(?![,.]?\d)")
NUMBER_RE = re.compile(r"\b(?:(?:over|about|around|nearly|almost|approximately|some|more\sthan|at\sleast)\s)?"
                       r"(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?:\s(?:million|billion|thousand|hundred))?\s([a-z]+)\b")
ALIAS_RE = re.compile(r"\b(?:also known as|also called|commonly called|commonly known as|better known as|"
                      r"often referred to as|or simply)\s+(?:the\s+)?([^,.;:()]+)")
DEF_RE = re.compile(r"^(?:The |A |An )?(.+?)\s+(is|was|are|were)\s+(?:a|an|the)\s+([^,.;:()]+)")
NAME_WORD = r"(?:[A-ZÀ-Þ][^\W\d_]+(?:['’\-][^\W\d_]+)*|[A-Z]\.|[IVX]{1,4}\b)"
NAME_RE = re.compile(rf"(?<![\w\-'’]){NAME_WORD}(?:\s+(?:(?:de|da|del|van|von|der|la|le|of|ibn)\s+)?{NAME_WORD}){{0,3}}")
PRONOUN_RE = re.compile(r"^(It|He|She|They)\b")
PERSON_CUES = {"author", "writer", "poet", "novelist", "painter", "artist", "composer", "director", "king",
               "queen", "emperor", "president", "general", "singer", "philosopher", "scientist", "naturalist",
               "physicist", "leader", "founder", "architect", "explorer", "mathematician", "chemist",
               "actor", "actress", "producer", "politician", "biographer", "pope", "saint", "prince"}
PERSON_NOUNS = PERSON_CUES | {"engineer", "monarch", "teacher", "golfer", "player", "diplomat", "historian",
                              "theologian", "astronomer", "inventor", "economist", "sculptor", "dancer",
                              "filmmaker", "cosmonaut", "astronaut", "soldier", "statesman", "lawyer",
                              "journalist", "musician", "rapper", "businessman", "entrepreneur", "polymath"}
STOP_AFTER = re.compile(r"\s+(?:that|which|who|whose|where|when|in|of|from|by|used|with|for|to|and|on|at|"
                        r"as|located|made|found|known|consisting|composed|based|developed|produced)\b.*$")


NOT_COUNTED = {"and", "or", "to", "the", "of", "in", "on", "at", "by", "for", "with", "from", "as", "is", "was",
               "were", "are", "be", "that", "which", "who", "than", "a", "an", "per", "bc", "ad", "bce", "ce"}
COMMON_CAPITALS = {"The", "This", "These", "Those", "There", "Their", "However", "Although", "After", "Before",
                   "During", "Since", "While", "When", "Many", "Most", "Some", "Other", "Both", "Each", "Its",
                   "His", "Her", "They", "Today", "English", "According"}


def clean_title(title: str) -> str:
    """"Club (weapon)" -> "Club"; "Robert Baden-Powell, 1st Baron Baden-Powell" -> "Robert Baden-Powell"."""
    return re.sub(r"\s*\([^)]*\)$", "", title).split(", ")[0].strip()


def _subject(sentence: str, title: str) -> str:
    """A leading It/He/She/They becomes the title, so the question says what it is about."""
    if title and PRONOUN_RE.match(sentence):
        return PRONOUN_RE.sub(title.replace("\\", ""), sentence, count=1)
    return sentence


def _as_question(sentence: str, start: int, end: int, wh: str, title: str) -> str:
    q = sentence[:start] + wh + sentence[end:]
    q = _subject(q.strip().rstrip(".;:!"), title)
    return q[0].upper() + q[1:] + "?"


def _words(text: str) -> int:
    return len(text.split())


def _rule_definition(sentences: list[str], title: str) -> Iterable[QAPair]:
    if not sentences or not title:
        return
    m = DEF_RE.match(sentences[0])
    if not m:
        return
    answer = STOP_AFTER.sub("", m.group(3)).strip()
    if not answer or _words(answer) > 5:
        return
    who = answer.split()[-1].lower() in PERSON_NOUNS
    verb = "is" if m.group(2) in ("is", "are") else "was"
    yield QAPair(f"{'Who' if who else 'What'} {verb} {title}?", answer, "definition")


def _rule_alias(sentences: list[str], title: str) -> Iterable[QAPair]:
    if not title:
        return
    for s in sentences[:3]:
        for m in ALIAS_RE.finditer(s):
            answer = m.group(1).strip().strip("\"'“”")
            answer = re.split(r"\s+(?:or|and)\s+", answer)[0].strip()
            if 0 < _words(answer) <= 5 and answer.lower() != title.lower():
                yield QAPair(f"What is {title} also known as?", answer, "alias")


def _rule_cloze(sentences: list[str], title: str) -> Iterable[QAPair]:
    for s in sentences:
        if _words(s) < 5 or _words(s) > 45:
            continue
        date_spans = [m.span() for m in DATE_RE.finditer(s)]
        for m in DATE_RE.finditer(s):
            yield QAPair(_as_question(s, m.start(), m.end(), "what date", title), m.group(0), "date")
        for m in YEAR_RE.finditer(s):
            if any(a <= m.start(1) < b for a, b in date_spans):
                continue
            yield QAPair(_as_question(s, m.start(1), m.end(1), "what year", title), m.group(1), "year")
        for m in NUMBER_RE.finditer(s):
            number, noun = m.group(1), m.group(2)
            if re.fullmatch(r"1[0-9]{3}|20[0-2][0-9]", number) or any(a <= m.start(1) < b for a, b in date_spans):
                continue  # years and dates have their own rules
            if noun in NOT_COUNTED:
                continue
            start = m.start()
            q = _as_question(s, start, m.end(), f"how many {noun}", title)
            yield QAPair(q, number, "number")
        for m in NAME_RE.finditer(s):
            if m.start() == 0 or s[m.start() - 2:m.start()] in (". ",):
                continue  # a capital at the sentence start is no evidence of a name
            span = m.group(0)
            if " " not in span and (len(span) < 4 or span.isupper() or span in COMMON_CAPITALS):
                continue  # one short or all-caps word is too often not a name
            if title and (span.lower() in title.lower() or title.lower() in span.lower()):
                continue
            before = s[:m.start()].split()
            prev = before[-1].lower().strip(",") if before else ""
            wh = "whom" if prev == "by" else "who" if prev in PERSON_CUES else "what"
            yield QAPair(_as_question(s, m.start(), m.end(), wh, title), span, "name")


def candidate_pairs(doc: SynthDoc, max_answer_char: int = 1000) -> list[QAPair]:
    """All rule QA pairs of a document that pass the verbatim check, deduplicated."""
    sentences = split_sentences(doc.text)
    title = clean_title(doc.title)
    seen, out = set(), []
    for pair in (*_rule_definition(sentences, title), *_rule_alias(sentences, title),
                 *_rule_cloze(sentences, title)):
        if not verbatim_ok(pair, doc.text, max_answer_char):
            continue
        key = (pair.question, pair.answer)
        if key not in seen:
            seen.add(key)
            out.append(pair)
    return out


def verbatim_ok(pair: QAPair, text: str, max_answer_char: int = 1000) -> bool:
    """The answer occurs verbatim (early enough to survive truncation) and the question does not
    already contain it; the question is a plausible length."""
    pos = text.find(pair.answer)
    if pos < 0 or pos + len(pair.answer) > max_answer_char:
        return False
    ans, q = normalize_answer(pair.answer), normalize_answer(pair.question)
    if not ans or re.search(rf"(?<!\w){re.escape(ans)}(?!\w)", q):
        return False
    return 3 <= _words(pair.question) <= 50 and _words(pair.answer) <= 8


def choose_pairs(pairs: list[QAPair], n: int, rng: random.Random) -> list[QAPair]:
    """Up to n pairs, spread over rules (round robin over a seeded shuffle)."""
    by_rule: dict[str, list[QAPair]] = {}
    for p in pairs:
        by_rule.setdefault(p.rule, []).append(p)
    for group in by_rule.values():
        rng.shuffle(group)
    rules = sorted(by_rule)
    rng.shuffle(rules)
    out: list[QAPair] = []
    while len(out) < n and any(by_rule.values()):
        for r in rules:
            if by_rule[r] and len(out) < n:
                out.append(by_rule[r].pop(0))
    return out


# ---------------------------------------------------------------------------------------------
# the job


def _doc_rng(seed: int, doc: SynthDoc) -> random.Random:
    """One generator per document: a document's data does not depend on which others are chosen."""
    return random.Random(f"{seed}\0{doc.doc_id}\0{doc.text[:64]}")


def _negatives(ranked: Sequence[int], pool: list[SynthDoc], positive: int, answer: str, n: int,
               rng: random.Random) -> list[int]:
    """The best-ranked documents that are not the positive and do not contain the answer (a
    document containing it may answer the question: not a safe negative); seeded fill if short."""
    ans = normalize_answer(answer)
    out, seen = [], {positive}
    for i in ranked:
        if len(out) >= n:
            break
        if i in seen or pool[i].text == pool[positive].text or ans in normalize_answer(pool[i].text):
            continue
        seen.add(i)
        out.append(i)
    tries = 0
    while len(out) < n and tries < 50 * n and len(pool) > 1:
        i = rng.randrange(len(pool))
        tries += 1
        if i not in seen and ans not in normalize_answer(pool[i].text):
            seen.add(i)
            out.append(i)
    return out


def _with_positive(positive: str, negatives: list[str], rng: random.Random) -> tuple[list[str], int]:
    pos = rng.randrange(len(negatives) + 1)
    return negatives[:pos] + [positive] + negatives[pos:], pos


def synthesize(docs: Sequence[SynthDoc], out_dir: str | Path, config: SynthConfig | None = None,
               source: str = "", guard: HeldOutGuard | None = None, model=None,
               progress: bool = True) -> SynthReport:
    """Writes pretrain.jsonl, instruct.jsonl, e2e.jsonl and synth.json into out_dir."""
    from .retrievers import BM25Retriever

    cfg = config or SynthConfig()
    guard = guard or HeldOutGuard()
    # A document is held out as a whole: one chunk of it caught by the guard blocks all its chunks
    # (a chunk cut mid-sentence may carry no complete held-out sentence of its own).
    blocked = {d.doc_id for d in docs if guard.blocks(d)}
    pool = [d for d in docs if d.text.strip() and d.doc_id not in blocked]
    skipped = len(docs) - len(pool)
    if not pool:
        raise ClaraError("no usable (non-held-out) documents to synthesize from")
    chosen = list(range(len(pool)))
    if cfg.limit is not None and cfg.limit < len(pool):
        chosen = sorted(random.Random(cfg.seed).sample(chosen, cfg.limit))

    reader = None
    if cfg.filter_model:
        if model is None:
            raise UsageError("the model filter needs a model")
        from .evaluate import TextRAG

        reader = TextRAG(model)

    pretrain, qa_for_retrieval = [], []  # (doc index, pair) for instruct / e2e
    rules: Counter = Counter()
    filtered = 0
    bar = progress_bar(total=len(chosen), desc="synth", unit="doc", enabled=progress)
    for i in chosen:
        doc = pool[i]
        rng = _doc_rng(cfg.seed, doc)
        pairs = choose_pairs(candidate_pairs(doc, cfg.max_answer_char), cfg.max_qa, rng)
        if reader is not None:
            from .metrics import cover_em

            kept = [p for p in pairs if cover_em(reader.generate(p.question, [doc.text], 32).text, p.answer)]
            filtered += len(pairs) - len(kept)
            pairs = kept
        if pairs:
            pretrain.append({"data_type": "qa", "question": [p.question for p in pairs],
                             "answers": [p.answer for p in pairs], "docs": [doc.text]})
            rules.update(p.rule for p in pairs)
            n_retrieval = max(cfg.instruct_per_doc, cfg.e2e_per_doc)
            qa_for_retrieval += [(i, p, j) for j, p in enumerate(pairs[:n_retrieval])]
        pretrain.append({"data_type": "paraphrase", "question": [""], "answers": [doc.text], "docs": [doc.text]})
        bar.update(1)
    bar.close()

    instruct, e2e = [], []
    if qa_for_retrieval:
        bm25 = BM25Retriever([d.text for d in pool])
        depth = min(len(pool), max(cfg.top_k, cfg.candidates) + 30)
        ranked_all = bm25.search([p.question for _, p, _ in qa_for_retrieval], depth)
        for (i, pair, j), ranked in zip(qa_for_retrieval, ranked_all, strict=True):
            doc = pool[i]
            rng = random.Random(f"{cfg.seed}\0{doc.doc_id}\0{pair.question}")
            order = [r for r, _ in ranked]
            if j < cfg.instruct_per_doc and cfg.top_k >= 1:
                neg = _negatives(order, pool, i, pair.answer, cfg.top_k - 1, rng)
                texts, pos = _with_positive(doc.text, [pool[n].text for n in neg], rng)
                instruct.append({"question": pair.question, "docs": texts, "answer": pair.answer,
                                 "pos_index": [pos]})
            if j < cfg.e2e_per_doc and cfg.candidates >= 1:
                neg = _negatives(order, pool, i, pair.answer, cfg.candidates - 1, rng)
                texts, pos = _with_positive(doc.text, [pool[n].text for n in neg], rng)
                e2e.append({"question": pair.question, "docs": texts, "answer": pair.answer, "pos_index": [pos]})

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, records in (("pretrain.jsonl", pretrain), ("instruct.jsonl", instruct), ("e2e.jsonl", e2e)):
        files.append(_write_jsonl(out / name, records))
    report = SynthReport(out=str(out), source=source, seed=cfg.seed, documents=len(chosen),
                         held_out_skipped=skipped, qa_pairs=sum(rules.values()), rules=dict(sorted(rules.items())),
                         pretrain=len(pretrain), instruct=len(instruct), e2e=len(e2e),
                         filtered_by_model=filtered, files=[str(f) for f in files])
    meta = {**report.to_dict(), "config": asdict(cfg)}
    files.append(_write_jsonl(out / "synth.json", [meta], indent=2))
    report.files = [str(f) for f in files]
    if not instruct:
        notice("no QA pair passed the rules: only reconstruction targets were written")
    return report


def _write_jsonl(path: Path, records: list[dict], indent: int | None = None) -> Path:
    """Write to a temporary file and rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, indent=indent) + "\n")
    os.replace(tmp, path)
    return path
