"""Shared fixtures: a real site created by `mailstack init` (real vault, real keys)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mailstack.cli import app
from mailstack.site.directory import InitOptions, init_site

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("ANSIBLE_VAULT_PASSWORD_FILE", "MAILSTACK_SITE", "MAILSTACK_DEBUG"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    return init_site(
        tmp_path / "site", InitOptions("example.org", "mail.example.org", "203.0.113.7")
    )


class Cli:
    """Runs the real CLI in-process against one site and keeps the last result."""

    def __init__(self, runner: CliRunner, site: Path) -> None:
        self.runner = runner
        self.site = site

    def __call__(self, *args: str, input: str | None = None):
        result = self.runner.invoke(app, ["--site", str(self.site), *args], input=input)
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result


@pytest.fixture
def cli(runner: CliRunner, site_dir: Path) -> Cli:
    return Cli(runner, site_dir)


def all_site_bytes(root: Path) -> bytes:
    """Every byte of every file in the site (for 'never in clear text' checks)."""
    out = b""
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for name in sorted(files):
            out += name.encode() + b"\0" + (Path(dirpath) / name).read_bytes()
    return out
