"""Real PDF and DOCX files made with the libraries clara reads them with (pypdf, python-docx):
text pages, a scan (an image and no text layer), an encrypted PDF, a zip bomb in a DOCX."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject, NumberObject


def _escape(line: str) -> str:
    return line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _stream(writer: PdfWriter, data: bytes, extra: dict | None = None):
    stream = DecodedStreamObject()
    stream.set_data(data)
    for key, value in (extra or {}).items():
        stream[NameObject(key)] = value
    return writer._add_object(stream)


def make_pdf(path: Path, pages: list[str], user_password: str | None = None, title: str | None = None) -> Path:
    """A PDF whose pages show the given texts (Helvetica, WinAnsi: Latin-1 text), one line per
    line of text; an empty string makes a page without text. With user_password, RC4-encrypted."""
    writer = PdfWriter()
    font = writer._add_object(DictionaryObject({
        NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
        NameObject("/BaseFont"): NameObject("/Helvetica"), NameObject("/Encoding"): NameObject("/WinAnsiEncoding")}))
    for text in pages:
        page = writer.add_blank_page(612, 792)
        ops = ["BT /F1 11 Tf 14 TL 72 740 Td"] + [f"({_escape(line)}) Tj T*" for line in text.splitlines()] + ["ET"]
        page[NameObject("/Contents")] = _stream(writer, "\n".join(ops).encode("latin-1") if text else b"")
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
    if title:
        writer.add_metadata({"/Title": title})
    if user_password is not None:
        writer.encrypt(user_password=user_password, owner_password="owner-" + user_password, algorithm="RC4-128")
    with open(path, "wb") as f:
        writer.write(f)
    return path


def make_scanned_pdf(path: Path, n_pages: int = 2) -> Path:
    """A PDF of pages that each show a grey image and carry no text layer (what a scanner makes)."""
    writer = PdfWriter()
    for _ in range(n_pages):
        page = writer.add_blank_page(612, 792)
        image = _stream(writer, bytes(range(64)) * 4, {
            "/Type": NameObject("/XObject"), "/Subtype": NameObject("/Image"), "/Width": NumberObject(16),
            "/Height": NumberObject(16), "/ColorSpace": NameObject("/DeviceGray"), "/BitsPerComponent": NumberObject(8)})
        page[NameObject("/Contents")] = _stream(writer, b"q 500 0 0 700 50 50 cm /Im1 Do Q")
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/XObject"): DictionaryObject({NameObject("/Im1"): image})})
    with open(path, "wb") as f:
        writer.write(f)
    return path


def make_docx(path: Path, paragraphs: list[str], table: list[list[str]] | None = None, title: str | None = None
              ) -> Path:
    """A Word document: a heading, the paragraphs, and a table after them."""
    import docx

    document = docx.Document()
    if title:
        document.core_properties.title = title
        document.add_heading(title, level=1)
    for text in paragraphs:
        document.add_paragraph(text)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                grid.cell(r, c).text = value
    document.save(str(path))
    return path


def make_docx_bomb(path: Path, inflated_mib: int = 64) -> Path:
    """A real DOCX whose document.xml is replaced by inflated_mib MiB of spaces: a few hundred
    KiB on disk that would inflate a thousand times if opened."""
    good = path.with_name(path.stem + "-source.docx")
    make_docx(good, ["A harmless paragraph."])
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename == "word/document.xml":
                with dst.open(info.filename, "w", force_zip64=True) as out:
                    block = b" " * (1 << 20)
                    for _ in range(inflated_mib):
                        out.write(block)
            else:
                dst.writestr(info, src.read(info.filename))
    good.unlink()
    return path


def corrupt_copy(src: Path, dst: Path, keep: float = 0.5) -> Path:
    """The first `keep` share of a file's bytes (a truncated download)."""
    shutil.copyfile(src, dst)
    data = dst.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst
