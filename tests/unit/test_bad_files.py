"""A damaged or odd site gets one clear message and a non-zero exit, never a traceback or a
hang; an edit that cannot be written completely is not written at all."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from conftest import PASSWORD, all_site_bytes

from mailstack.site.secrets import DKIM_FILE, SECRETS_DIR, SITE_FILE


def test_non_utf8_config(cli):
    path = cli.site / "mailstack.yml"
    path.write_bytes(path.read_bytes() + b"# caf\xe9\n")
    result = cli("user", "list")
    assert result.exit_code == 2 and "is not UTF-8 text" in result.output


def test_config_that_is_a_directory(cli):
    path = cli.site / "mailstack.yml"
    path.unlink()
    path.mkdir()
    result = cli("user", "list")
    assert result.exit_code == 2 and "is a directory" in result.output


@pytest.mark.parametrize("damage", [
    lambda b: b[: len(b) // 2],                          # truncated
    lambda b: b.replace(b"\n3", b"\nZ", 1),              # garbled hex
    lambda b: b"$ANSIBLE_VAULT;1.1;AES256\nnot hex at all\n",
])
def test_damaged_vault_file(cli, damage):
    path = cli.site / SECRETS_DIR / SITE_FILE
    path.write_bytes(damage(path.read_bytes()))
    result = cli("render")
    assert result.exit_code == 1, result.output
    assert "damaged" in result.output and str(path) in result.output


def test_yaml_alias_bomb_is_refused_at_once(cli):
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        bomb.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    path = cli.site / "mailstack.yml"
    path.write_text(path.read_text() + "\n".join(bomb) + "\n")
    started = time.monotonic()
    result = cli("user", "list")
    assert time.monotonic() - started < 5
    assert result.exit_code == 2 and "anchors and aliases" in result.output


def test_alias_loop_check_is_linear(cli):
    """48 aliases all pointing at each other: 39 s with the old exhaustive search."""
    path = cli.site / "mailstack.yml"
    n = 48
    lines = [f"  a{i}@example.org: [{', '.join(f'a{j}@example.org' for j in range(n) if j != i)}]"
             for i in range(n)]
    path.write_text(path.read_text().replace("aliases: {}", "aliases:\n" + "\n".join(lines)))
    started = time.monotonic()
    result = cli("user", "list")
    assert time.monotonic() - started < 5
    assert result.exit_code == 2 and result.output.count("alias loop") == 1


def test_render_out_pointing_at_a_file(cli, tmp_path):
    target = tmp_path / "afile"
    target.write_text("x")
    result = cli("render", "--out", str(target))
    assert result.exit_code == 1 and "is a file" in result.output
    assert target.read_text() == "x"


def test_deploy_with_an_unknown_tag_is_an_error(cli):
    result = cli("deploy", "--tags", "bogus")
    assert result.exit_code == 1
    assert "'bogus'" in result.output and "accounts" in result.output


@pytest.fixture
def read_only(tmp_path):
    """A real read-only file system (a read-only bind mount): root ignores file modes."""
    mounted = []

    def make(path: Path) -> None:
        subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
        mounted.append(path)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)

    yield make
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], check=False)


@pytest.mark.parametrize("frozen", ["secrets", "."])
def test_an_edit_that_cannot_be_written_changes_nothing(cli, read_only, frozen):
    before = all_site_bytes(cli.site)
    read_only(cli.site / frozen)
    result = cli("user", "add", "alice@example.org", "--password-stdin", input=PASSWORD + "\n")
    assert result.exit_code == 1, result.output
    assert "Read-only file system" in result.output and "Traceback" not in result.output
    assert all_site_bytes(cli.site) == before


def test_a_failure_between_two_files_rolls_the_first_back(cli, monkeypatch):
    """write_all_atomic: the secrets file is replaced first; when mailstack.yml then fails,
    the secrets file is put back (the user must not exist half: hash without mailbox)."""
    import os

    from mailstack import files

    before = all_site_bytes(cli.site)
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):  # the first write of mailstack.yml fails, once
        calls.append(dst)
        if str(dst).endswith("mailstack.yml") and str(src).endswith(".tmp"):
            raise OSError(28, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", failing_replace)
    result = cli("user", "add", "alice@example.org", "--password-stdin", input=PASSWORD + "\n")
    assert result.exit_code == 1 and "No space left on device" in result.output
    assert any(str(c).endswith("accounts.yml") for c in calls)  # it really got that far
    monkeypatch.undo()
    assert all_site_bytes(cli.site) == before
    assert sorted(p.name for p in (cli.site / SECRETS_DIR).iterdir()) == sorted(
        ["site.yml", DKIM_FILE, "accounts.yml"])


def test_build_holds_secrets_so_only_its_owner_may_enter(cli):
    import stat

    assert cli("render").exit_code == 0
    assert stat.S_IMODE((cli.site / "build").stat().st_mode) == 0o700
