"""The sandbox target: a fresh Debian host reached over SSH, under its real names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import testbed
from mailstack.sandbox import host as sandbox

pytestmark = pytest.mark.testbed


@pytest.fixture
def state_dir(engine: None, tmp_path: Path) -> Iterator[Path]:
    """A private key dir; the sandbox is removed afterwards even if the test fails."""
    if testbed.container_running(sandbox.CONTAINER) is not None:
        pytest.skip(f"a sandbox ({sandbox.CONTAINER}) already exists here and this test would remove it; "
                    "run `mailstack sandbox down` to allow the test")
    try:
        yield tmp_path / "sandbox-state"
    finally:
        sandbox.sandbox_down()


def container_id(tools, name: str) -> str:
    return tools.docker("container", "inspect", "-f", "{{.Id}}", name).stdout.strip()


def test_sandbox_up_is_idempotent_and_reachable_over_ssh(state_dir: Path, base: str, tools) -> None:
    first = sandbox.sandbox_up(state_dir)
    first_id = container_id(tools, sandbox.CONTAINER)
    second = sandbox.sandbox_up(state_dir)
    assert second == first
    assert container_id(tools, sandbox.CONTAINER) == first_id
    assert (first.container, first.hostname, first.ssh_user) == (
        "mailstack-sandbox", "mail.sandbox.test", "root")
    assert first.ssh_key == state_dir / "id_ed25519"
    assert first.ssh_key.stat().st_mode & 0o777 == 0o600

    proc = tools.ssh(first.ip, first.ssh_key, "hostname")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "mail.sandbox.test"

    # A fresh host like a VPS: the base image, no mail stack preinstalled.
    image = tools.docker("container", "inspect", "-f", "{{.Config.Image}}", sandbox.CONTAINER).stdout.strip()
    assert image == base
    assert testbed.exec_in(sandbox.CONTAINER, ["dpkg-query", "-W", "postfix"], check=False).returncode != 0

    status = sandbox.sandbox_status(state_dir)
    assert status == first


def test_sandbox_down_removes_everything_and_is_idempotent(state_dir: Path, tools) -> None:
    sandbox.sandbox_up(state_dir)
    assert sandbox.sandbox_down() is True
    assert testbed.container_running(sandbox.CONTAINER) is None
    assert tools.docker("network", "inspect", sandbox.NETWORK).returncode != 0
    assert sandbox.sandbox_status(state_dir) is None
    assert sandbox.sandbox_down() is False
