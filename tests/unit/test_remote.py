"""Running the host tool over SSH (mailstack/deploy/remote.py, storage.py) and the SSH argv
(ssh.py): what each way of failing tells the user. The real ssh client against loopback ports
(closed, or open and silent); the real host tool and real shells for what a server answers."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest

from mailstack.deploy.remote import TOOL, run_tool, ssh_command, tool_result
from mailstack.deploy.ssh import CONNECT_TIMEOUT, ansible_ssh_args, ssh_argv
from mailstack.deploy.storage import status, status_of, unlock, unlocked
from mailstack.errors import MailstackError
from mailstack.host.storage_tool import ERROR, NOT_INITIALIZED, OK, WRONG_PASSPHRASE
from mailstack.site.directory import Site
from mailstack.site.inventory import InventoryHost, load_hosts, write_inventory

NAME = "mail.example.org"
HOST = InventoryHost(NAME, "203.0.113.7", "root", 22, None)


# --- the SSH argv (ssh.py), read back through `ssh -G`: what the real client would use ---

def effective(argv: list[str]) -> dict[str, list[str]]:
    """`ssh -G`: the configuration ssh resolves from the argv, without connecting."""
    assert argv[0] == "ssh"
    proc = subprocess.run(["ssh", "-G", *argv[1:]], capture_output=True, text=True,
                          check=True, timeout=10, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    config: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        config.setdefault(key, []).append(value)
    return config


def test_a_site_host_is_pinned_in_the_sites_known_hosts(tmp_path):
    known = tmp_path / "known_hosts"
    cfg = effective(ssh_argv("root", "192.0.2.1", known_hosts=known, remote=["true"]))
    assert cfg["stricthostkeychecking"] == ["accept-new"]
    assert cfg["userknownhostsfile"] == [str(known)]
    assert cfg["batchmode"] == ["yes"]
    assert cfg["connecttimeout"] == [str(CONNECT_TIMEOUT)]
    assert (cfg["user"], cfg["hostname"], cfg["port"]) == (["root"], ["192.0.2.1"], ["22"])


def test_an_unpinned_host_trusts_any_key_and_records_none():
    argv = ssh_argv("root", "192.0.2.1", known_hosts=None, remote=["true"])
    cfg = effective(argv)
    assert cfg["stricthostkeychecking"] == ["false"]  # ssh's spelling of "no"
    assert cfg["userknownhostsfile"] == ["/dev/null"]
    assert cfg["loglevel"] == ["ERROR"]
    assert "accept-new" not in argv


def test_key_and_port(tmp_path):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    argv = ssh_argv("deploy", "192.0.2.1", port=2222, key=key, known_hosts=None, remote=["true"])
    cfg = effective(argv)
    assert cfg["port"] == ["2222"]
    assert cfg["identityfile"] == [str(key)]
    assert cfg["identitiesonly"] == ["yes"]
    assert cfg["user"] == ["deploy"]
    assert "-i" not in ssh_argv("deploy", "192.0.2.1", known_hosts=None, remote=["true"])


def test_the_remote_command_follows_the_destination_after_a_double_dash():
    argv = ssh_argv("deploy", "192.0.2.1", known_hosts=None, remote=[TOOL, "status"])
    assert argv[-4:] == ["deploy@192.0.2.1", "--", TOOL, "status"]


def test_the_tool_runs_directly_as_root_and_through_sudo_n_otherwise(site_dir):
    site = Site(site_dir)
    as_root = ssh_command(site, HOST, [TOOL, "status"])
    assert as_root[as_root.index("--"):] == ["--", TOOL, "status"]
    deploy = InventoryHost(NAME, "203.0.113.7", "deploy", 2222, None)
    as_user = ssh_command(site, deploy, [TOOL, "status"])
    assert as_user[as_user.index("--"):] == ["--", "sudo", "-n", TOOL, "status"]
    assert "deploy@203.0.113.7" in as_user
    cfg = effective(as_user)
    assert cfg["userknownhostsfile"] == [str(site_dir.resolve() / "known_hosts")]
    assert cfg["stricthostkeychecking"] == ["accept-new"]
    assert cfg["port"] == ["2222"]


def test_ansible_gets_connection_sharing_and_the_same_pinning(tmp_path):
    known = tmp_path / "known_hosts"
    args = shlex.split(ansible_ssh_args(known))
    assert "ControlMaster=auto" in args and "ControlPersist=60s" in args
    cfg = effective(["ssh", *args, "root@192.0.2.1"])
    assert cfg["stricthostkeychecking"] == ["accept-new"]
    assert cfg["userknownhostsfile"] == [str(known)]
    assert cfg["controlmaster"] == ["auto"]


# --- unreachable, silent: the real ssh client against loopback ---

@pytest.fixture
def closed_port():
    """A port bound but not listening: a connection is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def silent_port():
    """A port that accepts connections and never says a word (no SSH banner)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def loopback_site(site_dir: Path, port: int, user: str = "root") -> Site:
    write_inventory(site_dir, NAME, "127.0.0.1", user, port, None)
    return Site(site_dir)


@pytest.mark.parametrize("user", ["root", "deploy"])
def test_an_unreachable_host_is_named_with_user_host_and_port(site_dir, closed_port, user):
    site = loopback_site(site_dir, closed_port, user)
    [host] = load_hosts(site_dir)
    with pytest.raises(MailstackError) as err:
        run_tool(site, host, "status")
    assert str(err.value) == (
        f"{NAME}: cannot reach {user}@127.0.0.1:{closed_port} over SSH: ssh: connect to host "
        f"127.0.0.1 port {closed_port}: Connection refused")
    assert not site.known_hosts.exists()


def test_unlock_and_status_stop_at_an_unreachable_host(site_dir, closed_port):
    site = loopback_site(site_dir, closed_port)
    for call in (lambda: unlock(site), lambda: status(site), lambda: unlock(site, NAME, "pw")):
        with pytest.raises(MailstackError, match=rf"cannot reach root@127\.0\.0\.1:{closed_port} "):
            call()


def test_a_host_that_does_not_answer_times_out(site_dir, silent_port):
    site = loopback_site(site_dir, silent_port)
    [host] = load_hosts(site_dir)
    start = time.monotonic()
    with pytest.raises(MailstackError) as err:
        run_tool(site, host, "status", timeout=1)
    assert str(err.value) == f"{NAME}: no answer over SSH within 1 s"
    assert time.monotonic() - start < CONNECT_TIMEOUT  # our timeout, not ssh's


def test_unlock_without_a_passphrase_connects_to_nothing(site_dir, closed_port):
    site = loopback_site(site_dir, closed_port)
    del site.secrets.site["storage_passphrase"]
    # were it to connect, the closed port would make this the "cannot reach" error
    with pytest.raises(MailstackError, match=r"no storage passphrase: secrets/site\.yml has none"):
        unlock(site)
    with pytest.raises(MailstackError, match="no storage passphrase"):
        unlock(Site(site_dir), passphrase="")


# --- what the server answers: real shells, the real host tool ---

def remote_shell(shell: str, command: list[str]) -> subprocess.CompletedProcess:
    """What sshd does with `ssh … -- COMMAND`: the words joined by spaces, run by the user's
    shell (bash for root on Debian; sh where a user's shell is dash)."""
    return subprocess.run([shell, "-c", " ".join(command)], capture_output=True, text=True,
                          check=False, timeout=10)


def result_of(proc: subprocess.CompletedProcess, verb: str = "unlock"):
    return tool_result(HOST, verb, proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_a_missing_tool_says_run_deploy_first(tmp_path, shell):
    proc = remote_shell(shell, [str(tmp_path / "mailstack-storage"), "status"])
    assert proc.returncode == 127
    with pytest.raises(MailstackError) as err:
        result_of(proc, "status")
    assert str(err.value) == (f"{NAME}: the storage tool is not installed; run "
                              "`mailstack deploy` first")


def test_a_missing_tool_behind_sudo_says_run_deploy_first():
    # sudo (plugins/sudoers/sudoers.c) refuses a command it cannot find with this, exit 1
    with pytest.raises(MailstackError, match="the storage tool is not installed"):
        tool_result(HOST, "status", 1, "", f"sudo: {TOOL}: command not found\n")


@pytest.mark.parametrize(("code", "stdout", "stderr", "shown"), [
    (0, "Welcome to mail.example.org\n", "", "Welcome to mail.example.org"),
    (0, "", "", ""),
    (1, "", "Traceback (most recent call last):\n...\nKeyError: 'root'\n", "KeyError: 'root'"),
    (0, "ok\n42\n", "", "ok\n42"),
    (0, '"unlocked"\n', "", '"unlocked"'),
    (2, "{not json\n", "", "{not json"),
])
def test_garbage_is_an_error_that_shows_it(code, stdout, stderr, shown):
    with pytest.raises(MailstackError) as err:
        tool_result(HOST, "status", code, stdout, stderr)
    assert str(err.value).startswith(f"{NAME}: {TOOL} status failed (exit {code}): ")
    assert str(err.value).endswith(shown)


def test_only_the_last_stdout_line_is_the_answer():
    result = tool_result(HOST, "status", 0, 'a warning\n{"ok": true, "queue": 0}\n', "")
    assert (result.host, result.code, result.data) == (NAME, 0, {"ok": True, "queue": 0})


def tool_says(code: int, **data) -> tuple[int, str, str]:
    return code, json.dumps(data) + "\n", ""


def test_a_wrong_passphrase_leaves_the_store_locked():
    result = tool_result(HOST, "unlock", *tool_says(
        WRONG_PASSPHRASE, ok=False, error="wrong passphrase: the store stays locked"))
    assert result.code == WRONG_PASSPHRASE
    with pytest.raises(MailstackError) as err:
        unlocked(result)
    assert str(err.value) == (f"{NAME}: wrong passphrase; the store stays locked and nothing "
                              "was changed")


def test_an_uninitialised_store_says_run_deploy_first(storage_conf, host_tool):
    proc = host_tool(storage_conf(), "unlock", stdin="secret\n")
    assert proc.returncode == NOT_INITIALIZED
    with pytest.raises(MailstackError) as err:
        unlocked(result_of(proc))
    assert str(err.value) == (f"{NAME}: there is no encrypted store yet; run `mailstack deploy` "
                              "first")


def test_a_store_that_is_not_encrypted_cannot_be_unlocked(storage_conf, host_tool):
    proc = host_tool(storage_conf("none"), "unlock", stdin="secret\n")
    assert proc.returncode == ERROR
    with pytest.raises(MailstackError) as err:
        unlocked(result_of(proc))
    assert str(err.value) == (f"{NAME}: unlock failed: storage.encryption is none: there is "
                              "nothing to unlock")


def test_mail_under_the_mountpoint_stops_the_unlock_with_the_tools_reason(storage_conf, host_tool,
                                                                         as_root):
    conf = storage_conf()
    Path(conf["cipher_dir"]).mkdir()
    Path(conf["cipher_dir"], "gocryptfs.conf").write_text("{}")
    Path(conf["root"], "example.org", "alice").mkdir(parents=True)
    Path(conf["root"], "example.org", "alice", "1.eml").write_text("Subject: hi\n\nhi\n")
    proc = host_tool(conf, "unlock", stdin="secret\n")
    assert proc.returncode == ERROR, proc.stderr
    with pytest.raises(MailstackError) as err:
        unlocked(result_of(proc))
    assert str(err.value).startswith(f"{NAME}: unlock failed: {conf['root']} is not empty while "
                                     "the store is not mounted")


def test_a_successful_unlock_and_a_failed_json_answer():
    done = unlocked(tool_result(HOST, "unlock", *tool_says(
        OK, ok=True, already_unlocked=False, queued_before=2, delivered=2, still_queued=0)))
    assert done.data["delivered"] == 2
    with pytest.raises(MailstackError, match=f"^{NAME}: unlock failed: mounted, but Dovecot"):
        unlocked(tool_result(HOST, "unlock", *tool_says(
            ERROR, ok=False, error="mounted, but Dovecot did not start: boom")))
    # exit 0 without "ok" is no success either
    with pytest.raises(MailstackError, match="unlock failed: None"):
        unlocked(tool_result(HOST, "unlock", *tool_says(OK, mounted=True)))


def test_status():
    answer = dict(ok=True, storage={"locked": True}, services={"dovecot": "inactive"}, queue=3)
    assert status_of(tool_result(HOST, "status", *tool_says(OK, **answer))).data == answer
    with pytest.raises(MailstackError) as err:
        status_of(tool_result(HOST, "status", *tool_says(ERROR, ok=False, error="no conf")))
    assert str(err.value) == f"{NAME}: status failed: no conf"


def test_status_shows_the_jails_the_filter_and_the_resolver():
    from mailstack.cli.storage import checks_lines

    assert checks_lines({"jails": {"postfix-sasl": 2, "dovecot": 0}, "spam_filter": "ok",
                         "resolver": "ok"}) == [
        "bans: postfix-sasl 2 banned, dovecot 0 banned", "spam filter: answers",
        "resolver: answers"]
    lines = checks_lines({"jails": None, "spam_filter": "connection refused",
                          "resolver": "exit 2"})
    assert lines[0].startswith("bans: fail2ban not running")
    assert lines[1:] == ["spam filter: NOT answering (connection refused)",
                         "resolver: NOT answering (exit 2)"]
    assert checks_lines({}) == []  # an older host tool: nothing invented


RELAY_REFUSED = ("SASL authentication failed; server relay.test[172.18.0.5] said: 535 5.7.8 "
                 "Error: authentication failed: authentication failure")


def test_status_names_a_relay_that_refuses_the_login_and_what_to_do():
    from mailstack.cli.storage import queue_lines
    from mailstack.site.config import Relay

    relay = Relay(host="[relay.test]:587", username="apikey")
    assert queue_lines({"deferred": [{"reason": RELAY_REFUSED, "messages": 1}]}, relay) == [
        "relay: [relay.test]:587 refuses the login (535 5.7.8 Error: authentication failed: "
        "authentication failure); 1 message waits: run `mailstack relay set [relay.test]:587 "
        "apikey` with the right password, then `mailstack deploy`"]
    other = "connect to relay.test[172.18.0.5]:587: Connection refused"
    assert queue_lines({"deferred": [{"reason": other, "messages": 3}]}, relay) == [
        f"relay: [relay.test]:587 does not take the mail ({other}); 3 messages wait"]


def test_status_shows_why_other_mail_waits():
    from mailstack.cli.storage import queue_lines
    from mailstack.site.config import Relay

    down = "connect to mail.second.test[172.18.0.3]:25: Connection refused"
    lmtp = "lmtp: connect to private/dovecot-lmtp: No such file or directory"
    assert queue_lines({"deferred": [{"reason": down, "messages": 2}]}) == [
        f"deferred: 2 messages wait: {down}"]
    # With a relay, mail held back by something else is not blamed on the relay.
    assert queue_lines({"deferred": [{"reason": lmtp, "messages": 1}]},
                       Relay(host="[relay.test]:587", username="u")) == [
        f"deferred: 1 message waits: {lmtp}"]
    # Nothing deferred, or a host tool from before this field: no line.
    assert queue_lines({"deferred": []}) == queue_lines({}) == []


def test_each_site_has_its_own_private_ssh_connection_directory(tmp_path):
    """Ansible's shared default is keyed only by address: a re-created host with a reused
    address must not ride another site's connection."""
    import stat

    from mailstack.deploy.ssh import control_path_dir

    a, b = control_path_dir(tmp_path / "a"), control_path_dir(tmp_path / "b")
    assert a != b and a == control_path_dir(tmp_path / "a")
    assert stat.S_IMODE(a.stat().st_mode) == 0o700
    assert len(str(a)) + 41 < 100  # + "/" + ssh's 40-character %C: a unix socket path
