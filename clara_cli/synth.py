"""`clara synth`: training data for the three CLaRa stages from a corpus that has no QA.

The paper's salient-compressor QA came from a large LLM. Offline, on a CPU, we build it from
rules whose answers are verbatim spans of the document (so every target is grounded):

  definition  "X is a Y ..."             -> "What is X?"                  answer Y
  alias       "X, also known as Y, ..."  -> "What is X also known as?"    answer Y
  date        "... on 16 June 1963."     -> "... on what date?"           answer 16 June 1963
  year        "... completed in 1825."   -> "... completed in what year?" answer 1825
  number      "... over 700 species"     -> "... how many species ...?"   answer 700
  name        "... by author Bram Stoker" -> "... by whom?"               answer Bram Stoker

Natural rules ask as a person would, wh-word first, of sentences whose subject is the title:

  who-made  "... novel by the English author Emily Brontë" -> "Who wrote Wuthering Heights?"
  when      "It was completed in 1825."                  -> "When was the Erie Canal completed?"
  where     "... is a waterfall in Venezuela"            -> "Where is Angel Falls?"
  reverse   "... is the second-longest river in Africa"  -> "What is the second-longest river in Africa?"
  how-many  "It has over 4,000 islands"                  -> "How many islands does the Congo River have?"
  measure   "... a population of 5.3 million"            -> "What is the population of Ankara?"

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
    questions: str = "all"  # "natural" (NATURAL_RULES only), "cloze" (the others), "written" or "all"
    written: str | None = None  # a file of questions people wrote about the documents (written_pairs)


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
    written_unmatched: int = 0  # written questions whose title names no usable document
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
DATE = rf"(?:\d{{1,2}}\s(?:{MONTHS})\s\d{{3,4}}|(?:{MONTHS})\s\d{{1,2}},\s\d{{3,4}})"
DATE_RE = re.compile(rf"\b{DATE}\b")
YEAR = r"(?:1[0-9]{3}|20[0-2][0-9])"
YEAR_RE = re.compile(rf"\b(?:in|since|until|from|by|of|on|around|circa|c\.)\s({YEAR})\b(?![,.]?\d)")
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


# ---------------------------------------------------------------------------------------------
# natural questions: wh-word first, naming the subject, as a person asks without the text
#
# The cloze rules above keep the document's sentence ("Erie Canal was completed in what year?");
# people ask "When was the Erie Canal completed?", "Who wrote Dracula?", "Where is Angel Falls?"
# or, in the reverse direction, "What is the longest river in Africa?" (the answer is the subject).
# A generator trained on cloze questions alone answers natural ones with the wrong type of
# answer (docs/TRAINING.md, "The long run goes on"), so these rules write the natural forms.
# They read only sentences whose subject is the document's title (or It/He/She/They for it).

YEAR_OR_DATE = rf"(?:{DATE}|{YEAR})"
PARTICIPLE = r"[a-z]+(?:ed|en|wn|ilt|ung|ght|ade|ld|nt)"
PAST_OF = {"written": "wrote", "drawn": "drew", "sung": "sang", "built": "built", "made": "made",
           "founded": "founded", "directed": "directed", "painted": "painted", "composed": "composed",
           "designed": "designed", "discovered": "discovered", "invented": "invented",
           "created": "created", "developed": "developed", "produced": "produced",
           "published": "published", "established": "established", "sculpted": "sculpted",
           "illustrated": "illustrated", "commissioned": "commissioned", "led": "led"}
WORK_VERB = {"novel": "wrote", "novella": "wrote", "book": "wrote", "play": "wrote", "poem": "wrote",
             "story": "wrote", "tragedy": "wrote", "comedy": "wrote", "film": "directed", "movie": "directed",
             "painting": "painted", "portrait": "painted", "opera": "composed", "symphony": "composed",
             "concerto": "composed", "ballet": "composed", "oratorio": "composed", "sculpture": "sculpted",
             "statue": "sculpted"}
PLACE_LEAD = re.compile(r"\b(?:in|on|located in|situated in)\s+(?:the\s+)?(?:(?:north|south|east|west|central|"
                        r"northern|southern|eastern|western|north-?eastern|north-?western|south-?eastern|"
                        r"south-?western|upstate|coastal)\s+)?(?=[A-Z])")
LIFESPAN_RE = re.compile(rf"(?:^\s*\(|;\s*|,\s*)(?:c\.\s*|born\s+)?({YEAR_OR_DATE})\s*(?:[–-]\s*(?:c\.\s*)?"
                         rf"({YEAR_OR_DATE}))?\s*\)$")
WHO_WORDS = PERSON_NOUNS | {"person", "man", "woman", "men", "women", "people", "child", "son", "daughter",
                            "wife", "husband", "father", "mother", "minister", "sultan", "ruler", "chancellor",
                            "governor", "mayor", "pharaoh", "khan", "chief", "member", "pianist", "guitarist",
                            "singer-songwriter", "comedian", "playwright", "dramatist", "screenwriter", "lyricist",
                            "songwriter", "athlete", "footballer", "physician"}
NAME_FOLLOWERS = {"and", "or", "in", "on", "at", "from", "with", "who", "which", "as", "for", "to", "was", "is",
                  "were", "are", "of", "after", "during", "between", "since", "until", "by", "near", "under"}
PREPOSITIONS = {"of", "in", "by", "for", "to", "from", "on", "at", "among", "within", "with", "after", "between",
                "into", "about", "as", "than", "that"}
_CLAUSE_END = re.compile(r"\s*(?:[,;:.(]|\s(?:which|who|whose|that|where|while|although)\s)")
KNOWN_AS = (r"(?:(?:also|commonly|better|more\s+popularly|popularly|usually|most\s+widely|widely)\s+)?"
            r"known\s+(?:in\s+English\s+)?as")
NATIONALITY_RE = re.compile(r"^(?:an?|the)\s+(?:[a-z][\w-]*\s+){0,2}?([A-Z][a-z]+(?:an|ese|ish|ch|ek|ic|i))\s+[a-z]")
NOT_NATIONALITY = {"Christian", "Catholic", "Anglican", "Lutheran", "Republican", "Democratic", "Jewish", "Islamic",
                   "Olympic", "Gothic", "Romantic", "Victorian", "Edwardian", "Elizabethan", "Jacobean", "Puritan",
                   "Presbyterian", "Episcopalian", "Sufi", "Sunni", "Hasidic", "Franciscan", "Dominican", "Augustinian",
                   "Confucian", "Stoic", "Cynic", "Platonic", "Epicurean", "Pythagorean", "Keynesian", "Marxian",
                   "Carolingian", "Merovingian", "Olympian", "Vedic", "Hellenistic", "Classic", "Academic", "Baroque",
                   "Arabic", "Socratic", "Shi", "Nazi", "Sultan", "Khan", "Titan"}
OFFICES = {"king", "queen", "emperor", "empress", "president", "minister", "chancellor", "governor", "chairman",
           "secretary", "viceroy", "mayor", "pope", "sultan", "shah", "tsar", "caliph", "premier", "speaker",
           "archbishop", "bishop", "ambassador", "editor", "director", "commander", "leader", "chief", "head",
           "general", "admiral", "consul", "doge", "regent", "khan", "pharaoh", "ruler", "staff", "judge", "justice"}
ROLE = r"(?P<role>(?!(?:also|later|then)\s)(?:the\s+)?(?:[\w'’-]+\s+){0,5}?of\s+(?:the\s+)?[A-Z][\w'’-]*(?:\s+(?:of\s+)?[A-Z][\w'’-]*)*)"
SERVED_RE = re.compile(rf"^(?:served\s+as\s+)?{ROLE}\s+from\s+(?P<start>{YEAR})\s+to\s+(?P<end>{YEAR})\b")
WHO_SERVED_RE = re.compile(rf"\b(?P<who>[a-z]+)\s+who\s+served\s+as\s+{ROLE}\s+from\s+(?P<start>{YEAR})\s+to\s+"
                           rf"(?P<end>{YEAR})\b")
CAPITAL_RE = re.compile(r"(?:^|,\s+(?:and\s+)?)(?:Its|its|The|the)\s+(capital|largest\s+city|official\s+language|"
                        r"currency|national\s+language)(?:,?\s+and\s+(largest|most\s+populous)\s+(city|settlement))?"
                        r"\s+(?:is|was)\s+(?:the\s+)?")
CAPITAL_OF_RE = re.compile(r"^the\s+capital(?:\s+city)?(?:,?\s+(?:and\s+)?(?:the\s+)?(?:largest|most\s+populous)\s+"
                           r"city)?\s+of\s+(?:the\s+)?")
FAMILY_RE = re.compile(r"^(?:an?|the)\s+(?:[\w-]+\s+){0,4}?(?:genus|species)\b[^.;()]*?\bin\s+the\s+family\s+"
                       r"([A-Z][a-z]+)\b")


def _title_subject(sentence: str, title: str, the_title: str | None = None) -> tuple[str, str, str, str] | None:
    """(subject as the question says it, its parenthesis, aux, the rest after the aux) when the
    sentence is about the title: "The Erie Canal (...), a waterway, is a ..." or "It was ..."."""
    m = PRONOUN_RE.match(sentence)
    full = None
    if m:
        subject = title if the_title is None else the_title
    else:
        m = re.match(rf"^(?:(?:The|the)\s+)?{re.escape(title)}\b", sentence, re.IGNORECASE)
        if m:
            subject = m.group(0)
            subject = "the" + subject[3:] if subject.startswith("The ") else subject
        else:
            m = full = _full_name(sentence, title)
            if not m:
                return None
            subject = title
    rest = sentence[m.end():]
    paren = re.match(r"^\s*\((?:[^()]|\([^()]*\))*\)", rest)
    parenthesis = paren.group(0) if paren else ""
    rest = rest[len(parenthesis):]
    rest = re.sub(r"^,\s*[^,;]{1,80}?,(?=\s)", "", rest)  # an apposition: ", or simply the Tower of Pisa,"
    aux = re.match(r"^\s+(is|was|are|were)\s+", rest)
    if full:
        if not (aux and _about_person(rest[aux.end():])):
            return None  # a full name stands for the title only in a biography's lead
    if not aux:
        return subject, parenthesis, "", rest.strip()
    return subject, parenthesis, aux.group(1), rest[aux.end():].rstrip(" .;:!")


def _about_person(rest: str) -> bool:
    """The predicate names a person within its first eight words: "... was a French poet and ..."."""
    return any(w.strip(",.;") in WHO_WORDS for w in rest.split()[:8])


def _full_name(sentence: str, title: str) -> re.Match | None:
    """A biography's lead names its subject in full, not as the title: "Jean Nicolas Arthur
    Rimbaud was ..." (group 1 holds the first and last words of "Arthur Rimbaud") or "Salah ad-Din
    Yusuf ibn Ayyub, commonly known as Saladin, was ..."; the caller checks it is a person."""
    known = re.match(rf"^((?:Sir\s+)?[A-ZÀ-Þ][^,;()]{{2,60}}?),\s+{KNOWN_AS}\s+{re.escape(title)},", sentence)
    if known:
        return known
    m = re.match(rf"^(?:Sir\s+)?({NAME_RE.pattern})", sentence)
    words = title.split()
    if not m or m.group(1) == title or not words:
        return None
    name = m.group(1).split()
    if words[0] in name and words[-1] in name and name.index(words[0]) <= name.index(words[-1]):
        return m
    return None


def _name_at(text: str, start: int) -> str | None:
    m = NAME_RE.match(text, start)
    if not m or m.group(0) in COMMON_CAPITALS:
        return None
    after = re.match(r"\s+([a-z][\w-]*)", text[m.end():])
    if after and after.group(1) not in NAME_FOLLOWERS:
        return None  # "American playwright Arthur Miller": an adjective, not the name
    return m.group(0)


def _after_role(text: str, start: int) -> int:
    """Past "the Irish author " in "by the Irish author Bram Stoker": where the name starts."""
    for words in range(4):
        m = re.match(rf"(?:(?:the|his|her|their)\s+)?(?:[\w'’-]+\s+){{{words}}}(\w+)\s+", text[start:])
        if m and m.group(1).lower() in WHO_WORDS:
            return start + m.end()
    m = re.match(r"(?:the|his|her|their)\s+", text[start:])
    return start + m.end() if m else start


def _clause(text: str) -> str:
    m = _CLAUSE_END.search(text)
    return text[:m.start()] if m else text


def _rule_natural(sentences: list[str], title: str) -> Iterable[QAPair]:
    """Natural questions from the first sentences whose subject is the title, and the
    measures (population, height, length) of the first sentences, asked of the title."""
    if not title or not sentences:
        return
    lead = _title_subject(sentences[0], title)
    the_title = lead[0] if lead else None  # "the Erie Canal" for a later "It"
    lead_person = bool(lead) and _about_person(lead[3])
    for n, s in enumerate(sentences[:6]):
        found = _title_subject(s, title, the_title)
        if not found:
            continue
        subject, parenthesis, aux, rest = found
        person = lead_person or bool(re.match(r"^(?:He|She)\b", s))
        yield from _natural_from(subject, parenthesis, aux, rest, first=n == 0, person=person)
    yield from _measures(sentences[:4], the_title or title)
    if lead:
        yield from _names(sentences[0], title, lead)
        yield from _capital(sentences[:6], lead[0])


def _names(sentence: str, title: str, lead: tuple[str, str, str, str]) -> Iterable[QAPair]:
    """The lead's other names for its subject: "Checkers, also known as draughts, is ..." ->
    "What is another name for Checkers?"; a biography's full name -> "What is the full name of X?"."""
    subject, _, aux, rest = lead
    full = _full_name(sentence, title)
    if full and aux and _about_person(rest) and " or " not in full.group(1):
        yield QAPair(f"What {aux} the full name of {subject}?", full.group(1).strip(), "full-name")
    m = re.match(rf"^(?:(?:The|the)\s+)?{re.escape(title)}(?:\s*\([^()]*\))?,\s+", sentence, re.IGNORECASE)
    alias = ALIAS_RE.match(sentence, m.end()) if m else None
    if alias and not alias.group(0).startswith("or simply"):
        answer = re.split(r"\s+(?:or|and)\s+", alias.group(1).strip().strip("\"'“”"))[0].strip()
        answer = re.sub(r"\s+(?:in|among|by|during|after|for|from|within)\s.*$", "", answer)  # "... in some countries"
        if " " not in answer and re.search(r"\sthe\s+$", alias.group(0)[:-len(alias.group(1))]):
            return  # "also called the Fair": an epithet, the "the" belongs to it
        common = alias.group(0).startswith("commonly")
        if 0 < _words(answer) <= 5 and answer.lower() != title.lower():
            question = f"What is the common name for {subject}?" if common else f"What is another name for {subject}?"
            yield QAPair(question, answer, "also-called")


def _capital(sentences: list[str], subject: str) -> Iterable[QAPair]:
    """"Its capital and largest city is Riga" in a paragraph about Latvia -> "What is the capital
    of Latvia?" and "What is the largest city of Latvia?"."""
    for s in sentences:
        for m in CAPITAL_RE.finditer(s):
            name = _name_at(s, m.end())
            if not name:
                continue
            what = " ".join(m.group(1).split())
            yield QAPair(f"What is the {what} of {subject}?", name, "capital")
            if m.group(2):
                yield QAPair(f"What is the {' '.join(m.group(2).split())} {m.group(3)} of {subject}?", name, "capital")


def _natural_from(subject: str, parenthesis: str, aux: str, rest: str, first: bool,
                  person: bool = False) -> Iterable[QAPair]:
    """The natural pairs of one sentence, split by _title_subject; `first`: the lead sentence,
    the only one whose "in X" says where the subject is; `person`: "He", "She" or a biography's title."""
    is_person = _about_person(rest.lower())  # lower case: these rules also count "King", "Pharaoh"
    life = LIFESPAN_RE.search(parenthesis.strip()) if parenthesis else None
    if life and is_person:
        yield QAPair(f"When was {subject} born?", life.group(1), "when-born")
        if life.group(2):
            yield QAPair(f"When did {subject} die?", life.group(2), "when-died")
    # "It has 36 locks" -> "How many locks does the Erie Canal have?"
    has = re.search(r"\b(has|have|had)\s+(?:over\s+|about\s+|around\s+|nearly\s+|more\s+than\s+|"
                    r"approximately\s+|some\s+)?(\d{1,3}(?:,\d{3})+|\d+)\s+(?:[a-z-]+\s+)?([a-z]+s)\b", rest)
    if has and has.group(3) not in NOT_COUNTED:
        verb = {"has": "does", "have": "do"}.get(has.group(1), "did")
        yield QAPair(f"How many {has.group(3)} {verb} {subject} have?", has.group(2), "how-many")
    if not aux:
        return
    # "... novel from 1897 by the Irish author Bram Stoker" -> "Who wrote Dracula?"
    work = re.match(r"^(?:an?|the)\s+(?:[\w'’-]+\s+){0,5}?(" + "|".join(WORK_VERB) + r")\b([^,;]*?)\bby\s+", rest)
    if work:
        name = _name_at(rest, _after_role(rest, work.end()))
        if name:
            yield QAPair(f"Who {WORK_VERB[work.group(1)]} {subject}?", name, "who-made")
    # "... was written by Bram Stoker" -> "Who wrote ...?"; "... was completed in 1825" -> "When was ... completed?"
    passive = re.match(rf"^(?:(?:first|originally|initially|later|also|largely|mainly)\s+)?({PARTICIPLE})\b", rest)
    if passive:
        part, tail = passive.group(1), rest[passive.end():]
        by = re.match(r"^\s+by\s+", tail)
        name = _name_at(tail, _after_role(tail, by.end())) if by else None
        if name and part in PAST_OF:
            yield QAPair(f"Who {PAST_OF[part]} {subject}?", name, "who-made")
        when = re.match(rf"^\s+(?:[a-z]+\s+){{0,3}}?(?:in|on)\s+({YEAR_OR_DATE})\b(?![,.]?\d)", tail)
        if when:
            yield QAPair(f"When {aux} {subject} {part}?", when.group(1), "when")
            # "It was discovered in 1863 by Ferdinand Reich" -> "Who discovered Indium?"
            later = re.match(r"^,?\s+by\s+", tail[when.end():])
            name = _name_at(tail, _after_role(tail, when.end() + later.end())) if later and not by else None
            cut = name and re.match(rf"^.*?{re.escape(name)}\s*&", tail[when.end():])  # "Secker & Warburg"
            if name and part in PAST_OF and not cut:
                yield QAPair(f"Who {PAST_OF[part]} {subject}?", name, "who-made")
        where = PLACE_LEAD.match(tail, len(tail) - len(tail.lstrip()))
        if where and not when:
            name = _name_at(tail, where.end())
            if name:
                yield QAPair(f"Where {aux} {subject} {part}?", name, "where")
    born = re.match(rf"^born\s+(?:on\s+|in\s+)?({YEAR_OR_DATE})\b", rest)
    if born:
        yield QAPair(f"When {aux} {subject} born?", born.group(1), "when-born")
    # "... was born in Ulm, in the Kingdom of Württemberg" -> "Where was Albert Einstein born?"
    born = re.match(rf"^born\s+(?:(?:on|in)\s+{YEAR_OR_DATE}\s+)?(?:in|at)\s+(?:the\s+)?(?=[A-Z])", rest)
    name = _name_at(rest, born.end()) if born and (is_person or person) else None
    if name and not name.startswith("House"):  # "born in the House of Drăculești": a family, not a place
        yield QAPair(f"Where {aux} {subject} born?", name, "where-born")
    yield from _roles(subject, aux, rest, is_person)
    # "Kigali is the capital of Rwanda" -> "What is Kigali the capital of?"
    capital = CAPITAL_OF_RE.match(rest) if aux in ("is", "was") else None
    name = _name_at(rest, capital.end()) if capital else None
    if name:
        yield QAPair(f"What {aux} {subject} the capital of?", name, "capital")
    # "Taraxacum is a genus of flowering plants in the family Asteraceae" -> "Which family does ... belong to?"
    family = FAMILY_RE.match(rest)
    if family and aux:
        does = "does" if aux in ("is", "was") else "do"
        yield QAPair(f"Which family {does} {subject} belong to?", family.group(1), "family")
    # "Angel Falls is a waterfall in Venezuela" -> "Where is Angel Falls?"
    if aux in ("is", "are") and re.match(r"^(?:an?|the)\s", rest) and not is_person:
        clause = _clause(rest) if first else ""
        where = PLACE_LEAD.search(clause)
        name = _name_at(clause, where.end()) if where else None
        if name:
            yield QAPair(f"Where {aux} {subject}?", name, "where")
    # "The Congo River is the second-longest river in Africa" -> "What is the second-longest river in Africa?"
    the = re.match(r"^the\s+", rest)
    if the:
        clause = _clause(rest)
        words = clause.split()
        superlative = re.search(r"\b(?:first|last|only|\w+est|most|least)\b", clause)
        specific = superlative or re.search(r"\b(?:of|in|to|for|by)\b", clause)
        last = words[-1].lower() if words else ""
        cut_short = last[-1:].isdigit() or last in PREPOSITIONS or last.endswith("ing")  # "... by means of submitting"
        if ((len(words) >= 5 or superlative) and len(words) <= 14 and specific and not cut_short
                and not re.search(r"\b(?:it|its|he|his|she|her|they|their)\b", clause)):
            head = next((i for i, w in enumerate(words[1:], 1) if w.lower() in PREPOSITIONS), len(words))
            wh = "Who" if words[head - 1].lower().strip(",") in WHO_WORDS else "What"
            answer = subject[4:] if subject.startswith("the ") else subject
            yield QAPair(f"{wh} {aux} {clause}?", answer, "reverse")


def _roles(subject: str, aux: str, rest: str, is_person: bool) -> Iterable[QAPair]:
    """Nationality and offices of a person: "... was a French poet" -> "What nationality was
    Arthur Rimbaud?"; "... who served as Prime Minister of Japan from 1941 to 1944" -> "When did
    Hideki Tojo become Prime Minister of Japan?" and "Who served as ... from 1941 to 1944?"."""
    if not is_person:
        return
    nation = NATIONALITY_RE.match(rest) if aux in ("is", "was") else None  # not of a people: "the Goths"
    if nation and nation.group(1) not in NOT_NATIONALITY:
        yield QAPair(f"What nationality {aux} {subject}?", nation.group(1), "nationality")
    served = SERVED_RE.match(rest) if aux in ("", "was") else None
    if not served and aux:  # "a statesman who served as ...": the "who" is the subject
        served = WHO_SERVED_RE.search(rest)
        served = served if served and served.group("who") in WHO_WORDS else None
    if not served or served.group("role").split(" of ")[0].split()[-1].lower() not in OFFICES:
        return
    role, start, end = served.group("role", "start", "end")
    yield QAPair(f"When did {subject} become {role}?", start, "served")
    if "served" in served.group(0) or aux == "was":
        verb = "served as" if "served" in served.group(0) else "was"
        answer = subject[4:] if subject.startswith("the ") else subject
        yield QAPair(f"Who {verb} {role} from {start} to {end}?", answer, "served")


def _measures(sentences: list[str], subject: str) -> Iterable[QAPair]:
    """Population, height and length anywhere in `sentences`, asked of `subject`."""
    unit = r"(?:m|metres|meters|feet|ft|km|kilometres|kilometers|mi|miles)"
    for s in sentences:
        m = re.search(r"\bpopulation\s+of\s+(?:over\s+|about\s+|around\s+|approximately\s+|nearly\s+|more\s+than\s+)?"
                      r"(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?(?:\s(?:million|billion))?)", s)
        if m:
            yield QAPair(f"What is the population of {subject}?", m.group(1), "measure")
        m = re.search(rf"\b(\d{{1,3}}(?:,\d{{3}})+|\d+(?:\.\d+)?)\s?({unit})\b(?:\s*\([^)]*\))?\s+"
                      r"(tall|high|long|deep|wide)\b", s)
        m = m or re.search(rf"\b(height|length|depth)\s+of\s+(?:about\s+|around\s+|over\s+)?(\d{{1,3}}(?:,\d{{3}})+|"
                           rf"\d+(?:\.\d+)?)\s?({unit})\b", s)
        if m:
            if m.group(1) in ("height", "length", "depth"):
                adj = {"height": "tall", "length": "long", "depth": "deep"}[m.group(1)]
                answer = f"{m.group(2)} {m.group(3)}" if f"{m.group(2)} {m.group(3)}" in s else m.group(2)
            else:
                adj = "tall" if m.group(3) == "high" else m.group(3)
                answer = f"{m.group(1)} {m.group(2)}" if f"{m.group(1)} {m.group(2)}" in s else m.group(1)
            yield QAPair(f"How {adj} is {subject}?", answer, "measure")


# "written": questions people wrote about the document (`--written`), natural by nature.
NATURAL_RULES = frozenset({"who-made", "when", "when-born", "when-died", "where", "reverse", "how-many", "measure",
                           "where-born", "nationality", "full-name", "also-called", "capital", "served", "family",
                           "written"})
QUESTION_STYLES = ("all", "natural", "cloze", "written")


def written_pairs(path: str | Path) -> dict[str, list[QAPair]]:
    """Questions written by people about the corpus, in `clara eval`'s question format, each naming
    its document's title first in `gold_titles`; keyed by the casefolded title. The first answer is
    the target (it must occur verbatim in the document, as every rule's answer)."""
    from .evaluate import load_questions

    out: dict[str, list[QAPair]] = {}
    for n, q in enumerate(load_questions(path), 1):
        if not q.gold_titles:
            raise UsageError(f"{path}: question {n} names no document (\"gold_titles\")")
        out.setdefault(q.gold_titles[0].casefold(), []).append(QAPair(q.question, q.answers[0], "written"))
    return out


def candidate_pairs(doc: SynthDoc, max_answer_char: int = 1000, questions: str = "all",
                    written: Sequence[QAPair] = ()) -> list[QAPair]:
    """All rule QA pairs of a document (and the `written` ones about it) that pass the verbatim
    check, deduplicated; `questions` keeps the natural rules' pairs (written ones included) only,
    the cloze (and definition/alias) ones only, the written ones only, or all."""
    if questions not in QUESTION_STYLES:
        raise UsageError(f"questions must be one of {', '.join(QUESTION_STYLES)}")
    sentences = split_sentences(doc.text)
    title = clean_title(doc.title)
    seen, out = set(), []
    for pair in (*_rule_definition(sentences, title), *_rule_alias(sentences, title),
                 *_rule_cloze(sentences, title), *_rule_natural(sentences, title), *written):
        if not verbatim_ok(pair, doc.text, max_answer_char):
            continue
        if questions == "written" and pair.rule != "written":
            continue
        if questions in ("natural", "cloze") and (pair.rule in NATURAL_RULES) != (questions == "natural"):
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

    written = written_pairs(cfg.written) if cfg.written else {}
    unmatched = set(written) - {pool[i].title.casefold() for i in chosen}
    pretrain, qa_for_retrieval = [], []  # (doc index, pair) for instruct / e2e
    rules: Counter = Counter()
    filtered = 0
    bar = progress_bar(total=len(chosen), desc="synth", unit="doc", enabled=progress)
    for i in chosen:
        doc = pool[i]
        rng = _doc_rng(cfg.seed, doc)
        pairs = candidate_pairs(doc, cfg.max_answer_char, cfg.questions, written.get(doc.title.casefold(), ()))
        pairs = choose_pairs(pairs, cfg.max_qa, rng)
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
                         filtered_by_model=filtered, written_unmatched=sum(len(written[t]) for t in unmatched),
                         files=[str(f) for f in files])
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
