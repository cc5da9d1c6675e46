"""Ingest: read files, folders, globs and stdin; chunk by tokens; diff against the store.

Re-running on unchanged input does no work and writes nothing (content hashes), so a cron
job is cheap; a bad input is reported and never stops the good ones.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import fnmatch
import glob
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import TextIO

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ClaraError, ModelMismatchError
from .progress import progress_bar
from .store import CHUNK_SCHEMA, DOCUMENT_SCHEMA, Store

TEXT_SUFFIXES = {".txt", ".md"}
HTML_SUFFIXES = {".html", ".htm"}
RECORD_SUFFIXES = {".jsonl", ".csv", ".parquet"}
KNOWN_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | RECORD_SUFFIXES
STDIN_SOURCE = "<stdin>"

_FLUSH_CHUNKS = 20_000  # write a Parquet pair every this many chunks: bounded memory on big corpora


@dataclass
class SourceDocument:
    doc_id: str
    source: str
    text: str
    metadata: dict = field(default_factory=dict)


@dataclass
class RejectedInput:
    source: str  # the input as the user named it (file path, or "<stdin>")
    message: str  # one line naming the file (and line/row for JSONL/CSV/Parquet)


@dataclass
class IngestReport:
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    chunks_added: int = 0
    rejected: list[RejectedInput] = field(default_factory=list)
    version: int | None = None  # the store version after ingest (unchanged when nothing was written)

    def to_dict(self) -> dict:
        return {"added": self.added, "changed": self.changed, "removed": self.removed,
                "unchanged": self.unchanged, "chunks_added": self.chunks_added,
                "rejected": [{"source": r.source, "message": r.message} for r in self.rejected],
                "version": self.version}


class _Reject(Exception):
    """Internal: this input (or record) cannot be read; the message is the one line users see."""


# ---------------------------------------------------------------------------------------------
# decoding and formats


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _decode(data: bytes, name: str) -> str:
    """Bytes -> text: UTF-8, or UTF-16/32 when a BOM says so; binary input is refused."""
    for bom, codec in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                       (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
                       (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            try:
                text = data.decode(codec)
            except UnicodeDecodeError:
                raise _Reject(f"{name}: not valid {codec.upper()} text despite its byte-order mark") from None
            break
    else:
        if b"\0" in data:
            raise _Reject(f"{name}: binary file (contains NUL bytes)")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise _Reject(f"{name}: not UTF-8 text (undecodable byte at offset {err.start})") from None
    if "\0" in text:
        raise _Reject(f"{name}: binary file (contains NUL characters)")
    return text.replace("\r\n", "\n").replace("\r", "\n")


_LINE, _PARA = "\x01", "\x02"  # separator marks (removed from the page text itself)


class _HTMLText(HTMLParser):
    """Visible text of an HTML page: scripts and styles dropped, block elements on their own lines."""

    SKIP = {"script", "style", "noscript", "template", "svg", "head"}
    PARAGRAPH = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "table", "ul", "ol",
                 "dl", "section", "article", "header", "footer", "nav", "aside", "main", "figure",
                 "form", "fieldset", "details", "address", "hr", "title"}
    LINE = {"br", "div", "li", "dt", "dd", "tr", "caption", "figcaption", "summary", "option",
            "body", "html"}
    CELL = {"td", "th"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.pre = 0
        self.in_head_title = False

    def handle_starttag(self, tag, attrs):
        if tag == "title":  # keep the title even though it lives in <head>
            self.in_head_title = True
        if tag in self.SKIP:
            self.skip += 1
        elif tag == "pre":
            self.pre += 1
        self._separate(tag)

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_head_title = False
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)
        self._separate(tag)

    def handle_startendtag(self, tag, attrs):
        self._separate(tag)

    def _separate(self, tag):
        if tag in self.PARAGRAPH:
            self.parts.append(_PARA)
        elif tag in self.LINE:
            self.parts.append(_LINE)
        elif tag in self.CELL:
            self.parts.append(" ")

    def handle_data(self, data):
        if self.skip and not self.in_head_title:
            return
        data = data.replace(_LINE, " ").replace(_PARA, " ")
        self.parts.append(data if self.pre else re.sub(r"[ \t\n\r\f\v]+", " ", data))

    def text(self) -> str:
        # A run of separators (and the spaces around them) becomes one line or paragraph break.
        raw = re.sub(f"[ {_LINE}{_PARA}]*[{_LINE}{_PARA}][ {_LINE}{_PARA}]*",
                     lambda m: "\n\n" if _PARA in m.group() else "\n", "".join(self.parts))
        return re.sub(r"\n{3,}", "\n\n", raw).strip()


def html_to_text(html: str) -> str:
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    return parser.text()


def _check_text(text: str, name: str) -> str:
    if not text.strip():
        raise _Reject(f"{name}: empty (no text)")
    return text


def _record(source: str, number: int, obj: dict, where: str, prefix: str = "") -> SourceDocument:
    """A JSONL/CSV/Parquet record -> document; `where` ("file:line") names it in errors."""
    text = obj.get("text")
    if not isinstance(text, str):
        raise _Reject(f"{where}: {prefix}missing \"text\" string")
    if not text.strip():
        raise _Reject(f"{where}: {prefix}empty text")
    if "\0" in text:
        raise _Reject(f"{where}: {prefix}text contains NUL characters")
    ident = obj.get("id")
    if ident is None or ident == "":
        doc_id = f"{source}#{number}"
    elif isinstance(ident, bool) or not isinstance(ident, (str, int)):
        raise _Reject(f"{where}: {prefix}\"id\" must be a string or an integer")
    else:
        doc_id = str(ident)
    metadata = obj.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise _Reject(f"{where}: {prefix}\"metadata\" must be an object")
    return SourceDocument(doc_id, source, text.replace("\r\n", "\n").replace("\r", "\n"), metadata)


def _read_jsonl_lines(lines, source: str, name: str) -> Iterator[SourceDocument | RejectedInput]:
    for number, line in enumerate(lines, 1):
        where = f"{name}:{number}"
        try:
            if isinstance(line, bytes):
                if number == 1 and line.startswith(codecs.BOM_UTF8):
                    line = line[3:]
                try:
                    line = line.decode("utf-8")
                except UnicodeDecodeError:
                    raise _Reject(f"{where}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as err:
                raise _Reject(f"{where}: invalid JSON ({getattr(err, 'msg', err)})") from None
            if not isinstance(obj, dict):
                raise _Reject(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield _record(source, number, obj, where)
        except _Reject as err:
            yield RejectedInput(name, str(err))


def _read_csv(path: Path, source: str, name: str) -> Iterator[SourceDocument | RejectedInput]:
    _raise_csv_field_limit()
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        try:
            fields = reader.fieldnames
        except (csv.Error, UnicodeDecodeError) as err:
            raise _Reject(f"{name}: not a readable CSV file ({err})") from None
        if not fields:
            raise _Reject(f"{name}: empty (no header row)")
        if "text" not in fields:
            raise _Reject(f"{name}: no \"text\" column (columns: {', '.join(fields)})")
        row = 0
        while True:
            line = reader.line_num + 1
            try:
                values = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as err:
                yield RejectedInput(name, f"{name}:{line}: unreadable CSV from here on ({err})")
                return
            row += 1
            extra = {k: v for k, v in values.items() if k not in ("text", "id") and k is not None and v}
            try:
                yield _record(source, row, {"text": values.get("text"), "id": values.get("id"),
                                            "metadata": extra}, f"{name}:{line}", f"row {row}: ")
            except _Reject as err:
                yield RejectedInput(name, str(err))


def _raise_csv_field_limit() -> None:
    # Documents in a CSV cell easily exceed the csv module's 128 KiB default.
    if csv.field_size_limit() < 2**31 - 1:
        csv.field_size_limit(2**31 - 1)


def _read_parquet(path: Path, source: str, name: str) -> Iterator[SourceDocument | RejectedInput]:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise _Reject(f"{name}: not a readable Parquet file ({str(err).splitlines()[0]})") from None
    columns = pf.schema_arrow.names
    if "text" not in columns:
        raise _Reject(f"{name}: no \"text\" column (columns: {', '.join(columns)})")
    row = 0
    for batch in pf.iter_batches(batch_size=4096):
        for values in batch.to_pylist():
            row += 1
            metadata = values.get("metadata")
            if isinstance(metadata, str):
                try:
                    metadata = json.loads(metadata)
                except ValueError:
                    metadata = {"metadata": metadata}
            if isinstance(metadata, list):  # a Parquet map column reads as key/value pairs
                metadata = dict(metadata)
            extra = {k: v for k, v in values.items() if k not in ("text", "id", "metadata") and v is not None}
            if isinstance(metadata, dict) or metadata is None:
                metadata = {**extra, **(metadata or {})}
            try:
                yield _record(source, row, {"text": values.get("text"), "id": values.get("id"),
                                            "metadata": metadata}, f"{name}: row {row}")
            except _Reject as err:
                yield RejectedInput(name, str(err))


def _read_file(path: Path, name: str, source: str) -> Iterator[SourceDocument | RejectedInput]:
    """One file by its extension; anything unknown is read as plain text."""
    suffix = path.suffix.lower()
    if suffix in RECORD_SUFFIXES:
        count = 0
        with contextlib.ExitStack() as stack:
            if suffix == ".jsonl":
                items = _read_jsonl_lines(stack.enter_context(open(path, "rb")), source, name)
            else:
                items = (_read_csv if suffix == ".csv" else _read_parquet)(path, source, name)
            for item in items:
                count += 1
                yield item
        if count == 0:
            raise _Reject(f"{name}: empty (no records)")
        return
    text = _decode(path.read_bytes(), name)
    if suffix in HTML_SUFFIXES:
        text = html_to_text(text)
    yield SourceDocument(source, source, _check_text(text, name), {})


# ---------------------------------------------------------------------------------------------
# finding inputs


def _walk(top: str, follow_symlinks: bool) -> Iterator[str]:
    """Files with known extensions under a folder, sorted, hidden entries skipped. Links leading
    outside the folder are skipped unless follow_symlinks; every folder is visited once."""
    top_real = os.path.realpath(top)
    visited: set[tuple[int, int]] = set()

    def inside(path: str) -> bool:
        return path == top_real or path.startswith(top_real.rstrip(os.sep) + os.sep)

    def walk(folder: str) -> Iterator[str]:
        try:
            st = os.stat(folder)
        except OSError:
            return
        if (st.st_dev, st.st_ino) in visited:
            return
        visited.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if not os.path.exists(target) or (not follow_symlinks and not inside(target)):
                        continue
                if entry.is_dir():
                    yield from walk(entry.path)
                elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in KNOWN_SUFFIXES:
                    yield entry.path
            except OSError:
                continue

    yield from walk(top)


def _expand(arg: str, follow_symlinks: bool) -> Iterator[str | RejectedInput]:
    """One command-line input -> file paths (folders walked, globs expanded), or a rejection.
    Folder walks keep known extensions only; a file named (or matched) explicitly is always read."""
    if os.path.isdir(arg):
        yield from _walk(arg, follow_symlinks)
    elif os.path.isfile(arg):
        yield arg
    elif os.path.lexists(arg) and not os.path.exists(arg):
        yield RejectedInput(arg, f"{arg}: broken symbolic link")
    elif os.path.exists(arg):
        yield RejectedInput(arg, f"{arg}: not a regular file or directory")
    elif glob.has_magic(arg):
        matches = sorted(glob.glob(arg, recursive=True))
        if not matches:
            yield RejectedInput(arg, f"{arg}: no files match")
        for match in matches:
            if os.path.isdir(match):
                yield from _walk(match, follow_symlinks)
            elif os.path.isfile(match):
                yield match
    else:
        yield RejectedInput(arg, f"{arg}: no such file or directory")


def read_inputs(paths: Sequence[str], stdin: TextIO | None = None, follow_symlinks: bool = False
                ) -> Iterator[SourceDocument | RejectedInput]:
    """Documents from files, folders, globs and `-` (JSON Lines on stdin), in a stable order.

    A file reached twice (named twice, or through a link) is read once.
    """
    seen: set[str] = set()
    for arg in paths:
        if arg == "-":
            stream = stdin if stdin is not None else sys.stdin
            yield from _read_jsonl_lines(stream, STDIN_SOURCE, STDIN_SOURCE)
            continue
        for item in _expand(arg, follow_symlinks):
            if isinstance(item, RejectedInput):
                yield item
                continue
            path = item
            source = str(Path(path).resolve())
            if source in seen:
                continue
            seen.add(source)
            try:
                yield from _read_file(Path(path), path, source)
            except _Reject as err:
                yield RejectedInput(path, str(err))
            except OSError as err:
                yield RejectedInput(path, f"{path}: cannot read ({err.strerror or err})")


# ---------------------------------------------------------------------------------------------
# chunking


_SENTENCE_END = ".!?…。！？"
_CLOSERS = "\"')]}”’»"
_SCAN = 64  # how far a boundary check looks for whitespace; keeps chunking linear
_SEGMENT = 32_768  # characters tokenized at once (the fast tokenizer is quicker on pieces)


def _segments(text: str) -> Iterator[tuple[int, int]]:
    """Split long text at single whitespace characters between words: byte-level BPE
    pre-tokenizes at those points anyway, so the tokens come out the same as in one call."""
    start, n = 0, len(text)
    while n - start > _SEGMENT + 1:
        cut = start + _SEGMENT
        lo = start + _SEGMENT // 2
        while cut > lo and not (text[cut] in " \n" and not text[cut - 1].isspace()
                                and not text[cut + 1].isspace()):
            cut -= 1
        if cut == lo:
            cut = start + _SEGMENT
        yield start, cut
        start = cut
    if start < n:
        yield start, n


def _token_offsets(text: str, tokenizer) -> tuple[list[int], list[int]]:
    starts: list[int] = []
    ends: list[int] = []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and (backend.truncation is not None or backend.padding is not None):
        backend = None
    for a, b in _segments(text):
        piece = text[a:b]
        if backend is not None:
            offsets = backend.encode(piece, add_special_tokens=False).offsets
        else:
            try:
                enc = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
            except NotImplementedError:
                raise ClaraError("chunking needs a fast tokenizer (one with offset mappings)") from None
            offsets = enc["offset_mapping"]
        for s, e in offsets:
            if e > s:
                starts.append(s + a)
                ends.append(e + a)
    return starts, ends


def count_tokens(text: str, tokenizer) -> int:
    """Tokens of text as the compressor will see it (no special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        return len(backend.encode(text, add_special_tokens=False).ids)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _boundary_score(text: str, pos: int) -> int:
    """How good a place to end a chunk the character position pos is: 3 paragraph break,
    2 sentence end or line break, 1 other whitespace, 0 inside a word."""
    left = pos
    while left > 0 and pos - left < _SCAN and text[left - 1].isspace():
        left -= 1
    right = pos
    while right < len(text) and right - pos < _SCAN and text[right].isspace():
        right += 1
    if left == right:
        return 0
    run = text[left:right]
    if run.count("\n") >= 2:
        return 3
    before = text[left - 1] if left > 0 else ""
    if before in _CLOSERS and left > 1:
        before = text[left - 2]
    if "\n" in run or (before and before in _SENTENCE_END):
        return 2
    return 1


def chunk_text(text: str, tokenizer, max_tokens: int, overlap: int = 0) -> list[tuple[int, int, int]]:
    """Split text into (start_char, end_char, n_tokens) spans of at most max_tokens tokens.

    Spans are character offsets into text (stripped of surrounding whitespace); a chunk ends at
    the best paragraph/sentence/whitespace boundary in the last ~20% of its window, and the
    next one starts `overlap` tokens earlier. Linear in the length of the text.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    if not 0 <= overlap < max_tokens:
        raise ValueError("overlap must be at least 0 and less than max_tokens")
    starts, ends = _token_offsets(text, tokenizer)
    n = len(starts)

    def clean(k: int) -> bool:  # no character shared by tokens k-1 and k (multi-byte chars)
        return k <= 0 or k >= n or starts[k] >= ends[k - 1]

    window_tail = max(1, max_tokens // 5)
    spans: list[tuple[int, int, int]] = []
    i = 0
    while i < n:
        j = min(i + max_tokens, n)
        k = j
        if j < n:
            best, best_score = None, 0
            for cand in range(j, max(i, j - window_tail), -1):
                if clean(cand):
                    score = _boundary_score(text, starts[cand])
                    if score > best_score:
                        best, best_score = cand, score
                        if score == 3:
                            break
            if best is None:
                best = next((c for c in range(j, i, -1) if clean(c)), None)
                if best is None:  # degenerate: a window inside one character
                    best = next(c for c in range(j + 1, n + 1) if clean(c))
            k = best
        while True:
            a, b = starts[i], ends[k - 1]
            while a < b and text[a].isspace():
                a += 1
            while b > a and text[b - 1].isspace():
                b -= 1
            count = count_tokens(text[a:b], tokenizer) if b > a else 0
            if count <= max_tokens:
                break
            # Re-tokenising the stripped text can merge differently at its edges: end earlier.
            shorter = next((c for c in range(k - 1, i, -1) if clean(c)), None)
            if shorter is None:
                break
            k = shorter
        if b > a:
            spans.append((a, b, count))
        if k >= n:
            break
        nxt = max(k - overlap, i + 1)
        while nxt > i + 1 and not clean(nxt):
            nxt -= 1
        while not clean(nxt):
            nxt += 1
        i = nxt
    return spans


def make_chunk_id(doc_id: str, start: int, end: int, content_hash: str) -> str:
    """16 hex digits of a 63-bit number: int(chunk_id, 16) is the int64 key FAISS uses."""
    digest = hashlib.sha256(f"{doc_id}\0{start}\0{end}\0{content_hash}".encode()).digest()
    return f"{int.from_bytes(digest[:8], 'big') >> 1:016x}"


def chunk_rows(doc: SourceDocument, tokenizer, max_tokens: int, overlap: int = 0) -> list[dict]:
    """The chunk table rows of one document."""
    rows = []
    for index, (start, end, n_tokens) in enumerate(chunk_text(doc.text, tokenizer, max_tokens, overlap)):
        piece = doc.text[start:end]
        digest = sha256_text(piece)
        rows.append({"chunk_id": make_chunk_id(doc.doc_id, start, end, digest), "doc_id": doc.doc_id,
                     "source": doc.source, "chunk_index": index, "start": start, "end": end,
                     "text": piece, "content_hash": digest, "n_tokens": n_tokens})
    return rows


# ---------------------------------------------------------------------------------------------
# ingest


def _scope(arg: str):
    """What `--delete-missing` may remove for one input: a predicate on absolute source paths."""
    if glob.has_magic(arg) and not os.path.exists(arg):
        parts = Path(arg).parts
        fixed = next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))
        base = Path(*parts[:fixed]).resolve() if fixed else Path.cwd().resolve()
        pattern = str(base.joinpath(*parts[fixed:]))
        return lambda source: fnmatch.fnmatchcase(source, pattern)
    root = str(Path(arg).resolve())
    if os.path.isfile(arg):
        return lambda source: source == root
    prefix = root.rstrip(os.sep) + os.sep
    return lambda source: source == root or source.startswith(prefix)


def ingest(store: Store, paths: Sequence[str], tokenizer, max_tokens: int, overlap: int = 0,
           delete_missing: bool = False, stdin: TextIO | None = None, model_info: dict | None = None,
           progress: bool = True, follow_symlinks: bool = False) -> IngestReport:
    """Bring the store in line with the inputs in one transaction: new and changed documents are
    chunked and added, unchanged ones cost nothing, rejected inputs are reported."""
    if model_info is not None:
        bound = store.snapshot().model
        if bound and bound.get("fingerprint") != model_info.get("fingerprint"):
            raise ModelMismatchError(
                f"store {store.root} is bound to model {bound.get('fingerprint')} ({bound.get('spec', '?')}), "
                f"not {model_info.get('fingerprint')} ({model_info.get('spec', '?')})")
    if not 0 <= overlap < max_tokens:
        raise ClaraError(f"overlap ({overlap}) must be at least 0 and less than the chunk size ({max_tokens})")

    report = IngestReport()
    with store.writer() as txn:
        if model_info is not None:
            txn.bind_model(model_info)
        known = txn.base.document_hashes()
        seen: dict[str, str] = {}  # doc_id -> where it was read from (duplicates are refused)
        rejected_sources: set[str] = set()
        record_sources: set[str] = set()
        now = time.time()
        doc_rows: list[dict] = []
        chunk_buffer: list[dict] = []
        replaced: list[str] = []

        def flush() -> None:
            if replaced:
                txn.remove_documents(replaced)
            if doc_rows:
                txn.add_documents(pa.Table.from_pylist(doc_rows, schema=DOCUMENT_SCHEMA),
                                  pa.Table.from_pylist(chunk_buffer, schema=CHUNK_SCHEMA))
            replaced.clear()
            doc_rows.clear()
            chunk_buffer.clear()

        with progress_bar(desc="ingest", unit="doc", enabled=progress) as bar:
            for item in read_inputs(paths, stdin=stdin, follow_symlinks=follow_symlinks):
                bar.update(1)
                if isinstance(item, RejectedInput):
                    report.rejected.append(item)
                    rejected_sources.add(item.source)
                    continue
                if item.doc_id != item.source:
                    record_sources.add(item.source)
                if item.doc_id in seen:
                    report.rejected.append(RejectedInput(
                        item.source, f"{item.source}: duplicate document id {item.doc_id!r} "
                                     f"(already read from {seen[item.doc_id]})"))
                    rejected_sources.add(item.source)
                    continue
                seen[item.doc_id] = item.source
                digest = sha256_text(item.text)
                old = known.get(item.doc_id)
                if old == digest:
                    report.unchanged += 1
                    continue
                rows = chunk_rows(item, tokenizer, max_tokens, overlap)
                if old is None:
                    report.added += 1
                else:
                    report.changed += 1
                    replaced.append(item.doc_id)
                doc_rows.append({"doc_id": item.doc_id, "source": item.source, "content_hash": digest,
                                 "n_chars": len(item.text), "metadata": json.dumps(item.metadata, default=str),
                                 "ingested_at": now})
                chunk_buffer.extend(rows)
                report.chunks_added += len(rows)
                if len(chunk_buffer) >= _FLUSH_CHUNKS:
                    flush()
        flush()

        if delete_missing:
            gone = _missing_documents(txn.base, paths, seen, rejected_sources, record_sources)
            txn.remove_documents(gone)
            report.removed = len(gone)
        report.version = txn.commit()
    return report


def _missing_documents(base, paths: Sequence[str], seen: dict[str, str], rejected_sources: set[str],
                       record_sources: set[str]) -> list[str]:
    """Documents of file sources under the inputs that are gone: the file no longer exists, or
    (for JSONL/CSV/Parquet read without any rejection) the record is no longer in it."""
    scopes = [_scope(p) for p in paths if p != "-"]
    if not scopes:
        return []
    rejected_abs = {str(Path(s).resolve()) for s in rejected_sources if s != STDIN_SOURCE}
    docs = base.documents()
    gone = []
    for doc_id, source in zip(docs.column("doc_id").to_pylist(), docs.column("source").to_pylist(), strict=True):
        if doc_id in seen or source == STDIN_SOURCE or not any(scope(source) for scope in scopes):
            continue
        if not os.path.exists(source):
            gone.append(doc_id)
        elif source in record_sources and source not in rejected_abs:
            gone.append(doc_id)
    return gone


__all__ = ["IngestReport", "RejectedInput", "SourceDocument", "chunk_rows", "chunk_text", "count_tokens",
           "html_to_text", "ingest", "make_chunk_id", "read_inputs", "sha256_text"]
