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
import yaml

REPO = Path(__file__).resolve().parents[2]
HOST = "mail.example.org"
ONLY_ALWAYS = "mailstack-no-such-tag"
# The facts `mailstack render` writes for a host (site.yml loads them); the role defaults
# refer to them.
RENDERED_FACTS = REPO / "tests" / "golden" / HOST / "mailstack_vars.yml"
ROLES = ("common", "resolver", "tls", "web", "mta_sts", "mariadb", "opendkim", "rspamd", "storage",
         "dovecot", "postfix", "fail2ban", "clamav", "monitoring", "backup", "sogo")


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
    for role in ROLES:
        assert f"{role} : Validating arguments against arg spec 'main'" in result.stdout
    # and again for the part that runs while the packages install
    for role in ("common", "tls", "mariadb", "storage", "postfix"):
        assert f"{role} : Validating arguments against arg spec 'prepare'" in result.stdout


def _play(tmp_path: Path, role: str, variable: str, value: str) -> Path:
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        f"- hosts: mail\n  gather_facts: false\n  vars_files: [{RENDERED_FACTS}]\n"
        f"  roles:\n    - role: {role}\n"
        f"      vars:\n        mailstack_build_dir: {tmp_path}\n        {variable}: {value}\n"
    )
    return playbook


@pytest.mark.parametrize("role", ROLES)
def test_role_accepts_its_defaults(tmp_path: Path, role: str) -> None:
    # Its own defaults (which refer to the rendered facts) pass its argument spec.
    result = _run(tmp_path, _play(tmp_path, role, "mailstack_unused", "0"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "The arg spec validation passed" in result.stdout or "ok:" in result.stdout


STORE = ("{encryption: gocryptfs, root: /var/mail/vhosts, cipher_dir: /var/mail/vhosts.crypt, "
         "mount_unit: var-mail-vhosts.mount, tool: /usr/local/sbin/mailstack-storage, "
         "conf_file: /etc/mailstack/storage.json, bound_services: [dovecot]")


@pytest.mark.parametrize(
    "role, variable, value",
    [
        ("common", "common__firewall_tcp_ports", "[ssh, smtp]"),
        ("common", "common__apt_install_recommends", "maybe"),
        ("tls", "tls__selfsigned_days", "forever"),
        ("postfix", "postfix__debconf_selections", "[{name: postfix}]"),
        # nested options
        ("dovecot", "dovecot__vmail", "{user: vmail, group: vmail, root: /m, uid: 5000}"),
        ("dovecot", "dovecot__vmail", "{user: vmail, root: /var/mail/vhosts}"),
        ("storage", "storage__settings", STORE.replace("gocryptfs", "rot13") + "}"),
        ("storage", "storage__settings", STORE.replace("root: /var/mail/vhosts, ", "") + "}"),
        ("storage", "storage__settings", STORE.replace("[dovecot]", "{dovecot: yes}") + "}"),
        ("storage", "storage__settings", STORE + ", mountpoint: /srv}"),
        ("storage", "storage__vmail", "{user: vmail, group: vmail, uid: vmail, gid: 5000}"),
        ("storage", "storage__packages_by_method", "{gocryptfs: [gocryptfs], encfs: [encfs]}"),
        ("common", "common__debconf_selections",
         "[{name: postfix, question: q, vtype: select}]"),
        ("clamav", "clamav__min_available_mib", "lots"),
        ("clamav", "clamav__debconf_selections", "[{name: clamav-daemon, question: q}]"),
    ],
)
def test_role_refuses_a_mistyped_input(tmp_path: Path, role: str, variable: str,
                                       value: str) -> None:
    result = _run(tmp_path, _play(tmp_path, role, variable, value))
    assert result.returncode != 0
    assert "Validating arguments against arg spec" in result.stdout
    assert variable in result.stdout, result.stdout


def _options(role: str) -> dict:
    spec = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    return spec["argument_specs"]["main"]["options"]


@pytest.mark.parametrize("role", ROLES)
def test_argument_spec_documents_every_default(role: str) -> None:
    """Every input in defaults/main.yml has a typed, described option whose default is the
    same value, and the spec has no option without a default there."""
    defaults = yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text())
    options = _options(role)
    assert sorted(options) == sorted(defaults)
    for name, option in options.items():
        assert option.get("type"), name
        assert option.get("description"), name
        assert option.get("default") == defaults[name], name
        if option["type"] == "dict" or option.get("elements") == "dict":
            assert option.get("options"), f"{name}: a dict needs nested options"
            for key, sub in option["options"].items():
                assert sub.get("type") and sub.get("description"), f"{name}.{key}"


@pytest.mark.parametrize("role", ROLES)
def test_role_defaults_repeat_no_rendered_fact(role: str) -> None:
    """A value the renderer computes (mailstack_vars.yml) appears in no role default as a
    literal: the defaults refer to the mailstack_* facts instead."""
    facts = yaml.safe_load(RENDERED_FACTS.read_text())

    def leaves(value):
        if isinstance(value, dict):
            for v in value.values():
                yield from leaves(v)
        elif isinstance(value, list):
            for v in value:
                yield from leaves(v)
        else:
            yield value

    # Names that are also package or unit names (gocryptfs, dovecot) may appear as such.
    shared_names = {facts["mailstack_storage"]["encryption"], *facts["mailstack_storage"]["bound_services"],
                    facts["mailstack_web"]["service"], facts["mailstack_mta_sts"]["service"],
                    facts["mailstack_monitoring"]["service"], facts["mailstack_groupware"]["service"],
                    facts["mailstack_groupware"]["memcached"]["service"]}
    # A yes/no (mailstack_bans_enabled) is no fact a default could repeat.
    rendered = {v for v in leaves(facts) if v not in shared_names and not isinstance(v, bool)}
    text = (REPO / "roles" / role / "defaults" / "main.yml").read_text()
    defaults = yaml.safe_load(text)
    found = {v for v in leaves(defaults) if v in rendered}
    assert not found, f"{role}/defaults/main.yml repeats rendered facts: {found}"
