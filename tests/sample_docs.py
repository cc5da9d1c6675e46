"""A four-file corpus in the formats ingest reads (text, Markdown, HTML in a subfolder), shared by the CLI tests."""

from __future__ import annotations

from pathlib import Path

DOCS = {
    "eiffel.txt": "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was completed in 1889.",
    "kilimanjaro.md": "# Kilimanjaro\n\nMount Kilimanjaro is the highest mountain in Africa.",
    "lovelace.txt": "Ada Lovelace wrote the first computer program for Charles Babbage's Analytical Engine.",
    "sub/reef.html": "<html><head><style>p{}</style><script>var x=1;</script></head>"
                     "<body><p>The Great Barrier Reef lies off Queensland, Australia.</p></body></html>",
}


def write_corpus(root: Path) -> Path:
    for name, text in DOCS.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
