"""Ingest: read files, folders, globs and stdin (readers.py); chunk by tokens; diff against the store.

Re-running on unchanged input does no work and writes nothing (content hashes), so a cron
job is cheap; a bad input is reported and never stops the good ones. Memory stays bounded
whatever the input: large text files are hashed and chunked as a stream (never held whole),
JSONL/CSV records are capped in size, and chunk rows are written to the store in batches.
"""

from __future__ import annotations

import bisect
import fnmatch
import glob
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import pyarrow as pa

from .errors import ClaraError
from .progress import progress_bar
from .readers import (  # noqa: F401 - re-exported: ingest's public names before readers.py split off
    HTML_SUFFIXES,
    KNOWN_SUFFIXES,
    MAX_BINARY_DOC_BYTES,
    MAX_HTML_BYTES,
    MAX_RECORD_CHARS,
    MAX_TEXT_BYTES,
    RECORD_SUFFIXES,
    STDIN_SOURCE,
    STREAM_BYTES,
    TEXT_SUFFIXES,
    RejectedInput,
    SkippedInput,
    SourceDocument,
    _Reject,
    html_to_text,
    human_size,
    one_line,
    read_inputs,
    sha256_text,
)
from .store import CHUNK_SCHEMA, DOCUMENT_SCHEMA, Store, fault_point, make_chunk_id

_READ_BLOCK = 1 << 20
_FLUSH_CHUNKS = 20_000  # write a Parquet pair every this many chunks (or _FLUSH_CHARS of chunk text):
_FLUSH_CHARS = 8 << 20  # bounded memory on big corpora and big documents


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


def page_source(source: str, pages: list[tuple[int, int]] | None, start: int) -> str:
    """A chunk's source: the file, plus "#page=N" (the fragment PDF viewers open at) for a
    document read page by page; chunks of such a document never cross a page."""
    if not pages:
        return source
    at = bisect.bisect_right([first for first, _ in pages], start) - 1
    return f"{source}#page={pages[max(at, 0)][1]}"


def _page_spans(doc: SourceDocument, tokenizer, max_tokens: int, overlap: int
                ) -> Iterator[tuple[int, int, int, str]]:
    """chunk_stream page by page (offsets into the whole text): a chunk names exactly one page."""
    text = doc.text
    firsts = [first for first, _ in doc.pages or []]
    for i, first in enumerate(firsts):
        end = firsts[i + 1] if i + 1 < len(firsts) else len(text)
        for a, b, n, piece in chunk_stream([text[first:end]], tokenizer, max_tokens, overlap):
            yield a + first, b + first, n, piece


def iter_chunk_rows(doc: SourceDocument, tokenizer, max_tokens: int, overlap: int = 0) -> Iterator[dict]:
    """The chunk table rows of one document, one at a time (a streamed document is re-read and
    must still hash to its content_hash: a file changed since it was hashed is refused)."""
    digest = hashlib.sha256() if doc.streamed else None
    pages = getattr(doc, "pages", None)

    def pieces() -> Iterator[str]:
        for piece in doc.pieces():
            if digest is not None:
                digest.update(piece.encode("utf-8"))
            yield piece

    spans = _page_spans(doc, tokenizer, max_tokens, overlap) if pages and not doc.streamed else \
        chunk_stream(pieces(), tokenizer, max_tokens, overlap)
    for index, (start, end, n_tokens, piece) in enumerate(spans):
        piece_hash = sha256_text(piece)
        yield {"chunk_id": make_chunk_id(doc.doc_id, start, end, piece_hash), "doc_id": doc.doc_id,
               "source": page_source(doc.source, pages, start), "chunk_index": index, "start": start, "end": end,
               "text": piece, "content_hash": piece_hash, "n_tokens": n_tokens}
    if digest is not None and digest.hexdigest() != doc.content_hash:
        raise _Reject(f"{doc.source}: changed while being read (it is read again next run)")


# ---------------------------------------------------------------------------------------------
# ingest


def missing_inputs(paths: Sequence[str]) -> list[RejectedInput]:
    """The inputs that name nothing: no such file or folder, a glob that matches nothing. A
    command that would create a store checks them first, so a typo creates no empty store."""
    missing = []
    for arg in paths:
        if arg == "-" or os.path.lexists(arg):
            continue
        if glob.has_magic(arg):
            if not glob.glob(arg, recursive=True):
                missing.append(RejectedInput(arg, f"{arg}: no files match"))
        else:
            missing.append(RejectedInput(arg, f"{arg}: no such file or directory"))
    return missing


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
           progress: bool = True, follow_symlinks: bool = False, wait: bool = True,
           max_file_size: int | None = None) -> IngestReport:
    """Bring the store in line with the inputs in one transaction: new and changed documents are
    chunked and added, unchanged ones cost nothing, rejected and skipped inputs are reported
    (max_file_size: see read_inputs).

    One commit at the end: a run killed midway leaves the store as it was (plus orphan files)."""
    if model_info is not None:  # before any work (the transaction checks again when it binds)
        with store.snapshot() as snapshot:
            snapshot.check_model(model_info.get("fingerprint"))
    if not 0 <= overlap < max_tokens:
        raise ClaraError(f"overlap ({overlap}) must be at least 0 and less than the chunk size ({max_tokens})")

    report = IngestReport()
    with store.writer(wait=wait) as txn:
        if model_info is not None:
            from .compress import bind_store_model

            bind_store_model(txn, model_info)
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
            for item in read_inputs(paths, stdin=stdin, follow_symlinks=follow_symlinks,
                                    max_file_size=max_file_size):
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


__all__ = ["IngestReport", "RejectedInput", "SkippedInput", "SourceDocument", "chunk_stream",
           "chunk_text", "count_tokens", "html_to_text", "ingest", "iter_chunk_rows", "make_chunk_id",
           "missing_inputs", "one_line", "page_source", "read_inputs", "sha256_text"]
