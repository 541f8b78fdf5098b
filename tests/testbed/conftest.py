"""Fixtures for the test-bed tests: real Docker containers running systemd.

These tests need root (or docker-group access) on a Debian machine; they start
the engine and build the base image if needed (about a minute the first time).
Deselect them with `-m "not testbed"`.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import testbed
from mailstack.deploy.ssh import ssh_options

SSH_OPTIONS = ssh_options(None)  # test hosts are new every time: no pinning


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "testbed: starts real systemd containers with Docker (needs root on Debian; slow the first time)",
    )


@dataclass
class KeyPair:
    private: Path
    public: str


def unique_name(prefix: str = "mailstack-test") -> str:
    """A container/network name no other test run uses, so runs never collide."""
    return f"{prefix}-{secrets.token_hex(4)}"


def ssh(ip: str, key: Path, *remote: str, user: str = "root") -> subprocess.CompletedProcess[str]:
    """Run a command over a real SSH connection to a container we created."""
    return subprocess.run(["ssh", "-i", str(key), *SSH_OPTIONS, f"{user}@{ip}", *remote],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    """The docker CLI, for assertions made independently of the test bed."""
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def engine() -> None:
    testbed.ensure_engine()


@pytest.fixture(scope="session")
def base(engine: None) -> str:
    return testbed.base_image()


@pytest.fixture(scope="session")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return KeyPair(private=key, public=key.with_name("id_ed25519.pub").read_text())


@dataclass
class Tools:
    """Helpers handed to tests as a fixture (importing conftest by name is fragile)."""

    unique_name = staticmethod(unique_name)
    ssh = staticmethod(ssh)
    docker = staticmethod(docker)


@pytest.fixture(scope="session")
def tools() -> Tools:
    return Tools()


@pytest.fixture(scope="module")
def network(engine: None, tools: Tools) -> Iterator[str]:
    """A test network of the module's own (the internet in a box is started on it)."""
    name = tools.unique_name("mailstack-testbed-net")
    try:
        testbed.ensure_network(name)
        yield name
    finally:
        testbed.remove_network(name)
