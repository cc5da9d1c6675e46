"""PDF and DOCX readers (readers.py reads every other kind and calls these by extension): the text
layer of a PDF page by page, the body of a Word document in order; damaged, encrypted, scanned
and zip-bomb files are refused or skipped with one line. pypdf and python-docx load on first use."""

from __future__ import annotations

import contextlib
import logging
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

from .readers import (
    MAX_DOCX_XML_BYTES,
    MAX_PDF_TEXT_CHARS,
    MAX_ZIP_RATIO,
    SourceDocument,
    _check_text,
    _Reject,
    _Skip,
    _utf8_ok,
    human_size,
)


@contextlib.contextmanager
def _quiet_library_logs(*names: str) -> Iterator[None]:
    """Parsers log their complaints about damaged files as warnings; the user gets our one line."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _clean_extracted(text: str) -> str:
    """Text from a PDF or DOCX as plain text: line ends \\n, no control characters, valid UTF-8."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    if not _utf8_ok(text):
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.strip()


def _read_pdf(path: Path, name: str, source: str) -> SourceDocument:
    """The text layer of a PDF, page by page (pages joined by a blank line; `pages` maps a
    character to its page: chunks are cut page by page and say "#page=3"). An encrypted PDF opens only when its
    user password is empty; one with no text anywhere is skipped (a scan: OCR it first)."""
    from pypdf import PdfReader

    with _quiet_library_logs("pypdf"):
        try:
            reader = PdfReader(path)
            if reader.is_encrypted:
                try:
                    opened = reader.decrypt("")
                except Exception as err:  # noqa: BLE001 - e.g. AES without a crypto library
                    raise _Reject(f"{name}: encrypted PDF that cannot be opened ({_first_line(err)})") from None
                if not opened:
                    raise _Reject(f"{name}: encrypted PDF (it needs a password: save a copy without one)")
            parts: list[str] = []
            pages: list[tuple[int, int]] = []
            offset, n_pages, images = 0, len(reader.pages), 0
            for number, page in enumerate(reader.pages, 1):
                text = _clean_extracted(page.extract_text() or "")
                if not text:
                    with contextlib.suppress(Exception):
                        images += len(page.images)
                    continue
                if parts:
                    offset += 2  # the blank line between pages
                pages.append((offset, number))
                parts.append(text)
                offset += len(text)
                if offset > MAX_PDF_TEXT_CHARS:
                    raise _Reject(f"{name}: more than {MAX_PDF_TEXT_CHARS >> 20} MiB of text in one PDF")
            title = None
            with contextlib.suppress(Exception):
                title = reader.metadata.title if reader.metadata else None
        except _Reject:
            raise
        except Exception as err:  # noqa: BLE001 - a damaged file can break a parser anywhere
            raise _Reject(f"{name}: not a readable PDF ({_first_line(err)})") from None
    if not parts:
        if images or n_pages:
            what = f"{n_pages} page(s) with {images} image(s)" if images else f"{n_pages} page(s)"
            raise _Skip(f"{name}: PDF without a text layer ({what}, no text: a scan? OCR it first, "
                        "e.g. with ocrmypdf)")
        raise _Reject(f"{name}: empty PDF (no pages)")
    metadata: dict = {"format": "pdf", "pages": n_pages}
    if isinstance(title, str) and title.strip() and _utf8_ok(title):
        metadata["title"] = title.strip()
    return SourceDocument(source, source, "\n\n".join(parts), metadata, pages=pages)


def _check_zip(path: Path, name: str) -> None:
    """Refuse a DOCX whose zip would unpack to more than MAX_DOCX_XML_BYTES, or has a part that
    inflates more than MAX_ZIP_RATIO times (a zip bomb), before any part is inflated. Reads
    never exceed the declared sizes (zipfile stops there), so the check holds."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as err:
        raise _Reject(f"{name}: not a readable DOCX file (not a zip archive: {err})") from None
    total = sum(i.file_size for i in infos)
    if total > MAX_DOCX_XML_BYTES:
        raise _Reject(f"{name}: DOCX unpacks to {human_size(total)}, over {human_size(MAX_DOCX_XML_BYTES)} "
                      "(a zip bomb?)")
    for info in infos:
        if info.file_size > 1 << 20 and info.file_size > MAX_ZIP_RATIO * max(1, info.compress_size):
            raise _Reject(f"{name}: DOCX part {info.filename} inflates {info.file_size // max(1, info.compress_size)}"
                          f" times, to {human_size(info.file_size)} (a zip bomb?)")


def _read_docx(path: Path, name: str, source: str) -> SourceDocument:
    """The body of a Word document in order: paragraphs (a blank line between them) and tables
    (a row a line, cells joined by " | "). Headers, footers and comments are left out."""
    _check_zip(path, name)
    import docx
    from docx.table import Table

    with _quiet_library_logs("docx"):
        try:
            document = docx.Document(str(path))
            parts: list[str] = []
            for block in document.iter_inner_content():
                if isinstance(block, Table):
                    rows = []
                    for row in block.rows:
                        cells: list[str] = []
                        for cell in row.cells:
                            text = " ".join(cell.text.split())
                            if text and (not cells or cells[-1] != text):  # merged cells repeat
                                cells.append(text)
                        if cells:
                            rows.append(" | ".join(cells))
                    text = "\n".join(rows)
                else:
                    text = block.text
                text = _clean_extracted(text)
                if text:
                    parts.append(text)
            title = document.core_properties.title
        except Exception as err:  # noqa: BLE001 - a damaged file can break a parser anywhere
            raise _Reject(f"{name}: not a readable DOCX file ({_first_line(err)})") from None
    metadata: dict = {"format": "docx"}
    if isinstance(title, str) and title.strip() and _utf8_ok(title):
        metadata["title"] = title.strip()
    return SourceDocument(source, source, _check_text("\n\n".join(parts), name), metadata)
