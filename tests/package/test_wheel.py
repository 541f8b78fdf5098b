"""The product as users get it: the wheel, installed WITHOUT extras into a fresh virtualenv,
runs every command. Once with the locked versions CI uses (constraints.txt), once with the
oldest releases pyproject.toml allows (constraints-lowest.txt), so both ends of every range
are tested. No containers; the only network peer is loopback (a closed port stands in for an
unreachable server)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"
CLOSED_PORT = "1"  # on 127.0.0.1: SSH to it is refused at once


def run(*cmd: str | Path, input: str | None = None, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], input=input, capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=env, check=False)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, REPO)
    assert built.returncode == 0, built.stderr
    [whl] = dist.glob("mailstack-*.whl")
    return whl


@pytest.fixture(scope="module", params=["constraints.txt", "constraints-lowest.txt"])
def venv(request, wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv")
    assert run(sys.executable, "-m", "venv", root).returncode == 0
    pip = run(root / "bin/pip", "install", "-q", "-c", REPO / request.param, wheel)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return root


def test_wheel_carries_only_the_product(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ("mailstack/cli/app.py", "mailstack/host/storage_tool.py",
                    "mailstack/host/sealer.py",
                    "mailstack/_data/templates/etc/systemd/system/mailstack-sealer.socket.j2",
                    "mailstack/_data/site.yml", "mailstack/_data/templates/etc/postfix/main.cf.j2",
                    "mailstack/_data/roles/postfix/tasks/main.yml",
                    "mailstack/_data/inventories/single/hosts.yml"):
        assert shipped in names, shipped
    unwanted = [n for n in names if "testbed" in n or n.startswith(("tests/", "molecule/", "bench/"))
                or "__pycache__" in n or n.endswith(".pyc")]
    assert not unwanted, unwanted
    with zipfile.ZipFile(wheel) as zf:
        leaked = [n for n in names if str(REPO).encode() in zf.read(n)]
    assert not leaked, f"paths of this machine in {leaked}"


def test_the_installed_cli_runs_every_command(venv, tmp_path):
    bin_dir = venv / "bin"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANSIBLE_", "MAILSTACK_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(tmp_path / "home")  # nothing of this machine's user leaks in

    def mailstack(*args: str, input: str | None = None, ok: bool = True):
        result = run(bin_dir / "mailstack", *args, input=input, cwd=tmp_path, env=env)
        if ok:
            assert result.returncode == 0, f"mailstack {' '.join(args)}:\n{result.stderr}"
        assert "Traceback" not in result.stderr, result.stderr
        return result

    assert mailstack("--version").stdout.startswith("mailstack ")
    helps = ["init", "render", "deploy", "verify", "dns", "unlock", "lock", "status", "user", "alias",
             "domain", "relay", "sandbox", "user add", "alias add", "relay set", "sandbox up",
             "unban", "spam", "spam password", "dns check", "dns push", "dns key set"]
    for command in helps:
        assert "Usage" in mailstack(*command.split(), "--help").stdout
    mailstack("init", "site", "--domain", "example.org", "--hostname", "mail.example.org",
              "--host", "127.0.0.1", "--ssh-port", CLOSED_PORT)
    site = ["--site", "site"]
    mailstack(*site, "user", "add", "alice@example.org", "--password-stdin", input=PASSWORD)
    mailstack(*site, "alias", "add", "team@example.org", "alice@example.org")
    mailstack(*site, "domain", "add", "example.net")
    assert "alice@example.org" in mailstack(*site, "user", "list").stdout
    rendered = mailstack(*site, "render").stdout
    assert "mail.example.org:" in rendered
    assert (tmp_path / "site/build/mail.example.org/etc/postfix/main.cf").is_file()
    assert "_domainkey.example.net" in mailstack(*site, "dns").stdout
    # The parts that need the server: each says it cannot reach it, cleanly (exit 1).
    # (verify too: it sets the verify mailbox's one-time password over SSH first.)
    for command in (["deploy"], ["unlock"], ["lock"], ["verify"], ["unban", "--all"]):
        result = mailstack(*site, *command, ok=False)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert "127.0.0.1" in result.stdout + result.stderr, (command, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
    # status is a monitoring check: a host it cannot ask is critical (exit 2), said on stdout.
    status = mailstack(*site, "status", "--no-dns", ok=False)
    assert status.returncode == 2, (status.stdout, status.stderr)
    assert "UNREACHABLE: cannot reach root@127.0.0.1" in status.stdout, status.stdout
    assert "Traceback" not in status.stderr, status.stderr
    # Every module imports with what the wheel declared (lazy imports included).
    probe = run(bin_dir / "python", "-c",
                "import dkim, ansible_runner, argon2, ansible.parsing.vault, pkgutil, importlib, "
                "mailstack; [importlib.import_module(m.name) for m in "
                "pkgutil.walk_packages(mailstack.__path__, 'mailstack.') "
                "if not m.name.endswith('__main__')]", env=env)
    assert probe.returncode == 0, probe.stderr
