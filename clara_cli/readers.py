"""Readers: files, folders, globs and stdin -> documents, one file format at a time.

Every input ends as a document, or as one line saying why not: rejected (it claims a format it
does not hold: binary in a .txt, a broken PDF, a zip bomb) or skipped (left out on purpose: an
unsupported format, a file over the size cap, a scanned PDF without a text layer, a link out of
the folder). Nothing is dropped silently and no file is stored as markup. Formats are read by
well-kept libraries (pypdf, python-docx, charset-normalizer); memory stays bounded (text files
stream, records and pages have caps, a DOCX's zip is checked before it is opened).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pyarrow as pa
import pyarrow.parquet as pq

from .jsonl import BadJsonLine, parse_json_line
from .readers_html import html_to_text

# Plain text kinds, read as they are (prose, markup people write by hand, source code, config).
TEXT_SUFFIXES = {
    ".txt", ".text", ".md", ".markdown", ".rst", ".org", ".tex", ".adoc", ".asciidoc", ".log", ".nfo",
    ".py", ".pyi", ".js", ".mjs", ".cjs", ".ts", ".tsx", ".jsx", ".java", ".kt", ".kts",
    ".scala", ".groovy", ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".cs", ".go", ".rs", ".rb",
    ".php", ".swift", ".m", ".mm", ".r", ".jl", ".lua", ".pl", ".pm", ".sh", ".bash", ".zsh", ".fish",
    ".ps1", ".bat", ".sql", ".hs", ".ml", ".mli", ".ex", ".exs", ".erl", ".clj", ".dart", ".el",
    ".lisp", ".scm", ".vim", ".f90", ".zig", ".nim", ".proto", ".graphql", ".cmake", ".mk",
    ".json", ".yaml", ".yml", ".toml", ".ini", ".cfg", ".conf", ".properties", ".env", ".tsv",
}
# Files without an extension that are text by convention.
TEXT_NAMES = {"readme", "license", "licence", "copying", "authors", "changelog", "changes", "news",
              "notice", "todo", "makefile", "dockerfile", "containerfile", "gemfile", "rakefile",
              "procfile", "vagrantfile", "justfile"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
PDF_SUFFIXES = {".pdf"}
DOCX_SUFFIXES = {".docx"}
RECORD_SUFFIXES = {".jsonl", ".csv", ".parquet"}
KNOWN_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES | DOCX_SUFFIXES | RECORD_SUFFIXES
STDIN_SOURCE = "<stdin>"

# Size caps (`--max-file-size`): a document file larger than this is skipped with one line.
# Record files (JSONL/CSV/Parquet) hold many documents and are not capped (each record is).
MAX_TEXT_BYTES = 10 << 20  # text, HTML, source code
MAX_BINARY_DOC_BYTES = 100 << 20  # PDF and DOCX (mostly fonts and images, little text)

STREAM_BYTES = 8 << 20  # text files larger than this are read as a stream, twice (hash, then chunk)
MAX_RECORD_CHARS = 32 << 20  # a JSONL line or CSV field longer than this is refused (memory bound)
MAX_HTML_BYTES = 64 << 20  # HTML is parsed whole: bigger pages are refused
MAX_DOCX_XML_BYTES = 256 << 20  # a DOCX's parts, uncompressed, in all (python-docx parses them whole)
MAX_ZIP_RATIO = 200  # a DOCX part that inflates more than this (and past 1 MiB) is a zip bomb
MAX_PDF_TEXT_CHARS = 64 << 20  # text extracted from one PDF, in all
_READ_BLOCK = 1 << 20


class SourceDocument:
    """One document read from the inputs. A large file keeps no text in memory: pieces()
    reads it again, and its content hash and length come from a first streaming pass.
    `pages` ([(first character, page number)], ascending) lets a chunk name its PDF page."""

    def __init__(self, doc_id: str, source: str, text: str | None = None, metadata: dict | None = None, *,
                 reader: Callable[[], Iterable[str]] | None = None, content_hash: str | None = None,
                 n_chars: int | None = None, pages: list[tuple[int, int]] | None = None):
        if text is None and reader is None:
            raise ValueError("a document needs text or a reader")
        self.doc_id = doc_id
        self.source = source
        self.metadata = metadata if metadata is not None else {}
        self.pages = pages
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


class _Reject(Exception):
    """Internal: this input (or record) cannot be read; the message is the one line users see."""


class _NotUTF8(_Reject):
    """Internal: a text file without a BOM that is not UTF-8 (its encoding is detected next)."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset


class _Skip(Exception):
    """Internal: this input is left out on purpose (unsupported format, over the size cap,
    no text layer); the message is the one line users see."""


# ---------------------------------------------------------------------------------------------
# decoding and formats


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _iter_decoded(path: Path, name: str, encoding: str | None = None) -> Iterator[str]:
    """A text file in pieces: UTF-8 (or `encoding`, as detected), or UTF-16/32 when a BOM says
    so, line ends made \\n; binary or undecodable input is refused (possibly after some pieces:
    hash it first). Without `encoding`, a file that is not UTF-8 raises _NotUTF8."""
    with open(path, "rb") as f:
        head = f.read(4)
        codec = next((c for bom, c in _BOMS if head.startswith(bom)), None)
        by_bom = codec is not None
        codec = codec or encoding
        f.seek(0)
        decoder = codecs.getincrementaldecoder(codec or "utf-8")("strict")
        consumed, pending_cr = 0, False
        while True:
            block = f.read(_READ_BLOCK)
            final = not block
            if not by_bom and b"\0" in block:
                raise _Reject(f"{name}: binary file (contains NUL bytes)")
            buffered = len(decoder.getstate()[0])
            try:
                text = decoder.decode(block, final=final)
            except UnicodeDecodeError as err:
                if by_bom:
                    raise _Reject(f"{name}: not valid {codec.upper()} text despite its byte-order mark") from None
                offset = consumed - buffered + err.start
                if codec:
                    raise _Reject(f"{name}: not text (not UTF-8, and not {codec} as it first seemed: "
                                  f"undecodable byte at offset {offset})") from None
                raise _NotUTF8(f"{name}: not UTF-8 text (undecodable byte at offset {offset})", offset) from None
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


_SAMPLE = 1 << 20  # bytes charset-normalizer looks at, from the start and around the first non-UTF-8 byte


_CP1252_MARKS = set("\u2018\u2019\u201a\u201c\u201d\u201e\u2013\u2014\u2026\u20ac\u2022\u2020\u2021"
                    "\u00ab\u00bb\u00b0\u00a7\u00a9\u00ae\u2122\u00b7\u00a1\u00bf\u00a0\u00b4\u00a3")


def _looks_western(sample: bytes) -> bool:
    """Whether bytes read as Windows-1252 give Western text: its non-ASCII characters are letters
    or common typographic marks, and a minority of the letters (accents in English, French,
    German, Spanish...). charset-normalizer ranks single-byte code pages arbitrarily on such text
    ("café" came out as cp1006, "très" as cp1250's "trčs"); Cyrillic or Greek in their code pages
    read as cp1252 are nearly all non-ASCII letters, so they go to charset-normalizer."""
    try:
        text = sample.decode("cp1252")
    except UnicodeDecodeError:
        return False
    ascii_letters = other_letters = 0
    for c in text:
        if c.isascii():
            ascii_letters += c.isalpha()
        elif c.isalpha():
            other_letters += 1
        elif c not in _CP1252_MARKS:
            return False
    return other_letters <= 0.3 * (ascii_letters + other_letters)


def _detect_encoding(path: Path, name: str, offset: int) -> str:
    """The legacy encoding of a text file that is not UTF-8, judged from the file's start and the
    part around its first non-UTF-8 byte (memory stays bounded): Windows-1252 for Western text,
    else charset-normalizer's best guess (cp1251, Shift_JIS, ...); refused when nothing fits."""
    from charset_normalizer import from_bytes

    with open(path, "rb") as f:
        sample = f.read(_SAMPLE)
        if offset > len(sample) - 64:
            f.seek(max(len(sample), offset - _SAMPLE // 2))
            sample += b"\n" + f.read(_SAMPLE)
    if _looks_western(sample):
        return "cp1252"
    best = from_bytes(sample).best()
    if best is None or best.encoding in ("utf_8", "ascii"):
        raise _Reject(f"{name}: not text (not UTF-8, and no other encoding gives plausible text)")
    return best.encoding


def _decode_file(path: Path, name: str) -> tuple[str, str | None]:
    """The whole text of a file and the encoding it was detected in (None: UTF-8 or a BOM)."""
    try:
        return "".join(_iter_decoded(path, name)), None
    except _NotUTF8 as err:
        encoding = _detect_encoding(path, name, err.offset)
    return "".join(_iter_decoded(path, name, encoding)), encoding


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
                obj = parse_json_line(line, where)
            except BadJsonLine as err:
                raise _Reject(str(err)) from None
            if not isinstance(obj, dict):
                raise _Reject(f"{where}: expected a JSON object, got {type(obj).__name__}")
            yield _record(source, number, obj, where)
        except _Reject as err:
            yield RejectedInput(name, str(err))


def _lines_of(pieces: Iterator[str]) -> Iterator[str]:
    """Lines (with their \n) of a text that comes in pieces, for the csv module."""
    rest = ""
    for piece in pieces:
        *lines, rest = (rest + piece).split("\n")
        yield from (line + "\n" for line in lines)
    if rest:
        yield rest


def _read_csv(path: Path, source: str, name: str) -> Iterator[SourceDocument | RejectedInput]:
    """Rows of a CSV file with a "text" column, decoded as text files are (UTF-8, a BOM's
    UTF-16/32, or the legacy encoding detected: a spreadsheet saved as Windows-1252)."""
    _raise_csv_field_limit()
    try:
        encoding = None
        for _ in _iter_decoded(path, name):  # a decoding pass first: rows cannot be taken back
            pass
    except _NotUTF8 as err:
        encoding = _detect_encoding(path, name, err.offset)
    with contextlib.closing(_iter_decoded(path, name, encoding)) as pieces:
        reader = csv.DictReader(_lines_of(pieces))
        try:
            fields = reader.fieldnames
        except csv.Error as err:
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
            except (csv.Error, _Reject) as err:  # _Reject: the file changed since the decoding pass
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


def _size_cap(suffix: str, max_file_size: int | None) -> int | None:
    """The cap for one file: max_file_size if given (0: none), else the default of its kind."""
    if max_file_size is not None:
        return max_file_size or None
    return MAX_BINARY_DOC_BYTES if suffix in PDF_SUFFIXES | DOCX_SUFFIXES else MAX_TEXT_BYTES


def parse_size(text: str) -> int:
    """"10M", "500K", "1.5G", "2048" (bytes; K/M/G are powers of 1024) -> bytes; ValueError if not."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 500K, 10M, 1G, or 0 for no cap)")
    return int(float(match.group(1)) * (1 << (10 * " KMGT".index(match.group(2) or " "))))


def human_size(n: int) -> str:
    """Bytes for people: 10 MiB, 1.5 KiB, 12 bytes."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) or value >= 100 else f"{value:.1f} {unit}"
    return f"{n} bytes"


def _text_document(path: Path, name: str, source: str, size: int) -> SourceDocument:
    """A plain text file: whole when small; hashed as a stream now and re-read when chunked
    (which checks it did not change) when large. Legacy encodings are detected."""
    if size <= STREAM_BYTES:
        text, encoding = _decode_file(path, name)
        return SourceDocument(source, source, _check_text(text, name), {"encoding": encoding} if encoding else {})
    encoding = None
    while True:
        digest, n_chars, blank = hashlib.sha256(), 0, True
        try:
            for piece in _iter_decoded(path, name, encoding):
                digest.update(piece.encode("utf-8"))
                n_chars += len(piece)
                blank = blank and not piece.strip()
            break
        except _NotUTF8 as err:
            encoding = _detect_encoding(path, name, err.offset)
    if blank:
        raise _Reject(f"{name}: empty (no text)")
    return SourceDocument(source, source, None, {"encoding": encoding} if encoding else {},
                          reader=lambda: _iter_decoded(path, name, encoding),
                          content_hash=digest.hexdigest(), n_chars=n_chars)


def _read_records(path: Path, name: str, source: str, suffix: str) -> Iterator[SourceDocument | RejectedInput]:
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


def _read_file(path: Path, name: str, source: str, max_file_size: int | None = None
               ) -> Iterator[SourceDocument | RejectedInput]:
    """One file by its extension (text kinds, HTML, PDF, DOCX, records); a file without one is
    read as text if it is text. Raises _Skip for an unsupported format or a file over its cap,
    _Reject for one that is not what its extension says."""
    suffix = path.suffix.lower()
    if suffix in RECORD_SUFFIXES:
        yield from _read_records(path, name, source, suffix)
        return
    if suffix and suffix not in KNOWN_SUFFIXES:
        raise _Skip(f"{name}: unsupported format {suffix}")
    size = os.stat(path).st_size
    cap = _size_cap(suffix, max_file_size)
    if cap is not None and size > cap:
        raise _Skip(f"{name}: {human_size(size)}, over the size cap of {human_size(cap)} (--max-file-size)")
    if suffix in PDF_SUFFIXES:
        from .readers_office import _read_pdf

        yield _read_pdf(path, name, source)
    elif suffix in DOCX_SUFFIXES:
        from .readers_office import _read_docx

        yield _read_docx(path, name, source)
    elif suffix in HTML_SUFFIXES:
        if size > MAX_HTML_BYTES:
            raise _Reject(f"{name}: HTML page larger than {MAX_HTML_BYTES >> 20} MiB (convert it to text)")
        text, encoding = _decode_file(path, name)
        yield SourceDocument(source, source, _check_text(html_to_text(text), name),
                             {"encoding": encoding} if encoding else {})
    elif suffix or path.name.lower() in TEXT_NAMES:
        yield _text_document(path, name, source, size)
    else:  # no extension: text if it is text
        try:
            yield _text_document(path, name, source, size)
        except _Reject as err:
            if "binary file" not in str(err) and not str(err).startswith(f"{name}: not text"):
                raise
            raise _Skip(f"{name}: unsupported format (no extension, and not text)") from None


# ---------------------------------------------------------------------------------------------
# finding inputs


def read_inputs(paths: Sequence[str], stdin: TextIO | None = None, follow_symlinks: bool = False,
                max_file_size: int | None = None) -> Iterator[SourceDocument | RejectedInput | SkippedInput]:
    """Documents from files, folders, globs and `-` (JSON Lines on stdin), in a stable order.

    A file reached twice (named twice, or through a link) is read once. A document file larger
    than max_file_size bytes is skipped (None: MAX_TEXT_BYTES for text, MAX_BINARY_DOC_BYTES
    for PDF/DOCX; 0: no cap).
    """
    from .readers_walk import _expand

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
                yield from _read_file(Path(path), path, source, max_file_size)
            except _Skip as err:
                yield SkippedInput(path, str(err))
            except _Reject as err:
                yield RejectedInput(path, str(err))
            except OSError as err:
                yield RejectedInput(path, f"{path}: cannot read ({err.strerror or err})")


