"""site.yml and the roles refuse bad input before they touch a host.

Runs ansible-playbook against this machine with `--tags` naming no task: only what is
tagged `always` runs (site.yml's build-directory check and each role's argument-spec
validation), all of it on the controller, so nothing is installed or changed here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOST = "mail.example.org"
ONLY_ALWAYS = "mailstack-no-such-tag"


def _ansible_playbook() -> str:
    return shutil.which("ansible-playbook") or str(Path(sys.executable).with_name("ansible-playbook"))


def _inventory(tmp_path: Path) -> Path:
    inv = tmp_path / "hosts.yml"
    inv.write_text(
        "all:\n  children:\n    mail:\n      hosts:\n"
        f"        {HOST}:\n          ansible_connection: local\n"
        f"          ansible_python_interpreter: {sys.executable}\n"
    )
    return inv


def _run(tmp_path: Path, playbook: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(REPO / "roles"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"))
    return subprocess.run(
        [_ansible_playbook(), "-i", str(_inventory(tmp_path)), str(playbook),
         "--tags", ONLY_ALWAYS, *extra],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_site_requires_the_build_dir(tmp_path: Path) -> None:
    result = _run(tmp_path, REPO / "site.yml")
    assert result.returncode != 0
    assert "Run `mailstack render`" in result.stdout, result.stdout


def test_site_requires_this_hosts_rendered_files(tmp_path: Path) -> None:
    build = tmp_path / "build"
    (build / "other.example.org" / "etc").mkdir(parents=True)
    result = _run(tmp_path, REPO / "site.yml", "-e", f"mailstack_build_dir={build}")
    assert result.returncode != 0
    assert f"No rendered configuration for {HOST}" in result.stdout, result.stdout


def test_site_accepts_a_rendered_site(tmp_path: Path, site_dir: Path) -> None:
    render = subprocess.run([sys.executable, "-m", "mailstack", "-C", str(site_dir), "render"],
                            capture_output=True, text=True, timeout=120)
    assert render.returncode == 0, render.stderr
    result = _run(tmp_path, REPO / "site.yml", "-e", f"mailstack_build_dir={site_dir / 'build'}")
    assert result.returncode == 0, result.stdout + result.stderr
    # every role's inputs were validated
    for role in ("common", "tls", "mariadb", "opendkim", "dovecot", "postfix"):
        assert f"{role} : Validating arguments against arg spec 'main'" in result.stdout


@pytest.mark.parametrize(
    "role, variable, value",
    [
        ("common", "common__firewall_tcp_ports", "[ssh, smtp]"),
        ("common", "common__apt_install_recommends", "maybe"),
        ("tls", "tls__selfsigned_days", "forever"),
        ("dovecot", "dovecot__vmail_uid", "vmail"),
        ("postfix", "postfix__debconf_selections", "[{name: postfix}]"),
    ],
)
def test_role_refuses_a_mistyped_input(tmp_path: Path, role: str, variable: str,
                                       value: str) -> None:
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        f"- hosts: mail\n  gather_facts: false\n  roles:\n    - role: {role}\n"
        f"      vars:\n        mailstack_build_dir: {tmp_path}\n        {variable}: {value}\n"
    )
    result = _run(tmp_path, playbook)
    assert result.returncode != 0
    assert "Validating arguments against arg spec" in result.stdout
    assert variable in result.stdout, result.stdout
