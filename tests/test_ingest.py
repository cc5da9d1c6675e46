"""Ingest: input formats, rejections, token-aware chunking, diffing against the store."""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import os
import random
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from clara_cli.errors import ModelMismatchError
from clara_cli.ingest import (
    RejectedInput,
    SkippedInput,
    SourceDocument,
    chunk_text,
    count_tokens,
    html_to_text,
    ingest,
    make_chunk_id,
    read_inputs,
)
from clara_cli.store import Store


@pytest.fixture(scope="module")
def tokenizer(fixture_dir):
    return AutoTokenizer.from_pretrained(fixture_dir / "base")


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.open(tmp_path / "store", create=True)


def docs_and_rejects(paths, **kw):
    items = list(read_inputs([str(p) for p in paths], **kw))
    return ([i for i in items if isinstance(i, SourceDocument)],
            [i for i in items if isinstance(i, RejectedInput)])


def prose(n_chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = "alpha beta gamma delta épsilon zeta 😀 theta 2024 kappa lambda".split()
    out, size = [], 0
    while size < n_chars:
        s = " ".join(rng.choice(words) for _ in range(rng.randint(3, 18))) + rng.choice([". ", "! ", "\n", "\n\n", ", "])
        out.append(s)
        size += len(s)
    return "".join(out)


# -- formats -------------------------------------------------------------------------------------


def test_text_markdown_html_and_boms(tmp_path):
    (tmp_path / "a.txt").write_text("plain text\r\nsecond line")
    (tmp_path / "b.md").write_bytes(codecs.BOM_UTF8 + "# Title\n\nbody é".encode())
    (tmp_path / "c.txt").write_bytes(codecs.BOM_UTF16_LE + "utf sixteen ü".encode("utf-16-le"))
    (tmp_path / "d.html").write_text(
        "<html><head><title>Page</title><style>p{color:red}</style>"
        "<script>var x = 1;</script></head><body><h1>Head</h1><p>One   two\nthree</p>"
        "<ul><li>first</li><li>second &amp; more</li></ul><div>x<br>y</div></body></html>")
    (tmp_path / "skip.bin").write_bytes(b"ignored in folders")
    (tmp_path / ".hidden.txt").write_text("hidden")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.txt").write_text("hidden too")
    docs, rejects = docs_and_rejects([tmp_path])
    assert rejects == []
    by_name = {os.path.basename(d.source): d for d in docs}
    assert sorted(by_name) == ["a.txt", "b.md", "c.txt", "d.html"]
    assert by_name["a.txt"].text == "plain text\nsecond line"
    assert by_name["b.md"].text == "# Title\n\nbody é"
    assert by_name["c.txt"].text == "utf sixteen ü"
    html = by_name["d.html"].text
    assert "color" not in html and "var x" not in html
    assert html.split("\n\n")[:3] == ["Page", "Head", "One two three"]
    assert "first\nsecond & more" in html and "x\ny" in html
    doc = by_name["a.txt"]
    assert doc.doc_id == doc.source == str((tmp_path / "a.txt").resolve())


def test_text_kinds_are_read_and_unknown_formats_are_skipped_by_name(tmp_path):
    for name, body in [("notes.log", "log line"), ("todo.org", "* TODO call the bank"), ("guide.rst", "Title\n====="),
                       ("paper.tex", "\\section{Intro} text"), ("tool.py", "def f():\n    return 1"), ("README", "read me")]:
        (tmp_path / name).write_text(body)
    (tmp_path / "photo.xyz").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / "program").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00")
    items = list(read_inputs([str(tmp_path)]))
    docs = sorted(os.path.basename(i.source) for i in items if isinstance(i, SourceDocument))
    assert docs == ["README", "guide.rst", "notes.log", "paper.tex", "todo.org", "tool.py"]
    skipped = sorted(i.message for i in items if isinstance(i, SkippedInput))
    assert skipped == [f"{tmp_path / 'photo.xyz'}: unsupported format .xyz",
                       f"{tmp_path / 'program'}: unsupported format (no extension, and not text)"]
    items = list(read_inputs([str(tmp_path / "photo.xyz")]))  # named explicitly: the same line
    assert [type(i) for i in items] == [SkippedInput] and "unsupported format .xyz" in items[0].message


def test_jsonl_csv_parquet_records(tmp_path):
    (tmp_path / "r.jsonl").write_text(
        json.dumps({"text": "first", "id": 7, "metadata": {"k": 1}}) + "\n\n"
        + json.dumps({"text": "second"}) + "\n")
    (tmp_path / "t.csv").write_text('id,text,title\nx1,"hello, world",T\n,"multi\nline",\n')
    pq.write_table(pa.table({"text": ["p1", "p2"], "id": ["a", None], "url": ["u1", "u2"]}), tmp_path / "p.parquet")
    docs, rejects = docs_and_rejects([tmp_path / "r.jsonl", tmp_path / "t.csv", tmp_path / "p.parquet"])
    assert rejects == []
    jsonl_src = str((tmp_path / "r.jsonl").resolve())
    csv_src = str((tmp_path / "t.csv").resolve())
    pq_src = str((tmp_path / "p.parquet").resolve())
    got = [(d.doc_id, d.source, d.text, d.metadata) for d in docs]
    assert got == [
        ("7", jsonl_src, "first", {"k": 1}),
        (f"{jsonl_src}#3", jsonl_src, "second", {}),
        ("x1", csv_src, "hello, world", {"title": "T"}),
        (f"{csv_src}#2", csv_src, "multi\nline", {}),
        ("a", pq_src, "p1", {"url": "u1"}),
        (f"{pq_src}#2", pq_src, "p2", {"url": "u2"}),
    ]


def test_stdin_jsonl():
    stream = io.StringIO('{"text": "from stdin"}\n{"text": "two", "id": "s2"}\nnot json\n')
    docs, rejects = docs_and_rejects(["-"], stdin=stream)
    assert [(d.doc_id, d.source) for d in docs] == [("<stdin>#1", "<stdin>"), ("s2", "<stdin>")]
    assert [r.message.split(":")[:2] for r in rejects] == [["<stdin>", "3"]]


def test_globs_and_symlinks(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text("a")
    (corpus / "sub" / "b.md").write_text("b")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.txt").write_text("outside")
    os.symlink(outside, corpus / "link-out")
    os.symlink(corpus, corpus / "sub" / "loop")  # a cycle: must not hang
    os.symlink(corpus / "a.txt", corpus / "sub" / "same.txt")  # the same file twice: read once
    docs, _ = docs_and_rejects([corpus])
    assert sorted(d.text for d in docs) == ["a", "b"]
    docs, _ = docs_and_rejects([corpus], follow_symlinks=True)
    assert sorted(d.text for d in docs) == ["a", "b", "outside"]
    docs, rejects = docs_and_rejects([f"{corpus}/**/*.md", f"{tmp_path}/nomatch*.txt"])
    assert [d.text for d in docs] == ["b"]
    assert [r.message for r in rejects] == [f"{tmp_path}/nomatch*.txt: no files match"]


def test_legacy_encodings_are_detected(tmp_path):
    samples = {"latin1.txt": ("caf\xe9 au lait", "latin-1"),
               "french.md": ("Le café est très bon, à côté de l'église.\n" * 3, "cp1252"),
               "russian.txt": ("Привет, как дела? Это тестовый текст на русском языке.", "cp1251"),
               "japanese.txt": ("これは日本語のテキストです。東京は大きな都市です。", "shift_jis")}
    for name, (text, codec) in samples.items():
        (tmp_path / name).write_bytes(text.encode(codec))
    docs, rejects = docs_and_rejects([tmp_path])
    assert rejects == []
    got = {os.path.basename(d.source): (d.text, d.metadata["encoding"]) for d in docs}
    assert got == {"french.md": (samples["french.md"][0], "cp1252"), "japanese.txt": (samples["japanese.txt"][0], "cp932"),
                   "latin1.txt": ("café au lait", "cp1252"), "russian.txt": (samples["russian.txt"][0], "cp1251")}


def test_csv_in_a_legacy_encoding_or_with_a_bom_is_read(tmp_path):
    """A spreadsheet saved as Windows-1252 (Excel's "CSV") or as UTF-16 is read as text files are."""
    (tmp_path / "menu.csv").write_bytes('id,text,title\nm1,"Crème brûlée, 5€",Café\n'.encode("cp1252"))
    (tmp_path / "bom.csv").write_bytes('id,text\nb1,"Straße\r\nin München"\n'.encode("utf-8-sig"))
    (tmp_path / "wide.csv").write_text("id,text\nw1,Ελληνικά\n", encoding="utf-16")
    docs, rejects = docs_and_rejects([tmp_path])
    assert rejects == []
    assert {d.doc_id: (d.text, d.metadata) for d in docs} == {
        "m1": ("Crème brûlée, 5€", {"title": "Café"}), "b1": ("Straße\nin München", {}), "w1": ("Ελληνικά", {})}


def test_rejections_name_the_input(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"abc\x00def")
    (tmp_path / "noise.txt").write_bytes(bytes(range(128, 256)) * 3)  # no encoding makes text of it
    (tmp_path / "empty.md").write_text("  \n\t ")
    (tmp_path / "bad.jsonl").write_text('{"text": "good one"}\n{"text": \n{"text": 5}\n[1]\n{"text": "ok", "id": true}\n')
    (tmp_path / "notext.csv").write_text("title,body\nx,y\n")
    (tmp_path / "header-only.csv").write_text("id,text\n")
    docs, rejects = docs_and_rejects(
        [tmp_path / n for n in ("bin.txt", "noise.txt", "empty.md", "bad.jsonl", "notext.csv", "missing.txt",
                                "header-only.csv")])
    assert [d.text for d in docs] == ["good one"]
    messages = [r.message for r in rejects]
    assert len(messages) == 10 and all("\n" not in m for m in messages)
    bad = str(tmp_path / "bad.jsonl")
    assert messages[0] == f"{tmp_path / 'bin.txt'}: binary file (contains NUL bytes)"
    assert messages[1] == f"{tmp_path / 'noise.txt'}: not text (not UTF-8, and no other encoding gives plausible text)"
    assert messages[2] == f"{tmp_path / 'empty.md'}: empty (no text)"
    assert messages[3].startswith(f"{bad}:2: malformed JSON")
    assert messages[4] == f"{bad}:3: missing \"text\" string"
    assert messages[5] == f"{bad}:4: expected a JSON object, got list"
    assert messages[6] == f"{bad}:5: \"id\" must be a string or an integer"
    assert messages[7] == f"{tmp_path / 'notext.csv'}: no \"text\" column (columns: title, body)"
    assert messages[8] == f"{tmp_path / 'missing.txt'}: no such file or directory"
    assert messages[9] == f"{tmp_path / 'header-only.csv'}: empty (no records)"


def test_ingest_commits_good_inputs_and_reports_bad_ones(tmp_path, store, tokenizer):
    (tmp_path / "good.txt").write_text("A good document.")
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01")
    (tmp_path / "r.jsonl").write_text('{"text": "record one"}\n{oops\n')
    report = ingest(store, [str(tmp_path / n) for n in ("good.txt", "bin.txt", "r.jsonl", "gone.txt")],
                    tokenizer, max_tokens=32, progress=False)
    assert (report.added, report.chunks_added, len(report.rejected)) == (2, 2, 3)
    assert f"{tmp_path / 'r.jsonl'}:2:" in report.rejected[1].message
    snap = store.snapshot()
    assert snap.version == report.version == 1
    assert sorted(snap.chunks(["text"]).column("text").to_pylist()) == ["A good document.", "record one"]


# -- chunking ------------------------------------------------------------------------------------


def test_chunks_respect_limit_overlap_and_offsets(tokenizer):
    text = "  " + prose(6000, seed=1) + "\n\n"
    spans = chunk_text(text, tokenizer, max_tokens=48, overlap=8)
    assert len(spans) > 10
    for (start, end, n), nxt in zip(spans, spans[1:] + [None], strict=True):
        piece = text[start:end]
        assert piece == piece.strip() and piece
        assert n == count_tokens(piece, tokenizer) <= 48
        if nxt is not None:
            assert nxt[0] < end  # overlapping
            overlap = count_tokens(text[nxt[0]:end], tokenizer)
            assert 4 <= overlap <= 12
    assert spans[0][0] == 2 and spans[-1][1] == len(text.rstrip())
    # Without overlap the chunks tile the text: only whitespace lies between them.
    spans = chunk_text(text, tokenizer, max_tokens=48)
    for (_, end, _), (start, _, _) in zip(spans, spans[1:], strict=False):
        assert end <= start and text[end:start].strip() == ""
    assert chunk_text("   \n ", tokenizer, 16) == []


def test_chunks_prefer_paragraph_and_sentence_ends(tokenizer):
    para = "word " * 30 + "end of paragraph.\n\n"
    spans = chunk_text(para * 4, tokenizer, max_tokens=40)
    assert all(para.strip().endswith(para[s:e][-10:]) for s, e, _ in spans[:-1])
    text = ("This is a sentence that goes on a while. " * 3)
    spans = chunk_text(text, tokenizer, max_tokens=21)
    assert all(text[s:e].endswith(".") for s, e, _ in spans)


def test_chunking_is_linear(tokenizer):
    small, big = prose(200_000, seed=2), prose(2_000_000, seed=3)
    t0 = time.perf_counter()
    chunk_text(small, tokenizer, 256, overlap=16)
    t_small = time.perf_counter() - t0
    t0 = time.perf_counter()
    spans = chunk_text(big, tokenizer, 256, overlap=16)
    t_big = time.perf_counter() - t0
    assert max(n for _, _, n in spans) <= 256
    assert spans[-1][1] == len(big.rstrip())
    assert t_big < 30 * t_small + 3.0, (t_small, t_big)  # 10x text; quadratic would be ~100x


def test_chunk_id_is_63_bit_hex():
    h = hashlib.sha256(b"x").hexdigest()
    cid = make_chunk_id("doc", 0, 5, h)
    digest = hashlib.sha256(f"doc\0{0}\0{5}\0{h}".encode()).digest()
    assert cid == f"{int.from_bytes(digest[:8], 'big') >> 1:016x}"
    assert len(cid) == 16 and int(cid, 16) < 2**63


# -- diffing against the store ---------------------------------------------------------------------


def test_reingest_unchanged_changed_and_delete_missing(tmp_path, store, tokenizer):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("Alpha document. " * 20)
    (corpus / "b.md").write_text("Beta document.")
    (corpus / "r.jsonl").write_text('{"id": "r1", "text": "record one"}\n{"id": "r2", "text": "record two"}\n')
    run = dict(tokenizer=tokenizer, max_tokens=24, progress=False)
    first = ingest(store, [str(corpus)], **run)
    assert (first.added, first.changed, first.removed, first.unchanged) == (4, 0, 0, 0)
    assert first.version == 1

    again = ingest(store, [str(corpus)], **run)
    assert (again.added, again.unchanged, again.version) == (0, 4, 1)
    assert store.snapshot().version == 1  # nothing written

    (corpus / "b.md").write_text("Beta document, second edition.")
    changed = ingest(store, [str(corpus)], **run)
    assert (changed.added, changed.changed, changed.unchanged, changed.version) == (0, 1, 3, 2)
    snap = store.snapshot()
    b_id = str((corpus / "b.md").resolve())
    b_chunks = snap.chunks(["doc_id", "text"]).filter(pa.compute.equal(pa.compute.field("doc_id"), b_id))
    assert b_chunks.column("text").to_pylist() == ["Beta document, second edition."]
    assert snap.documents().num_rows == 4

    (corpus / "a.txt").unlink()
    (corpus / "r.jsonl").write_text('{"id": "r1", "text": "record one"}\n')
    kept = ingest(store, [str(corpus)], **run)
    assert kept.removed == 0 and store.snapshot().documents().num_rows == 4
    removed = ingest(store, [str(corpus)], delete_missing=True, **run)
    assert removed.removed == 2
    snap = store.snapshot()
    assert sorted(snap.documents().column("doc_id").to_pylist()) == sorted([b_id, "r1"])
    assert set(snap.chunks(["doc_id"]).column("doc_id").to_pylist()) == {b_id, "r1"}


def test_duplicate_ids_in_one_run_are_rejected(tmp_path, store, tokenizer):
    (tmp_path / "x.jsonl").write_text('{"id": 1, "text": "one"}\n{"id": 1, "text": "uno"}\n')
    report = ingest(store, [str(tmp_path / "x.jsonl")], tokenizer, 16, progress=False)
    assert report.added == 1 and "duplicate document id '1'" in report.rejected[0].message


def test_model_mismatch_before_any_work(tmp_path, store, tokenizer):
    info = {"fingerprint": "fp-a", "spec": "a", "n_mem": 2, "hidden": 4, "doc_max_length": 32}
    (tmp_path / "a.txt").write_text("text")
    ingest(store, [str(tmp_path / "a.txt")], tokenizer, 32, model_info=info, progress=False)
    assert store.snapshot().model["fingerprint"] == "fp-a"
    (tmp_path / "b.txt").write_text("more")
    with pytest.raises(ModelMismatchError, match="fp-a.*fp-b"):
        ingest(store, [str(tmp_path / "b.txt")], tokenizer, 32, model_info={**info, "fingerprint": "fp-b"},
               progress=False)
    assert store.snapshot().documents().num_rows == 1


def test_html_to_text_keeps_pre():
    assert html_to_text("<p>a  b</p><pre>x  y\nz</pre>") == "a b\n\nx  y\nz"
