"""Shared fixtures: a real site created by `mailstack init` (real vault, real keys); the host
storage tool run for real, with a conf like the rendered storage.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mailstack.cli import app
from mailstack.host import storage_tool
from mailstack.site.directory import InitOptions, init_site

PASSWORD = "correct horse battery staple"


# The full run has two pytest-xdist workers (scripts/test: `-n 2`), and each takes whole
# modules: a module's module-scoped host is converged once, on one worker. The modules that
# start the one container of a fixed name are one unit, so they never run at the same time.
SHARED_CONTAINER_GROUPS = {
    "tests/e2e/test_user_path.py": "mailstack-sandbox",
    "tests/testbed/test_sandbox.py": "mailstack-sandbox",
}


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    # xdist's own `--dist loadgroup` marks items by renaming their node ids, which pytest 9
    # no longer allows: the marks were ignored and each worker set up every module's host.
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return SHARED_CONTAINER_GROUPS.get(module, module)

    return ModuleScheduling(config, log)


_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker:
    # Each worker's own temporary directory: a test that looks for what a deploy left in /tmp
    # must not see the other worker's deploy at work.
    _tmp = Path(tempfile.gettempdir()) / f"mailstack-tests-{_worker}"
    _tmp.mkdir(mode=0o700, exist_ok=True)
    os.environ["TMPDIR"] = str(_tmp)
    tempfile.tempdir = None


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


GOLDEN_STORAGE_JSON = (Path(__file__).parent / "golden" / "mail.example.org" / "etc" / "mailstack"
                       / "storage.json")

# Runs the shipped file (not the package module) with its CONF pointed at a test conf.
RUN_TOOL = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("mailstack_storage", sys.argv.pop(1))
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)
tool.CONF = sys.argv.pop(1)
tool.main()
"""


@pytest.fixture
def storage_conf(tmp_path: Path) -> Callable[..., dict]:
    """``storage_conf(encryption="gocryptfs")``: the golden site's rendered storage.json, its
    paths moved under tmp_path (nothing there yet)."""
    def make(encryption: str = "gocryptfs") -> dict:
        conf = json.loads(GOLDEN_STORAGE_JSON.read_text())
        conf.update(encryption=encryption, root=str(tmp_path / "vhosts"),
                    cipher_dir=str(tmp_path / "vhosts.crypt"),
                    lmtp_socket=str(tmp_path / "dovecot-lmtp"))
        return conf
    return make


@pytest.fixture
def as_root() -> None:
    """Tests that chown to the mail user (uid 5000), as the tool does on the server."""
    if os.geteuid() != 0:
        pytest.skip("chown to the mail user needs root")


HostTool = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def host_tool(tmp_path: Path) -> HostTool:
    """``host_tool(conf, *args, stdin="")``: mailstack-storage ARGS as a real process."""
    def run(conf: dict, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
        conf_file = tmp_path / "storage.json"
        conf_file.write_text(json.dumps(conf))
        return subprocess.run([sys.executable, "-I", "-c", RUN_TOOL, storage_tool.__file__,
                               str(conf_file), *args], input=stdin, capture_output=True,
                              text=True, timeout=30, check=False)
    return run
