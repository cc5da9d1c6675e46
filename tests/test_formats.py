"""A person's own documents through the CLI, as a new user runs it: PDF pages, DOCX, Org, legacy
encodings, unsupported files named, identical chunks compressed once, size caps, and a typo in
a path that creates no store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from office_files import make_docx, make_pdf

from clara_cli.cli import cli
from clara_cli.readers import parse_size, read_inputs
from clara_cli.store import Store

REPO = Path(__file__).resolve().parents[1]


def clara(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clara_cli.cli", *args], capture_output=True, text=True,
                          input=stdin, timeout=600, cwd=REPO, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})


def personal_corpus(root: Path) -> Path:
    root.mkdir()
    (root / "todo.org").write_text("* TODO renew the passport\n  The appointment is on Tuesday morning.")
    (root / "recipe.md").write_text("# Bread\n\nFlour, water, salt and yeast; bake for forty minutes.")
    (root / "letter-latin1.txt").write_bytes("Chère Madame, la réunion est reportée à jeudi.".encode("latin-1"))
    (root / "page.html").write_text("<html><body><p>The garden needs watering twice a week.</p></body></html>")
    (root / "contacts.csv").write_text("id,text\nbob,Bob the plumber fixes leaking pipes.\n")
    (root / "notes.jsonl").write_text(json.dumps({"id": "n1", "text": "The car is due for its service in May."}) + "\n")
    make_pdf(root / "tax-2024.pdf", ["Tax return 2024\nIncome from employment.", "Page two: pension payments.",
                                     "Page three: deductions for the home office and the commute."])
    make_docx(root / "lease.docx", ["The rent is due on the first of each month.", "Pets are allowed."],
              [["Deposit", "1800"]], title="Lease")
    (root / "drawing.xyz").write_bytes(b"\x00\x01 not a format clara reads")
    (root / "mantra.txt").write_text("calm " * 3000)  # one word repeated: many identical chunks
    return root


def test_a_personal_corpus_through_update_and_search(tmp_path, tiny_model_dir):
    corpus = personal_corpus(tmp_path / "corpus")
    store = tmp_path / "store"
    r = clara("--store", str(store), "update", str(corpus), "--model", str(tiny_model_dir), "--batch-size", "4",
              "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["added"] == 9 and out["rejected"] == 0 and out["skipped"] == 1
    lines = r.stderr.splitlines()
    assert f"clara: skipped: {corpus / 'drawing.xyz'}: unsupported format .xyz" in lines
    # "calm calm ..." is cut into identical chunks: computed once, the rest share its memory
    assert out["duplicates"] >= 20 and out["compressed"] == out["chunks_added"] == out["indexed"]
    unique = out["chunks_added"] - out["duplicates"]
    assert f"clara: compressing {unique} chunk(s)" in r.stderr and "more share the memory" in r.stderr
    assert any(x.startswith("clara: compress: about ") and " left (" in x for x in lines), lines

    with Store.open(store).snapshot() as snap:
        chunks = snap.chunks(["chunk_id", "source", "text"]).to_pylist()
        texts = {c["text"] for c in chunks}
        assert "Chère Madame, la réunion est reportée à jeudi." in texts
        assert not any("%PDF" in t or "<w:" in t for t in texts)
        same = [int(c["chunk_id"], 16) for c in chunks if c["source"].endswith("mantra.txt")]
        memory = snap.read_memory(same[:-1])  # the last chunk is shorter: another text
        assert len(same) > 20 and torch.equal(memory, memory[:1].expand_as(memory))
        pdf_sources = {c["source"] for c in chunks if "tax-2024.pdf" in c["source"]}
        assert pdf_sources == {f"{corpus / 'tax-2024.pdf'}#page={n}" for n in (1, 2, 3)}
        docs = {d["source"]: json.loads(d["metadata"]) for d in snap.documents().to_pylist()}
    assert docs[str(corpus / "tax-2024.pdf")] == {"format": "pdf", "pages": 3}
    assert docs[str(corpus / "lease.docx")] == {"format": "docx", "title": "Lease"}
    assert docs[str(corpus / "letter-latin1.txt")] == {"encoding": "cp1252"}

    r = clara("--store", str(store), "search", "deductions for the home office", "--retriever", "bm25", "-k", "1",
              "--json", "--model", str(tiny_model_dir))
    assert r.returncode == 0, r.stderr
    hit = json.loads(r.stdout.splitlines()[0])
    assert hit["source"] == f"{corpus / 'tax-2024.pdf'}#page=3" and "home office" in hit["text"]

    # A new file whose text is already in the store: its memory row is copied, not recomputed.
    (corpus / "todo-copy.org").write_text((corpus / "todo.org").read_text())
    r = clara("--store", str(store), "update", str(corpus), "--model", str(tiny_model_dir), "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["added"] == 1 and out["compressed"] == 1 and out["duplicates"] == 1, r.stdout
    assert "clara: compressing" not in r.stderr  # nothing to compute
    with Store.open(store).snapshot() as snap:
        rows = [c for c in snap.chunks(["chunk_id", "source"]).to_pylist() if "todo" in c["source"]]
        a, b = snap.read_memory([int(c["chunk_id"], 16) for c in rows])
    assert len(rows) == 2 and torch.equal(a, b)


def test_a_missing_path_creates_no_store(tmp_path, tiny_model_dir):
    store = tmp_path / "new"
    r = clara("--store", str(store), "update", "does-not-exist/", "--model", str(tiny_model_dir))
    assert r.returncode == 3, r.stderr
    assert r.stderr.splitlines()[0] == "clara: rejected: does-not-exist/: no such file or directory"
    assert "no compressed chunks" not in r.stderr and not store.exists()
    r = CliRunner().invoke(cli, ["--store", str(store), "ingest", "nope/*.md", "--model", str(tiny_model_dir)])
    assert r.exit_code == 3 and r.stderr.splitlines()[0] == "clara: rejected: nope/*.md: no files match"
    assert not store.exists()


def test_size_cap_skips_big_documents_by_name(tmp_path):
    (tmp_path / "small.txt").write_text("small " * 100)
    (tmp_path / "big.md").write_text("big " * 1000)  # 4000 bytes
    (tmp_path / "records.jsonl").write_text(json.dumps({"text": "r" * 5000}) + "\n")  # records: no cap
    items = list(read_inputs([str(tmp_path)], max_file_size=parse_size("2K")))
    assert sorted(type(i).__name__ for i in items) == ["SkippedInput", "SourceDocument", "SourceDocument"]
    skipped = next(i for i in items if type(i).__name__ == "SkippedInput")
    assert skipped.message == f"{tmp_path / 'big.md'}: 3.9 KiB, over the size cap of 2 KiB (--max-file-size)"
    assert len([i for i in read_inputs([str(tmp_path)], max_file_size=0) if hasattr(i, "text")]) == 3


@pytest.mark.parametrize("text,size", [("10M", 10 << 20), ("500k", 500 << 10), ("1.5G", 3 << 29), ("0", 0)])
def test_parse_size(text, size):
    assert parse_size(text) == size


def test_parse_size_refuses_nonsense():
    with pytest.raises(ValueError):
        parse_size("ten megabytes")
    assert parse_size("12") == 12
