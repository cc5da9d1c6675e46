"""Ingest: read files, folders, globs and stdin; chunk by tokens; diff against the store.

Re-running on unchanged input does no work and writes nothing (content hashes), so a cron
job is cheap; a bad input is reported and never stops the good ones. Memory stays bounded
whatever the input: large text files are hashed and chunked as a stream (never held whole),
JSONL/CSV records are capped in size, and chunk rows are written to the store in batches.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import errno
import fnmatch
import glob
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import TextIO

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ClaraError
from .progress import progress_bar
from .store import CHUNK_SCHEMA, DOCUMENT_SCHEMA, Store, fault_point

TEXT_SUFFIXES = {".txt", ".md"}
HTML_SUFFIXES = {".html", ".htm"}
RECORD_SUFFIXES = {".jsonl", ".csv", ".parquet"}
KNOWN_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | RECORD_SUFFIXES
STDIN_SOURCE = "<stdin>"

_FLUSH_CHUNKS = 20_000  # write a Parquet pair every this many chunks (or _FLUSH_CHARS of chunk text):
_FLUSH_CHARS = 8 << 20  # bounded memory on big corpora and big documents
STREAM_BYTES = 8 << 20  # text files larger than this are read as a stream, twice (hash, then chunk)
MAX_RECORD_CHARS = 32 << 20  # a JSONL line or CSV field longer than this is refused (memory bound)
MAX_HTML_BYTES = 64 << 20  # HTML is parsed whole: bigger pages are refused
_READ_BLOCK = 1 << 20


class SourceDocument:
    """One document read from the inputs. A large file keeps no text in memory: pieces()
    reads it again, and its content hash and length come from a first streaming pass."""

    def __init__(self, doc_id: str, source: str, text: str | None = None, metadata: dict | None = None, *,
                 reader: Callable[[], Iterable[str]] | None = None, content_hash: str | None = None,
                 n_chars: int | None = None):
        if text is None and reader is None:
            raise ValueError("a document needs text or a reader")
        self.doc_id = doc_id
        self.source = source
        self.metadata = metadata if metadata is not None else {}
        self._text = text
        self._reader = reader
        self._hash = content_hash
        self._n_chars = n_chars

    def __repr__(self) -> str:
        return f"SourceDocument({self.doc_id!r}, {self.source!r}, {self.n_chars} chars)"

    @property
    def text(self) -> str:
        """The whole text (read now for a streamed document: avoid on big files)."""
        return self._text if self._text is not None else "".join(self.pieces())

    @property
    def streamed(self) -> bool:
        return self._text is None

    def pieces(self) -> Iterator[str]:
        if self._text is not None:
            yield self._text
        else:
            assert self._reader is not None
            yield from self._reader()

    @property
    def content_hash(self) -> str:
        if self._hash is None:
            self._hash = sha256_text(self.text)
        return self._hash

    @property
    def n_chars(self) -> int:
        if self._n_chars is None:
            self._n_chars = len(self.text)
        return self._n_chars


def one_line(text: str) -> str:
    """Control characters (a newline in a file name) and undecodable bytes of file names
    escaped: the message stays one printable line that any terminal can show."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: undecodable file-name bytes, or JSON "\ud800"
        return False
    return True


@dataclass
class RejectedInput:
    source: str  # the input as the user named it (file path, or "<stdin>")
    message: str  # one line naming the file (and line/row for JSONL/CSV/Parquet)

    def __post_init__(self) -> None:
        self.message = one_line(self.message)


@dataclass
class SkippedInput:
    """Left out on purpose (a link leaving the folder, a folder reached twice): a note, not an error."""

    source: str
    message: str

    def __post_init__(self) -> None:
        self.message = one_line(self.message)


@dataclass
class IngestReport:
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    chunks_added: int = 0
    rejected: list[RejectedInput] = field(default_factory=list)
    skipped: list[SkippedInput] = field(default_factory=list)
    version: int | None = None  # the store version after ingest (unchanged when nothing was written)

    def to_dict(self) -> dict:
        return {"added": self.added, "changed": self.changed, "removed": self.removed,
                "unchanged": self.unchanged, "chunks_added": self.chunks_added,
                "rejected": [{"source": r.source, "message": r.message} for r in self.rejected],
                "skipped": [{"source": r.source, "message": r.message} for r in self.skipped],
                "version": self.version}


class _Reject(Exception):
    """Internal: this input (or record) cannot be read; the message is the one line users see."""


# ---------------------------------------------------------------------------------------------
# decoding and formats


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _iter_decoded(path: Path, name: str) -> Iterator[str]:
    """A text file in pieces: UTF-8, or UTF-16/32 when a BOM says so, line ends made \\n;
    binary or undecodable input is refused (possibly after some pieces: hash it first)."""
    with open(path, "rb") as f:
        head = f.read(4)
        codec = next((c for bom, c in _BOMS if head.startswith(bom)), None)
        f.seek(0)
        decoder = codecs.getincrementaldecoder(codec or "utf-8")("strict")
        consumed, pending_cr = 0, False
        while True:
            block = f.read(_READ_BLOCK)
            final = not block
            if codec is None and b"\0" in block:
                raise _Reject(f"{name}: binary file (contains NUL bytes)")
            buffered = len(decoder.getstate()[0])
            try:
                text = decoder.decode(block, final=final)
            except UnicodeDecodeError as err:
                if codec:
                    raise _Reject(f"{name}: not valid {codec.upper()} text despite its byte-order mark") from None
                offset = consumed - buffered + err.start
                raise _Reject(f"{name}: not UTF-8 text (undecodable byte at offset {offset})") from None
            consumed += len(block)
            if "\0" in text:
                raise _Reject(f"{name}: binary file (contains NUL characters)")
            if pending_cr:
                text, pending_cr = "\r" + text, False
            if text.endswith("\r") and not final:  # maybe half of a \r\n
                text, pending_cr = text[:-1], True
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            if text:
                yield text
            if final:
                return


def _decode_file(path: Path, name: str) -> str:
    return "".join(_iter_decoded(path, name))


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
    if not _utf8_ok(text):
        raise _Reject(f"{where}: {prefix}text is not valid Unicode (a lone surrogate, or undecodable input)")
    ident = obj.get("id")
    if ident is None or ident == "":
        doc_id = f"{source}#{number}"
    elif isinstance(ident, bool) or not isinstance(ident, (str, int)):
        raise _Reject(f"{where}: {prefix}\"id\" must be a string or an integer")
    else:
        doc_id = str(ident)
        if not _utf8_ok(doc_id):
            raise _Reject(f"{where}: {prefix}\"id\" is not valid Unicode")
    metadata = obj.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise _Reject(f"{where}: {prefix}\"metadata\" must be an object")
    return SourceDocument(doc_id, source, text.replace("\r\n", "\n").replace("\r", "\n"), metadata)


def _bounded_lines(stream, limit: int | None = None) -> Iterator[str | bytes | None]:
    """The lines of a text or binary stream; a line longer than limit (MAX_RECORD_CHARS) is read
    past in pieces and comes out as None (memory stays bounded however long a line is)."""
    limit = MAX_RECORD_CHARS if limit is None else limit
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        newline = b"\n" if isinstance(line, bytes) else "\n"
        if len(line) > limit and not line.endswith(newline):
            while True:
                rest = stream.readline(_READ_BLOCK)
                if not rest or rest.endswith(newline):
                    break
            yield None
            continue
        yield line


def _read_jsonl_lines(stream, source: str, name: str) -> Iterator[SourceDocument | RejectedInput]:
    for number, line in enumerate(_bounded_lines(stream), 1):
        where = f"{name}:{number}"
        try:
            if line is None:
                size = f"{MAX_RECORD_CHARS >> 20} MiB" if MAX_RECORD_CHARS >= 1 << 20 else f"{MAX_RECORD_CHARS} characters"
                raise _Reject(f"{where}: line longer than {size} (put a document this long in a .txt file)")
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
    # Documents in a CSV cell easily exceed the csv module's 128 KiB default; a cap keeps memory bounded.
    if csv.field_size_limit() != MAX_RECORD_CHARS:
        csv.field_size_limit(MAX_RECORD_CHARS)


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
    size = os.stat(path).st_size
    if suffix in HTML_SUFFIXES:
        if size > MAX_HTML_BYTES:
            raise _Reject(f"{name}: HTML page larger than {MAX_HTML_BYTES >> 20} MiB (convert it to text)")
        yield SourceDocument(source, source, _check_text(html_to_text(_decode_file(path, name)), name), {})
    elif size <= STREAM_BYTES:
        yield SourceDocument(source, source, _check_text(_decode_file(path, name), name), {})
    else:  # hash it as a stream now; chunking reads it again (and checks it did not change)
        digest, n_chars, blank = hashlib.sha256(), 0, True
        for piece in _iter_decoded(path, name):
            digest.update(piece.encode("utf-8"))
            n_chars += len(piece)
            blank = blank and not piece.strip()
        if blank:
            raise _Reject(f"{name}: empty (no text)")
        yield SourceDocument(source, source, None, {}, reader=lambda: _iter_decoded(path, name),
                             content_hash=digest.hexdigest(), n_chars=n_chars)


# ---------------------------------------------------------------------------------------------
# finding inputs


def _walk(top: str, follow_symlinks: bool) -> Iterator[str | RejectedInput | SkippedInput]:
    """Files with known extensions under a folder, depth first in name order, hidden entries
    skipped. Links leading outside the folder are skipped unless follow_symlinks; every folder
    is visited once (link cycles end); unreadable folders and broken links are named. Iterative:
    any nesting depth works."""
    top_real = os.path.realpath(top)
    visited: set[tuple[int, int]] = set()

    def inside(path: str) -> bool:
        return path == top_real or path.startswith(top_real.rstrip(os.sep) + os.sep)

    def listing(folder: str) -> list[os.DirEntry] | RejectedInput | None:
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in visited:
                return None
            visited.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                return sorted(it, key=lambda e: e.name)
        except OSError as err:
            return RejectedInput(folder, f"{folder}: cannot read folder ({err.strerror or err})")

    first = listing(top)
    if isinstance(first, RejectedInput):
        yield first
        return
    stack: list[Iterator[os.DirEntry]] = [iter(first or [])]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        if entry.name.startswith("."):
            continue
        known = os.path.splitext(entry.name)[1].lower() in KNOWN_SUFFIXES
        try:
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if not os.path.exists(target):
                    try:
                        os.stat(entry.path)
                        why = "broken symbolic link"
                    except OSError as err:
                        why = "symbolic link loop" if err.errno == errno.ELOOP else "broken symbolic link"
                    yield (RejectedInput if known else SkippedInput)(entry.path, f"{entry.path}: {why}")
                    continue
                if not follow_symlinks and not inside(target):
                    yield SkippedInput(entry.path, f"{entry.path}: symbolic link leaves the folder "
                                                   "(--follow-symlinks reads it)")
                    continue
            if entry.is_dir():
                sub = listing(entry.path)
                if sub is None:
                    yield SkippedInput(entry.path, f"{entry.path}: folder already read (a link cycle)")
                elif isinstance(sub, RejectedInput):
                    yield sub
                else:
                    stack.append(iter(sub))
            elif known and entry.is_file():
                yield entry.path
        except OSError as err:
            yield RejectedInput(entry.path, f"{entry.path}: cannot read ({err.strerror or err})")


def _expand(arg: str, follow_symlinks: bool) -> Iterator[str | RejectedInput | SkippedInput]:
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
                ) -> Iterator[SourceDocument | RejectedInput | SkippedInput]:
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
            if isinstance(item, (RejectedInput, SkippedInput)):
                yield item
                continue
            path = item
            source = str(Path(path).resolve())
            if source in seen:
                continue
            seen.add(source)
            if not _utf8_ok(source):
                yield RejectedInput(path, f"{path}: file name is not valid UTF-8 (rename the file)")
                continue
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


def _fast_backend(tokenizer):
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and (backend.truncation is not None or backend.padding is not None):
        return None
    return backend


class _TokenStream:
    """The tokens of a text that arrives in pieces, kept only as far back as the chunker needs.

    Text is tokenized in segments of about _SEGMENT characters cut at a single space or newline
    between words (byte-level BPE pre-tokenizes there anyway, so tokens come out as in one call);
    the cut depends only on the next _SEGMENT + 2 characters, so streaming gives the same tokens
    as a whole text. Token k is addressed by its global index; offsets are global characters.
    """

    def __init__(self, pieces: Iterable[str], tokenizer):
        self._pieces = iter(pieces)
        self._tokenizer = tokenizer
        self._backend = _fast_backend(tokenizer)
        self._buf = ""  # text from global character self._buf_base on
        self._buf_base = 0
        self._text_done = False
        self._seg_start = 0  # global character where the next segment starts
        self._starts: list[int] = []  # global offsets of tokens self._tok_base, self._tok_base + 1, ...
        self._ends: list[int] = []
        self._tok_base = 0
        self.finished = False  # every character is tokenized

    def _buf_end(self) -> int:
        return self._buf_base + len(self._buf)

    def _offsets(self, piece: str) -> list[tuple[int, int]]:
        if self._backend is not None:
            return self._backend.encode(piece, add_special_tokens=False).offsets
        try:
            return self._tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        except NotImplementedError:
            raise ClaraError("chunking needs a fast tokenizer (one with offset mappings)") from None

    def _tokenize_next(self) -> bool:
        """Tokenize one more segment; False once everything is tokenized."""
        if self.finished:
            return False
        start = self._seg_start
        # Enough text for the cut rule, plus room for boundary checks beyond the last token.
        need = start + _SEGMENT + 2 + 2 * _SCAN + 4
        while self._buf_end() < need and not self._text_done:
            piece = next(self._pieces, None)
            if piece is None:
                self._text_done = True
            else:
                self._buf += piece
        text, rel = self._buf, start - self._buf_base
        if self._buf_end() - start > _SEGMENT + 1:  # the rule of the whole-text segmentation
            cut, lo = rel + _SEGMENT, rel + _SEGMENT // 2
            while cut > lo and not (text[cut] in " \n" and not text[cut - 1].isspace()
                                    and not text[cut + 1].isspace()):
                cut -= 1
            if cut == lo:
                cut = rel + _SEGMENT
        else:
            cut = len(text)
        if cut > rel:
            for s, e in self._offsets(text[rel:cut]):
                if e > s:
                    self._starts.append(s + start)
                    self._ends.append(e + start)
        self._seg_start = start + (cut - rel)
        if self._text_done and self._seg_start >= self._buf_end():
            self.finished = True
        return True

    def has(self, k: int) -> bool:
        """Whether token k exists (tokenizing as far as needed to know)."""
        while k - self._tok_base >= len(self._starts):
            if not self._tokenize_next():
                return False
        return True

    def start(self, k: int) -> int:
        return self._starts[k - self._tok_base]

    def end(self, k: int) -> int:
        return self._ends[k - self._tok_base]

    def count(self) -> int:
        """Tokens in all (only meaningful once finished)."""
        return self._tok_base + len(self._starts)

    def text(self, a: int, b: int) -> str:
        a, b = max(a, self._buf_base), min(b, self._buf_end())
        return self._buf[a - self._buf_base:b - self._buf_base]

    def release(self, k: int) -> None:
        """Forget tokens before k and text well before token k (amortised: in big steps)."""
        drop = k - self._tok_base
        if drop > 4096:
            del self._starts[:drop]
            del self._ends[:drop]
            self._tok_base = k
        if self.has(k):
            keep_from = self.start(k) - 4 * _SCAN
            if keep_from - self._buf_base > _READ_BLOCK:
                self._buf = self._buf[keep_from - self._buf_base:]
                self._buf_base = keep_from


def _boundary_score_at(tokens: _TokenStream, pos: int) -> int:
    """_boundary_score on the part of the streamed text around pos (it looks _SCAN + 2 each way)."""
    base = max(0, pos - _SCAN - 4)
    return _boundary_score(tokens.text(base, pos + _SCAN + 4), pos - base)


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
    return [(a, b, n) for a, b, n, _ in chunk_stream([text], tokenizer, max_tokens, overlap)]


def chunk_stream(pieces: Iterable[str], tokenizer, max_tokens: int, overlap: int = 0
                 ) -> Iterator[tuple[int, int, int, str]]:
    """chunk_text over a text given in pieces: (start, end, n_tokens, chunk text) one by one,
    with memory bounded by a window of tokens, whatever the length of the text."""
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    if not 0 <= overlap < max_tokens:
        raise ValueError("overlap must be at least 0 and less than max_tokens")
    tokens = _TokenStream(pieces, tokenizer)
    has, start, end = tokens.has, tokens.start, tokens.end

    def clean(k: int) -> bool:  # no character shared by tokens k-1 and k (multi-byte chars)
        return k <= 0 or not has(k) or start(k) >= end(k - 1)

    window_tail = max(1, max_tokens // 5)
    i = 0
    while has(i):
        j = i + max_tokens
        at_end = not has(j)
        if at_end:
            j = tokens.count()
        k = j
        if not at_end:
            best, best_score = None, 0
            for cand in range(j, max(i, j - window_tail), -1):
                if clean(cand):
                    score = _boundary_score_at(tokens, start(cand))
                    if score > best_score:
                        best, best_score = cand, score
                        if score == 3:
                            break
            if best is None:
                best = next((c for c in range(j, i, -1) if clean(c)), None)
                if best is None:  # degenerate: a window inside one character
                    best = j + 1
                    while not clean(best):
                        best += 1
            k = best
        while True:
            a, b = start(i), end(k - 1)
            raw = tokens.text(a, b)
            piece = raw.strip()
            a += len(raw) - len(raw.lstrip())
            b = a + len(piece)
            count = count_tokens(piece, tokenizer) if piece else 0
            if count <= max_tokens:
                break
            # Re-tokenising the stripped text can merge differently at its edges: end earlier.
            shorter = next((c for c in range(k - 1, i, -1) if clean(c)), None)
            if shorter is None:
                break
            k = shorter
        if piece:
            yield a, b, count, piece
        if not has(k):
            break
        nxt = max(k - overlap, i + 1)
        while nxt > i + 1 and not clean(nxt):
            nxt -= 1
        while not clean(nxt):
            nxt += 1
        i = nxt
        tokens.release(i)


def make_chunk_id(doc_id: str, start: int, end: int, content_hash: str) -> str:
    """16 hex digits of a 63-bit number: int(chunk_id, 16) is the int64 key FAISS uses."""
    digest = hashlib.sha256(f"{doc_id}\0{start}\0{end}\0{content_hash}".encode()).digest()
    return f"{int.from_bytes(digest[:8], 'big') >> 1:016x}"


def iter_chunk_rows(doc: SourceDocument, tokenizer, max_tokens: int, overlap: int = 0) -> Iterator[dict]:
    """The chunk table rows of one document, one at a time (a streamed document is re-read and
    must still hash to its content_hash: a file changed since it was hashed is refused)."""
    digest = hashlib.sha256() if doc.streamed else None

    def pieces() -> Iterator[str]:
        for piece in doc.pieces():
            if digest is not None:
                digest.update(piece.encode("utf-8"))
            yield piece

    for index, (start, end, n_tokens, piece) in enumerate(chunk_stream(pieces(), tokenizer, max_tokens, overlap)):
        piece_hash = sha256_text(piece)
        yield {"chunk_id": make_chunk_id(doc.doc_id, start, end, piece_hash), "doc_id": doc.doc_id,
               "source": doc.source, "chunk_index": index, "start": start, "end": end,
               "text": piece, "content_hash": piece_hash, "n_tokens": n_tokens}
    if digest is not None and digest.hexdigest() != doc.content_hash:
        raise _Reject(f"{doc.source}: changed while being read (it is read again next run)")


def chunk_rows(doc: SourceDocument, tokenizer, max_tokens: int, overlap: int = 0) -> list[dict]:
    """The chunk table rows of one document."""
    return list(iter_chunk_rows(doc, tokenizer, max_tokens, overlap))


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
           progress: bool = True, follow_symlinks: bool = False, wait: bool = True) -> IngestReport:
    """Bring the store in line with the inputs in one transaction: new and changed documents are
    chunked and added, unchanged ones cost nothing, rejected inputs are reported.

    One commit at the end: a run killed midway leaves the store as it was (plus orphan files)."""
    if model_info is not None:  # before any work (the transaction checks again when it binds)
        with store.snapshot() as snapshot:
            snapshot.check_model(model_info.get("fingerprint"))
    if not 0 <= overlap < max_tokens:
        raise ClaraError(f"overlap ({overlap}) must be at least 0 and less than the chunk size ({max_tokens})")

    report = IngestReport()
    with store.writer(wait=wait) as txn:
        if model_info is not None:
            txn.bind_model(model_info)
        known = txn.base.document_hashes()
        seen: dict[str, str] = {}  # doc_id -> where it was read from (duplicates are refused)
        rejected_sources: set[str] = set()
        record_sources: set[str] = set()
        now = time.time()
        doc_rows: list[dict] = []
        chunk_buffer: list[dict] = []
        buffered_chars = 0
        replaced: list[str] = []

        def flush() -> None:
            nonlocal buffered_chars
            if replaced:
                txn.remove_documents(replaced)
            if doc_rows or chunk_buffer:
                txn.add_documents(pa.Table.from_pylist(doc_rows, schema=DOCUMENT_SCHEMA),
                                  pa.Table.from_pylist(chunk_buffer, schema=CHUNK_SCHEMA))
            replaced.clear()
            doc_rows.clear()
            chunk_buffer.clear()
            buffered_chars = 0

        def reject(item: RejectedInput) -> None:
            report.rejected.append(item)
            rejected_sources.add(item.source)

        with progress_bar(desc="ingest", unit="doc", enabled=progress) as bar:
            for item in read_inputs(paths, stdin=stdin, follow_symlinks=follow_symlinks):
                bar.update(1)
                fault_point("doc")
                if isinstance(item, SkippedInput):
                    report.skipped.append(item)
                    continue
                if isinstance(item, RejectedInput):
                    reject(item)
                    continue
                if item.doc_id != item.source:
                    record_sources.add(item.source)
                if item.doc_id in seen:
                    reject(RejectedInput(item.source, f"{item.source}: duplicate document id {item.doc_id!r} "
                                                      f"(already read from {seen[item.doc_id]})"))
                    continue
                seen[item.doc_id] = item.source
                digest = item.content_hash
                old = known.get(item.doc_id)
                if old == digest:
                    report.unchanged += 1
                    continue
                if old is not None:
                    replaced.append(item.doc_id)
                doc_rows.append({"doc_id": item.doc_id, "source": item.source, "content_hash": digest,
                                 "n_chars": item.n_chars, "metadata": json.dumps(item.metadata, default=str),
                                 "ingested_at": now})
                mark, flushed, n_rows = len(chunk_buffer), False, 0
                try:
                    for row in iter_chunk_rows(item, tokenizer, max_tokens, overlap):
                        chunk_buffer.append(row)
                        n_rows += 1
                        buffered_chars += len(row["text"])
                        if len(chunk_buffer) >= _FLUSH_CHUNKS or buffered_chars >= _FLUSH_CHARS:
                            flush()
                            flushed = True
                except (_Reject, OSError) as err:
                    # The file changed or vanished between hashing and chunking: leave it out.
                    message = str(err) if isinstance(err, _Reject) else \
                        f"{item.source}: cannot read ({err.strerror or err})"
                    if flushed:  # its document row is written: hide it again
                        flush()
                        txn.remove_documents([item.doc_id])
                    else:
                        del chunk_buffer[mark:]
                        doc_rows.pop()
                        if old is not None:
                            replaced.remove(item.doc_id)
                    seen.pop(item.doc_id, None)
                    reject(RejectedInput(item.source, message))
                    continue
                report.added += old is None
                report.changed += old is not None
                report.chunks_added += n_rows
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


__all__ = ["IngestReport", "RejectedInput", "SkippedInput", "SourceDocument", "chunk_rows", "chunk_stream",
           "chunk_text", "count_tokens", "html_to_text", "ingest", "iter_chunk_rows", "make_chunk_id", "one_line",
           "read_inputs", "sha256_text"]
