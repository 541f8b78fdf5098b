#!/usr/bin/python3
# Managed by mailstack (mailstack/host/fts_decoder.py): rendered and placed by `mailstack deploy`.
"""mailstack-fts-decoder: the text of a mail attachment (PDF, office documents) for the
full-text search index.

Dovecot's indexer hands each attachment of a type listed below to this program through
its `script` service (fts_decoder): the content type as the argument, the attachment's
bytes (transfer encoding already undone) on stdin; the text goes to stdout as UTF-8.
Without an argument it lists the types it takes, each with its file-name extension, and
ends with an empty line.

What it reads is whatever a stranger mailed, so:
- it runs as a user of its own that can read no mail and no secret, with Dovecot's
  limits on memory (vsz_limit) and time (it is killed after 10 s), and its PDF reader
  gets a CPU limit and a timeout of its own;
- nothing is written to disk: PDF goes through pdftotext (poppler-utils) by pipe, and the
  office formats are zip archives read in memory, one known member at a time, so no name
  from the archive is ever used as a path (Dovecot's example script unpacked them into
  /tmp: CVE-2025-59031);
- every read is capped (the members' unpacked size, the text written), and XML with a
  document type declaration (where entity bombs live) is skipped.
A document it cannot read gives no text; the message is indexed without it.
"""

import io
import re
import resource
import subprocess
import sys
import zipfile
from xml.parsers import expat

PATH = "/usr/local/sbin/mailstack-fts-decoder"
# Caps: the text written for one attachment, the unpacked XML read from one archive.
MAX_TEXT = 4 * 1024 * 1024
MAX_XML = 64 * 1024 * 1024
PDF_SECONDS = 8
PDFTOTEXT = "/usr/bin/pdftotext"

PDF = "pdf"
# The members of each office format that hold its text, in reading order.
OFFICE = {
    "docx": (re.compile(r"word/(document|footnotes|endnotes|header\d*|footer\d*)\.xml"),),
    "xlsx": (re.compile(r"xl/sharedStrings\.xml"),),
    "pptx": (re.compile(r"ppt/slides/slide(\d+)\.xml"), re.compile(r"ppt/notesSlides/notesSlide(\d+)\.xml")),
    "odt": (re.compile(r"content\.xml"),),
    "ods": (re.compile(r"content\.xml"),),
    "odp": (re.compile(r"content\.xml"),),
}
TYPES = {
    "application/pdf": PDF,
    "application/x-pdf": PDF,
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "pptx",
    "application/vnd.oasis.opendocument.text": "odt",
    "application/vnd.oasis.opendocument.spreadsheet": "ods",
    "application/vnd.oasis.opendocument.presentation": "odp",
}
# Elements that end a line (paragraphs, headings, table cells, shared strings) and that
# stand for a space, in the OOXML and ODF vocabularies: words on either side stay apart.
LINE_ENDS = {"p", "h", "tc", "si", "table-cell", "list-item", "tr", "row"}
SPACES = {"tab", "br", "s", "line-break", "cr"}


class Full(Exception):
    """The text cap is reached: what was written is the answer."""


class Text:
    """The text written so far, up to MAX_TEXT bytes."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0

    def write(self, text: str) -> None:
        size = len(text.encode())
        if self.size + size > MAX_TEXT:
            raise Full
        self.parts.append(text)
        self.size += size

    def value(self) -> str:
        return "".join(self.parts)


def xml_text(stream, out: Text, budget: list[int]) -> None:
    """The character data of an XML member, in document order, a line per paragraph.
    budget[0] is what may still be unpacked from the archive."""
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def doctype(*_args) -> None:
        raise ValueError("a document type declaration")

    def end(name: str) -> None:
        local = name.rsplit(" ", 1)[-1]
        if local in LINE_ENDS:
            out.write("\n")
        elif local in SPACES:
            out.write(" ")

    parser.StartDoctypeDeclHandler = doctype
    parser.CharacterDataHandler = out.write
    parser.EndElementHandler = end
    while True:
        chunk = stream.read(min(65536, max(budget[0], 0) + 1))
        if not chunk:
            break
        budget[0] -= len(chunk)
        if budget[0] < 0:
            raise ValueError(f"more than {MAX_XML} bytes of XML")
        parser.Parse(chunk, False)
    parser.Parse(b"", True)


def members(archive: zipfile.ZipFile, kind: str) -> list[zipfile.ZipInfo]:
    """The archive's text members, in reading order (slides by their number)."""
    found = []
    for rank, pattern in enumerate(OFFICE[kind]):
        for info in archive.infolist():
            match = pattern.fullmatch(info.filename)
            if match and not info.is_dir():
                number = int(match.group(1)) if match.groups() and match.group(1).isdigit() else 0
                found.append((rank, number, info.filename, info))
    return [info for *_, info in sorted(found, key=lambda f: f[:3])]


def office_text(data: bytes, kind: str, out: Text) -> None:
    budget = [MAX_XML]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in members(archive, kind):
            with archive.open(info) as stream:
                xml_text(stream, out, budget)
            out.write("\n")


def limit_child() -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (PDF_SECONDS, PDF_SECONDS))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # it writes to the pipe only


def pdf_text(data: bytes, out: Text) -> None:
    proc = subprocess.run([PDFTOTEXT, "-q", "-enc", "UTF-8", "-", "-"], input=data,
                          capture_output=True, timeout=PDF_SECONDS, preexec_fn=limit_child,
                          check=False)
    if proc.returncode != 0:
        raise ValueError(f"pdftotext exited with {proc.returncode}")
    text = proc.stdout[:MAX_TEXT].decode("utf-8", errors="ignore")
    out.write(text)


def decode(content_type: str, data: bytes) -> str:
    """The text of one attachment ("" when it cannot be read); raises nothing."""
    kind = TYPES.get(content_type.strip().lower())
    out = Text()
    try:
        if kind == PDF:
            pdf_text(data, out)
        elif kind is not None:
            office_text(data, kind, out)
    except Full:
        pass
    except (ValueError, OSError, EOFError, RuntimeError, NotImplementedError,
            zipfile.BadZipFile, zipfile.LargeZipFile, expat.ExpatError,
            subprocess.TimeoutExpired) as e:
        # Dovecot writes a service's stderr to its log.
        print(f"mailstack-fts-decoder: {content_type}: not read ({e})", file=sys.stderr)
    return out.value()


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[1]:
        for content_type, kind in TYPES.items():
            sys.stdout.write(f"{content_type} {kind}\n")
        sys.stdout.write("\n")
        return 0
    data = sys.stdin.buffer.read()
    sys.stdout.buffer.write(decode(argv[1], data).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
