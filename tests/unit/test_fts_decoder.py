"""mailstack-fts-decoder (mailstack/host/fts_decoder.py), the attachments' decoder of the
full-text index, on documents made here as office programs write them: their words come
out in reading order with the words of neighbouring paragraphs and cells kept apart, and
hostile archives (an unpacking bomb, an entity bomb, not a zip at all, a member named to
escape a directory) give no text and no harm. As Dovecot's script service runs it: the
list of types without an argument, the text of stdin with one. (PDF goes through Debian's
pdftotext: tests/e2e/test_search.py, on a real host.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from documents import DOCX, ODT, PPTX, XLSX, W, archive, docx, entity_bomb_docx, odt

from mailstack.host import fts_decoder
from mailstack.host.fts_decoder import decode


def test_a_word_document_s_words_come_out_whole_and_apart():
    text = decode(DOCX, docx(["Quok", "ka ", "Größe"], ["naïve"], ["façade", "<w:tab/>", "end"]))
    assert text.split() == ["Quokka", "Größe", "naïve", "façade", "end"], text


def test_a_spreadsheet_s_cells_and_a_presentation_s_slides_in_order():
    xlsx = archive({"xl/sharedStrings.xml": '<sst xmlns="x"><si><t>alpha</t></si>'
                                            "<si><t>beta</t></si></sst>"})
    assert decode(XLSX, xlsx).split() == ["alpha", "beta"]
    slide = '<p:sld xmlns:p="p" xmlns:a="a"><a:p><a:r><a:t>{}</a:t></a:r></a:p></p:sld>'
    pptx = archive({f"ppt/slides/slide{n}.xml": slide.format(f"slide{n}word")
                    for n in (10, 2, 1)})
    assert decode(PPTX, pptx).split() == ["slide1word", "slide2word", "slide10word"]


def test_an_opendocument_text_keeps_mixed_content_in_order():
    text = decode(ODT, odt("<text:p>Hello <text:span>wide</text:span> world</text:p>"
                           "<text:h>Heading</text:h><text:p>next<text:s/>word</text:p>"))
    assert text.split() == ["Hello", "wide", "world", "Heading", "next", "word"], text


def test_an_unpacking_bomb_stops_at_the_cap(monkeypatch, capsys):
    monkeypatch.setattr(fts_decoder, "MAX_XML", 100_000)
    big = f"<w:document {W}><w:body>" + "<w:p><w:t>zero</w:t></w:p>" * 200_000
    text = decode(DOCX, archive({"word/document.xml": big + "</w:body></w:document>"}))
    assert len(text) < 100_000
    assert "more than 100000 bytes of XML" in capsys.readouterr().err


def test_the_text_stops_at_its_cap(monkeypatch):
    monkeypatch.setattr(fts_decoder, "MAX_TEXT", 1000)
    text = decode(DOCX, docx(*[["word "] for _ in range(1000)]))
    assert 0 < len(text.encode()) <= 1000 and set(text.split()) == {"word"}


def test_an_entity_bomb_is_not_read(capsys):
    assert decode(DOCX, entity_bomb_docx()) == ""
    assert "document type declaration" in capsys.readouterr().err


def test_what_is_not_a_document_gives_no_text(capsys):
    assert decode(DOCX, b"PK\x03\x04 not really a zip") == ""
    assert decode(ODT, b"") == ""
    assert decode("application/x-unknown", b"text") == ""
    assert decode(DOCX, archive({"word/document.xml": "<w:document><unclosed>"})) == ""
    err = capsys.readouterr().err
    assert err.count("not read") == 3, err


def test_no_name_in_the_archive_becomes_a_path(tmp_path, monkeypatch):
    """Members are read from memory, only those of the format's known names."""
    monkeypatch.chdir(tmp_path)
    evil = archive({"../../escaped.xml": "<x>secret</x>", "/abs.xml": "<x>abs</x>",
                    "word/document.xml": f"<w:document {W}><w:body><w:p><w:t>kept</w:t>"
                                         "</w:p></w:body></w:document>"})
    assert decode(DOCX, evil).split() == ["kept"]
    assert list(tmp_path.iterdir()) == []


def run(*args: str, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, fts_decoder.__file__, *args], input=data,
                          capture_output=True, check=True, timeout=30)


def test_as_dovecot_runs_it_the_types_then_the_text():
    """Without an argument: "<content type> <extension>" lines and an empty line (Dovecot
    reads the types once per user); with a type: the text of stdin."""
    listed = run().stdout.decode().split("\n")
    assert listed[-2:] == ["", ""], listed  # the empty line, then the final newline
    types = dict(line.split(" ") for line in listed[:-2])
    assert types["application/pdf"] == "pdf" and types[DOCX] == "docx" and types[ODT] == "odt"
    text = run(DOCX, data=docx(["Größe"])).stdout.decode()
    assert text.split() == ["Größe"]


def test_it_is_placed_as_the_source_it_is():
    source = Path(fts_decoder.__file__).read_text()
    assert source.startswith("#!/usr/bin/python3\n")
    assert f'PATH = "{fts_decoder.PATH}"' in source
