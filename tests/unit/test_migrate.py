"""A site made by an older mailstack is brought up to this one's format by the first command
that reads it, says so, keeps the user's comments and what the server did; a site from a
newer mailstack is refused with the fix."""

from __future__ import annotations

from mailstack.cli import app
from mailstack.site.config import SITE_FORMAT
from mailstack.site.directory import Site

FORMAT_BLOCK = f"""\
# The layout of this file. A newer mailstack brings an older site up to date itself (and
# says what it changed); an older one refuses a site it cannot read.
format: {SITE_FORMAT}
"""
TLS_BLOCK_START = "  # The certificate of SMTP"


def as_format_1(site_dir) -> str:
    """mailstack.yml as a site from before `format` and options.tls: neither is there."""
    path = site_dir / "mailstack.yml"
    text = path.read_text()
    assert FORMAT_BLOCK in text and TLS_BLOCK_START in text
    text = text.replace(FORMAT_BLOCK, "")
    head, rest = text.split(TLS_BLOCK_START, 1)
    # The tls block runs until the next option's comment at the same indentation.
    tail = rest[rest.index("\n  # ", rest.index("certificate:")):]
    text = head + tail.lstrip("\n") + "# a comment of the user's\n"
    path.write_text(text)
    return text


def test_an_older_site_is_migrated_once_and_says_what_changed(runner, site_dir):
    as_format_1(site_dir)
    result = runner.invoke(app, ["--site", str(site_dir), "user", "list"])
    assert result.exit_code == 0, result.output
    assert f"from format 1 to {SITE_FORMAT}" in result.stderr
    assert "options.tls.certificate: self-signed written" in result.stderr
    assert "git diff" in result.stderr
    text = (site_dir / "mailstack.yml").read_text()
    assert text.startswith("format: 2") or "\nformat: 2" in text
    assert "# a comment of the user's" in text
    config = Site(site_dir).config
    assert config.format == SITE_FORMAT
    assert config.options.tls.certificate == "self-signed"  # what the server had
    # Done once: the next command says nothing and changes nothing.
    again = runner.invoke(app, ["--site", str(site_dir), "user", "list"])
    assert again.exit_code == 0 and "migrated" not in again.stderr
    assert (site_dir / "mailstack.yml").read_text() == text


def test_a_site_with_tls_already_chosen_keeps_its_choice(runner, site_dir):
    path = site_dir / "mailstack.yml"
    path.write_text(path.read_text().replace(FORMAT_BLOCK, ""))
    result = runner.invoke(app, ["--site", str(site_dir), "user", "list"])
    assert result.exit_code == 0, result.output
    assert "from format 1 to 2" in result.stderr and "options.tls" not in result.stderr
    assert Site(site_dir).config.options.tls.certificate == "acme"


def test_a_new_site_needs_nothing(runner, site_dir):
    before = (site_dir / "mailstack.yml").read_text()
    result = runner.invoke(app, ["--site", str(site_dir), "user", "list"])
    assert result.exit_code == 0 and result.stderr == ""
    assert (site_dir / "mailstack.yml").read_text() == before


def test_a_site_from_a_newer_mailstack_is_refused_with_the_fix(runner, site_dir):
    path = site_dir / "mailstack.yml"
    path.write_text(path.read_text().replace(f"format: {SITE_FORMAT}\n",
                                             f"format: {SITE_FORMAT + 1}\n"))
    before = path.read_text()
    result = runner.invoke(app, ["--site", str(site_dir), "user", "list"])
    assert result.exit_code == 2  # an invalid mailstack.yml, as every config error
    assert "newer mailstack" in result.output and "upgrade mailstack" in result.output
    assert "Traceback" not in result.output
    assert path.read_text() == before
