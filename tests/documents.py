"""Documents as office programs write them, made here for the tests of the full-text
search's attachment decoder: OOXML and OpenDocument archives, and a PDF."""

from __future__ import annotations

import io
import zipfile

W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
ODT = "application/vnd.oasis.opendocument.text"


def archive(members: dict[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name, content in members.items():
            z.writestr(name, content)
    return buffer.getvalue()


def docx(*paragraphs: list[str]) -> bytes:
    """Each paragraph as runs (Word splits one word into several runs at will); a run
    may be raw XML such as "<w:tab/>"."""
    body = "".join("<w:p>" + "".join(f"<w:r><w:t>{run}</w:t></w:r>" if not run.startswith("<")
                                     else f"<w:r>{run}</w:r>" for run in runs) + "</w:p>"
                   for runs in paragraphs)
    return archive({"[Content_Types].xml": "<Types/>",
                    "word/document.xml": f'<?xml version="1.0" encoding="UTF-8"?>'
                                         f"<w:document {W}><w:body>{body}</w:body></w:document>"})


def odt(content: str) -> bytes:
    """An OpenDocument text whose office:text holds `content` (text:p, text:span, …)."""
    return archive({"mimetype": ODT,
                    "content.xml": '<?xml version="1.0" encoding="UTF-8"?>'
                                   '<office:document-content xmlns:office="o" xmlns:text="t">'
                                   f"<office:body><office:text>{content}</office:text>"
                                   "</office:body></office:document-content>"})


def pdf(*pages: str) -> bytes:
    """A PDF with one page for each text (ASCII; its lines one below the other) in
    Helvetica, with a correct xref table."""
    count = len(pages)
    # 1 catalog, 2 pages, 3 font, then each page and its content stream.
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(count)).encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, count),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, text in enumerate(pages):
        lines = " ".join(f"({line}) Tj T*" for line in text.split("\n"))
        stream = f"BT /F1 12 Tf 14 TL 72 740 Td {lines} ET".encode()
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                       b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (5 + 2 * i))
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def entity_bomb_docx() -> bytes:
    """A Word document whose one word is an entity ten times the one before, nine deep:
    10^9 characters if expanded."""
    entities = '<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8))
    return archive({"word/document.xml": (
        f'<?xml version="1.0"?><!DOCTYPE w [{entities}]>'
        f"<w:document {W}><w:body><w:p><w:t>&i;</w:t></w:p></w:body></w:document>")})
