"""The probe (roles/probe): each role reads the host once and skips what already matches.

A skipped task is only correct if the task would have changed nothing. So:

- unit tests of the module's comparisons and the controller-side filters, on local files;
- on a real host (test bed, marker `testbed`): after a deploy, a re-run changes nothing;
  a "full run" (every probe answers "differs", so every task runs as before the probe
  existed) changes nothing either (no probe hides a change); after drift on every kind of
  thing the roles manage, `--check` reports changes without making them, and a normal
  run repairs all of it, after which nothing changes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import testbed

from mailstack.sandbox import host as sandbox

REPO = Path(__file__).resolve().parents[2]
LIBRARY = REPO / "roles" / "probe" / "library" / "mailstack_probe.py"
FILTERS = REPO / "roles" / "probe" / "filter_plugins" / "mailstack_probe.py"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probe = _load(LIBRARY, "mailstack_probe_module")
filters = _load(FILTERS, "mailstack_probe_filters")


# --------------------------------------------------------------------------- module


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "app.conf"
    path.write_text("a = 1\n")
    path.chmod(0o640)
    return path


def _sha(path: Path) -> str:
    return filters.mailstack_sha256(str(path))


def test_file_matches_checksum_owner_and_mode(conf: Path) -> None:
    uid = os.getuid()
    entry = {"path": str(conf), "state": "file", "sha256": _sha(conf), "owner": uid,
             "group": os.getgid(), "mode": "0640"}
    info = probe.probe_file(entry)
    assert info["ok"] and info["mode"] == "0640" and info["uid"] == uid


@pytest.mark.parametrize("change", [
    {"sha256": "0" * 64},
    {"mode": "0644"},
    {"owner": 4242},
    {"group": "no-such-group"},
    {"state": "directory"},
    {"state": "absent"},
])
def test_file_differs(conf: Path, change: dict) -> None:
    entry = {"path": str(conf), "state": "file", "sha256": _sha(conf), "mode": "0640", **change}
    assert not probe.probe_file(entry)["ok"]


def test_missing_file(tmp_path: Path) -> None:
    assert not probe.probe_file({"path": str(tmp_path / "nope"), "state": "file"})["ok"]
    assert not probe.probe_file({"path": str(tmp_path / "nope")})["ok"]
    assert probe.probe_file({"path": str(tmp_path / "nope"), "state": "absent"})["ok"]


def test_symlink_is_not_the_file(conf: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(conf)
    assert not probe.probe_file({"path": str(link), "state": "file", "sha256": _sha(conf)})["ok"]


def test_read_returns_the_text(conf: Path) -> None:
    assert probe.probe_file({"path": str(conf), "read": True})["content"] == "a = 1\n"


@pytest.mark.parametrize("text, ok", [
    ("# x\nuser_allow_other\n", True),
    ("#user_allow_other\n", False),
    ("user_allow_other\n#user_allow_other\n", False),  # lineinfile replaces the last match
    ("mount_max = 1\n", False),
])
def test_line_as_lineinfile_sees_it(tmp_path: Path, text: str, ok: bool) -> None:
    path = tmp_path / "fuse.conf"
    path.write_text(text)
    entry = {"path": str(path), "line": "user_allow_other", "regexp": r"^#?\s*user_allow_other"}
    assert probe.probe_file(entry)["ok"] is ok


def test_recurse_checks_every_entry(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    (keys / "example.org").mkdir(parents=True)
    key = keys / "example.org" / "s1.private"
    key.write_text("k")
    for d in (keys, keys / "example.org"):
        d.chmod(0o700)
    key.chmod(0o600)
    entry = {"path": str(keys), "state": "directory",
             "recurse": {"owner": os.getuid(), "dir_mode": "0700", "file_mode": "0600"}}
    assert probe.probe_file(entry)["ok"]
    key.chmod(0o640)
    assert not probe.probe_file(entry)["ok"]


def test_user_and_group() -> None:
    import pwd

    me = pwd.getpwuid(os.getuid())
    info = probe.probe_user({"name": me.pw_name, "uid": me.pw_uid, "home": me.pw_dir,
                             "shell": me.pw_shell})
    assert info["ok"]
    assert not probe.probe_user({"name": me.pw_name, "shell": "/bin/false-nope"})["ok"]
    assert not probe.probe_user({"name": "mailstack-no-such-user"})["ok"]
    assert not probe.probe_group({"name": "mailstack-no-such-group"})["ok"]


def test_missing_program_is_rc_127() -> None:
    assert probe.run(["mailstack-no-such-program"])["rc"] == 127


# --------------------------------------------------------------------------- filters


def test_expect_tree_lists_every_rendered_file(tmp_path: Path) -> None:
    src = tmp_path / "keys"
    (src / "b.org").mkdir(parents=True)
    (src / "a.org").mkdir()
    (src / "b.org" / "s.private").write_text("B")
    (src / "a.org" / "s.private").write_text("A")
    entries = filters.mailstack_expect_tree(str(src), "/etc/opendkim/keys",
                                            {"owner": "opendkim"}, mode="0600")
    assert [e["path"] for e in entries] == ["/etc/opendkim/keys/a.org/s.private",
                                            "/etc/opendkim/keys/b.org/s.private"]
    assert all(e["owner"] == "opendkim" and e["mode"] == "0600" and e["state"] == "file"
               for e in entries)
    assert entries[0]["sha256"] == _sha(src / "a.org" / "s.private")


def test_expect_and_paths() -> None:
    entry = filters.mailstack_expect(str(LIBRARY), "/x", owner="root")
    assert entry == {"path": "/x", "state": "file", "sha256": _sha(LIBRARY), "owner": "root"}
    assert filters.mailstack_expect_paths(["/a", "/b"], state="absent") == [
        {"path": "/a", "state": "absent"}, {"path": "/b", "state": "absent"}]


# --------------------------------------------------------------------------- on a host

# Drift on every kind of thing the roles manage: (what to do on the host, a command that
# succeeds once the deploy has repaired it).
DRIFT = [
    ("chmod 0600 /etc/dovecot/dovecot.conf", "test $(stat -c %a /etc/dovecot/dovecot.conf) = 644"),
    ("echo '# drift' >> /etc/postfix/main.cf", "! grep -q drift /etc/postfix/main.cf"),
    ("echo x >> /etc/postfix/mysql/virtual_aliases.cf",
     "! grep -qx x /etc/postfix/mysql/virtual_aliases.cf"),
    ("cp /etc/postfix/mysql/virtual_aliases.cf /etc/postfix/mysql/virtual_domains.cf",
     "test ! -e /etc/postfix/mysql/virtual_domains.cf"),
    ("systemctl stop opendkim", "systemctl is-active -q opendkim"),
    # The milters' sockets: Postfix reaches OpenDKIM's as a member of its group, rspamd's
    # through a directory only Postfix's group may enter.
    ("gpasswd -d postfix opendkim", "id -nG postfix | grep -qw opendkim"),
    ("chmod 0755 /var/spool/postfix/rspamd",
     "test $(stat -c %U:%G:%a /var/spool/postfix/rspamd) = _rspamd:postfix:750"),
    ("systemctl disable -q mariadb", "systemctl is-enabled -q mariadb"),
    ("rm /etc/aliases.db", "test /etc/aliases.db -nt /etc/aliases"),
    ("usermod -s /bin/bash vmail", "getent passwd vmail | grep -q :/usr/sbin/nologin$"),
    ("usermod -s /bin/bash mailcrypt", "getent passwd mailcrypt | grep -q :/usr/sbin/nologin$"),
    ("sed -i 's/^user_allow_other/#user_allow_other/' /etc/fuse.conf",
     "grep -qx user_allow_other /etc/fuse.conf"),
    ("rm /etc/systemd/system/dovecot.service.d/mailstack-storage.conf",
     "test -s /etc/systemd/system/dovecot.service.d/mailstack-storage.conf"
     " && systemctl show -p NeedDaemonReload --value dovecot | grep -qx no"),
    ("rm /etc/opendkim/keys/*/*.private",
     "test $(stat -c %U:%a /etc/opendkim/keys/*/*.private) = opendkim:600"),
    ("rm /var/lib/mailstack/mariadb/accounts.sql.sha256",
     "test -s /var/lib/mailstack/mariadb/accounts.sql.sha256"),
    ("rm /etc/mailname", "test -s /etc/mailname"),
    ("chmod 0600 /etc/mailstack/tls/fullchain.pem",
     "test $(stat -c %a /etc/mailstack/tls/fullchain.pem) = 644"),
    ("chmod 0755 /etc/mailstack", "test $(stat -c %a /etc/mailstack) = 700"),
    ("rm /etc/mysql/mariadb.conf.d/90-mailstack.cnf",
     "test -s /etc/mysql/mariadb.conf.d/90-mailstack.cnf"),
    ("rm /etc/apt/apt.conf.d/52mailstack-unattended-upgrades",
     "test -s /etc/apt/apt.conf.d/52mailstack-unattended-upgrades"),
]


class Deployed:
    """A stack-image host deployed once with the real CLI; runs site.yml on it directly."""

    def __init__(self, name: str, site: Path) -> None:
        self.name = name
        self.site = site

    def playbook(self, *args: str) -> int:
        """Run site.yml as `mailstack deploy` does; the number of changes it reported."""
        proc = self.run(*args)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr
        return sum(int(n) for n in re.findall(r"\bchanged=(\d+)", proc.stdout))

    def run(self, *args: str, tamper=None) -> subprocess.CompletedProcess[str]:
        """Render (`mailstack deploy` keeps its rendered tree only for its run: render one
        here), let tamper(host's rendered dir) change it, run site.yml."""
        from mailstack.deploy.ssh import ansible_ssh_args
        from mailstack.site.directory import Site
        from mailstack.site.inventory import inventory_file

        rendered = subprocess.run([sys.executable, "-m", "mailstack", "--site", str(self.site),
                                   "render"], capture_output=True, text=True, check=False)
        assert rendered.returncode == 0, rendered.stderr
        site = Site(self.site)
        if tamper is not None:
            (host_dir,) = [d for d in (self.site / "build").iterdir() if d.is_dir()]
            tamper(host_dir)
        extra = self.site / "extra-vars.json"
        extra.write_text(json.dumps({
            "mailstack_build_dir": str((self.site / "build").resolve()),
            "storage__passphrase": site.secrets.site["storage_passphrase"]}))
        extra.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        env.update(
            PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
            ANSIBLE_ROLES_PATH=str(REPO / "roles"), ANSIBLE_PIPELINING="True",
            ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="False",
            ANSIBLE_SSH_ARGS=ansible_ssh_args(site.known_hosts))
        return subprocess.run(
            ["ansible-playbook", "-i", str(inventory_file(site.root, site.inventory).resolve()),
             str(REPO / "site.yml"), "-e", f"@{extra}", *args],
            env=env, capture_output=True, text=True, timeout=900, check=False)

    def sh(self, script: str) -> subprocess.CompletedProcess[str]:
        return testbed.exec_in(self.name, ["bash", "-c", script], check=False)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Iterator[Deployed]:
    key = sandbox.ensure_keypair(sandbox.default_state_dir())
    name = f"mailstack-roles-probe-{secrets.token_hex(3)}"
    site = tmp_path_factory.mktemp("probe") / "site"
    try:
        host = testbed.start_host(name, testbed.base_image(), hostname="mail.probe.test",
                                  ssh_pubkey=key.with_suffix(".pub").read_text())
        cli = [sys.executable, "-m", "mailstack"]
        for args, stdin in (
            (["init", str(site), "--domain", "probe.test", "--hostname", "mail.probe.test",
              "--host", host.ip, "--ssh-key", str(key)], None),
            (["--site", str(site), "user", "add", "alice@probe.test", "--password-stdin"],
             "correct horse battery staple\n"),
            (["--site", str(site), "deploy"], None),
        ):
            proc = subprocess.run(cli + args, input=stdin, capture_output=True, text=True,
                                  timeout=900, check=False, cwd=REPO)
            assert proc.returncode == 0, proc.stdout + proc.stderr
        yield Deployed(name, site)
    finally:
        testbed.remove_host(name)


@pytest.mark.testbed
def test_rerun_changes_nothing(deployed: Deployed) -> None:
    assert deployed.playbook() == 0


@pytest.mark.testbed
def test_full_run_changes_nothing(deployed: Deployed) -> None:
    # Every task runs as if the probe had found nothing in place: had a probe said "ok"
    # where its task would change something, this run would change it.
    assert deployed.playbook("-e", "mailstack_full_run=true") == 0


@pytest.mark.testbed
def test_drift_is_reported_by_check_and_repaired(deployed: Deployed) -> None:
    for action, _ in DRIFT:
        done = deployed.sh(action)
        assert done.returncode == 0, f"{action}: {done.stderr}"
    assert deployed.playbook("--check", "--diff") > 0
    assert deployed.sh("test -e /etc/mailname").returncode != 0, "--check changed the host"
    # (Not before --check: without its host tool, the storage role cannot tell the state
    # of the store in check mode, which does not install the tool.)
    tool = ("rm /usr/local/sbin/mailstack-storage", "test -x /usr/local/sbin/mailstack-storage")
    assert deployed.sh(tool[0]).returncode == 0
    assert deployed.playbook() > 0
    broken = [check for _, check in [*DRIFT, tool] if deployed.sh(check).returncode != 0]
    assert not broken, f"not repaired: {broken}"
    assert deployed.playbook() == 0


@pytest.mark.testbed
def test_a_file_its_daemon_refuses_never_goes_live(deployed: Deployed) -> None:
    # One run changes a lookup table (placed first) and main.cf (placed after it), which
    # Postfix refuses: the table goes live, main.cf does not, and the play fails naming it.
    table, main_cf = "etc/postfix/mysql/virtual_aliases.cf", "etc/postfix/main.cf"

    def tamper(rendered: Path) -> None:
        with (rendered / table).open("a") as f:
            f.write("# changed by the test\n")
        with (rendered / main_cf).open("a") as f:
            f.write("mailstack_no_such_parameter = 1\n")

    failed = deployed.run(tamper=tamper)
    assert failed.returncode != 0
    assert "/etc/postfix/main.cf: the new file was refused by" in failed.stdout, failed.stdout[-4000:]
    assert "mailstack_no_such_parameter" in failed.stdout
    assert deployed.sh(f"grep -q 'changed by the test' /{table}").returncode == 0
    assert deployed.sh(f"grep -q mailstack_no_such_parameter /{main_cf}").returncode != 0
    assert deployed.sh("ls -a /etc/postfix | grep -q '^.mailstack-'").returncode != 0, \
        "the refused candidate was left behind"
    assert deployed.sh("systemctl is-active -q postfix@-").returncode == 0
    assert deployed.playbook() > 0  # the rendered table again
    assert deployed.playbook() == 0


@pytest.mark.testbed
def test_a_failed_install_fails_the_deploy_with_apt_s_words(tmp_path: Path) -> None:
    # The install runs in the background (a transient unit): its failure must still stop
    # the play, with apt's own message, and leave no policy-rc.d holding services back.
    key = sandbox.ensure_keypair(sandbox.default_state_dir())
    name = f"mailstack-roles-apt-{secrets.token_hex(3)}"
    site = tmp_path / "site"
    try:
        host = testbed.start_host(name, testbed.base_image(), hostname="mail.apt.test",
                                  ssh_pubkey=key.with_suffix(".pub").read_text())
        init = subprocess.run(
            [sys.executable, "-m", "mailstack", "init", str(site), "--domain", "apt.test",
             "--hostname", "mail.apt.test", "--host", host.ip, "--ssh-key", str(key)],
            capture_output=True, text=True, timeout=120, check=False, cwd=REPO)
        assert init.returncode == 0, init.stderr
        failed = Deployed(name, site).run(
            "-e", '{"common__extra_packages": ["mailstack-no-such-package"]}')
        assert failed.returncode != 0
        out = failed.stdout
        assert "Wait for the packages of the whole stack to install" in out, out[-3000:]
        assert "Unable to locate package mailstack-no-such-package" in out, out[-3000:]
        probe = testbed.exec_in(name, ["test", "-e", "/usr/sbin/policy-rc.d"], check=False)
        assert probe.returncode != 0, "policy-rc.d left behind"
    finally:
        testbed.remove_host(name)


# --------------------------------------------------------------------------- staging

stage = _load(REPO / "roles" / "common" / "library" / "mailstack_stage.py", "mailstack_stage")


def test_stage_writes_the_tree_root_only(tmp_path: Path) -> None:
    src = tmp_path / "build" / "mail.example.org"
    (src / "etc" / "postfix").mkdir(parents=True)
    (src / "etc" / "postfix" / "main.cf").write_bytes(b"myhostname = x\n")
    (src / "etc" / "x.sql").write_bytes(b"\x00binary\xff")
    files = filters.mailstack_tree_content(str(src))
    assert set(files) == {"etc/postfix/main.cf", "etc/x.sql"}
    dest = tmp_path / "run" / "rendered"
    dest.mkdir(parents=True)
    (dest / "stale").write_text("left by an interrupted run")
    assert stage.stage(str(dest), files) == 2
    assert (dest / "etc" / "x.sql").read_bytes() == b"\x00binary\xff"
    assert not (dest / "stale").exists()
    assert dest.stat().st_mode & 0o777 == 0o700
    assert (dest / "etc" / "postfix" / "main.cf").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("rel", ["../etc/passwd", "/etc/passwd", "a/../../b", "."])
def test_stage_refuses_paths_outside_the_tree(tmp_path: Path, rel: str) -> None:
    with pytest.raises(ValueError):
        stage.safe_path(str(tmp_path), rel)
