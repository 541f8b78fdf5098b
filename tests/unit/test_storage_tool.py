"""The host tool mailstack-storage (mailstack/host/storage_tool.py): its state logic on real
directories (as root, with the mail and FUSE users' uid/gid of the rendered storage.json),
the mount command, the wrong-passphrase test, and its command line run as a real process.
Mounting itself needs gocryptfs/EncFS and FUSE: the container test bed covers it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RUN_TOOL

from mailstack.host import storage_tool as tool
from mailstack.host.storage_tool import ERROR, NOT_INITIALIZED, OK, WRONG_PASSPHRASE

MARKERS = {"gocryptfs": "gocryptfs.conf", "encfs": ".encfs6.xml"}


def owner(path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def mkstore(conf: dict) -> None:
    """An initialised store as far as the tool can tell: the cipher dir and its config file."""
    Path(conf["cipher_dir"]).mkdir()
    Path(conf["cipher_dir"], MARKERS[conf["encryption"]]).write_text("{}")


def failure(capsys, excinfo) -> tuple[int, dict]:
    """(exit code, the JSON line) of a tool function that failed in-process."""
    return excinfo.value.code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_the_exit_codes_are_the_documented_ones():
    assert (OK, ERROR, WRONG_PASSPHRASE, NOT_INITIALIZED) == (0, 1, 3, 4)
    assert (f"Exit codes: {OK} ok, {ERROR} error, {WRONG_PASSPHRASE} wrong passphrase, "
            f"{NOT_INITIALIZED} store not initialized.") in tool.__doc__


# --- initialized, has_files, mounted, state ---

@pytest.mark.parametrize("method", ["gocryptfs", "encfs"])
def test_initialized_means_the_methods_own_config_file(storage_conf, method):
    conf = storage_conf(method)
    assert not tool.initialized(conf)
    Path(conf["cipher_dir"]).mkdir()
    other = next(m for name, m in MARKERS.items() if name != method)
    Path(conf["cipher_dir"], other).write_text("{}")
    assert not tool.initialized(conf)  # the other method's file is not this store
    Path(conf["cipher_dir"], MARKERS[method]).write_text("{}")
    assert tool.initialized(conf)


def test_an_unknown_method_is_never_initialized(storage_conf):
    conf = storage_conf("luks")
    Path(conf["cipher_dir"]).mkdir()
    for marker in MARKERS.values():
        Path(conf["cipher_dir"], marker).write_text("{}")
    assert not tool.initialized(conf)


def test_has_files_ignores_empty_directories(tmp_path):
    maildir = tmp_path / "example.org" / "alice" / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    assert not tool.has_files(tmp_path)
    (maildir / "new" / "1700000000.M1P1.mail").write_text("Subject: hi\n\nhi\n")
    assert tool.has_files(tmp_path)
    assert not tool.has_files(tmp_path / "nonexistent")


def test_mounted_reads_the_mount_table(tmp_path):
    assert tool.mounted("/")
    assert tool.mounted("/proc")
    assert not tool.mounted(str(tmp_path))


def test_a_new_encrypted_store_is_locked_and_not_initialized(storage_conf):
    assert tool.state(storage_conf()) == {
        "encryption": "gocryptfs", "initialized": False, "mounted": False, "locked": True,
        "plain_mail": False, "migrating": False}


def test_an_initialised_store_is_locked_until_mounted(storage_conf):
    conf = storage_conf("encfs")
    mkstore(conf)
    Path(conf["root"]).mkdir()
    state = tool.state(conf)
    assert (state["initialized"], state["locked"], state["mounted"]) == (True, True, False)
    assert not state["plain_mail"]


def test_mail_under_the_bare_mountpoint_is_plain_mail(storage_conf):
    conf = storage_conf()
    mkstore(conf)
    Path(conf["root"], "example.org", "alice").mkdir(parents=True)
    Path(conf["root"], "example.org", "alice", "1.eml").write_text("x")
    state = tool.state(conf)
    assert state["plain_mail"] and state["locked"]


def test_a_store_that_is_not_encrypted(storage_conf):
    conf = storage_conf("none")
    Path(conf["root"]).mkdir()
    assert tool.state(conf) == {
        "encryption": "none", "initialized": True, "mounted": False, "locked": False,
        "plain_mail": False, "migrating": False}
    Path(conf["root"], "1.eml").write_text("x")
    assert tool.state(conf)["plain_mail"]


def test_mail_set_aside_by_a_switch_is_migrating(storage_conf):
    conf = storage_conf()
    assert not tool.state(conf)["migrating"]
    Path(conf["root"] + ".migrating").mkdir()
    assert tool.state(conf)["migrating"]


def test_a_mounted_root_is_unlocked_and_never_plain_mail(storage_conf):
    conf = dict(storage_conf(), root="/")  # a mount point that exists everywhere (and has files)
    state = tool.state(conf)
    assert (state["mounted"], state["locked"], state["plain_mail"]) == (True, False, False)


# --- the users, the mountpoint and the cipher dir ---

def test_the_fuse_user_is_its_own_and_the_mail_user_is_presented(storage_conf):
    conf = storage_conf()
    assert tool.ids(conf) == (5000, 5000, 5001, 5001)
    assert (conf["user"], conf["fuse_user"]) == ("vmail", "mailcrypt")


@pytest.mark.parametrize(("key", "value"), [
    ("fuse_uid", 5000),  # the mail user's: its processes could read the key
    ("fuse_uid", 0), ("fuse_gid", 0),  # root
    ("fuse_uid", None), ("uid", "5000"), ("gid", True), ("fuse_gid", -1), ("uid", 5000.0),
    ("fuse_uid", "5001 -o allow_root"),
])
def test_ids_that_could_not_be_meant_are_refused(storage_conf, capsys, key, value):
    """They reach the mount's argv and setuid: the tool stops before running anything."""
    conf = dict(storage_conf(), **{key: value})
    if value is None:
        del conf[key]
    with pytest.raises(SystemExit) as exc:
        tool.mount_cmd(conf)
    assert failure(capsys, exc) == (ERROR, {"ok": False, "error": (
        f"{tool.CONF} has no valid uid, gid, fuse_uid and fuse_gid: run `mailstack deploy`")})


def test_fuse_tools_run_as_the_fuse_user_in_the_mail_users_group(storage_conf, monkeypatch):
    seen = {}
    monkeypatch.setattr(tool, "run", lambda cmd, **kw: seen.update(cmd=cmd, **kw))
    tool.as_fuse_user(storage_conf(), ["gocryptfs", "-version"])
    assert (seen["user"], seen["group"], seen["extra_groups"]) == (5001, 5001, [5000])
    assert seen["env"]["HOME"].endswith("vhosts.crypt")


def test_prepare_mountpoint_creates_it_for_the_fuse_user(storage_conf, as_root):
    conf = storage_conf()
    tool.prepare_mountpoint(conf)
    st = os.stat(conf["root"])
    assert (st.st_uid, st.st_gid) == (conf["fuse_uid"], conf["fuse_gid"]) == (5001, 5001)
    assert stat.S_IMODE(st.st_mode) == 0o700


def test_prepare_mountpoint_takes_over_an_empty_root_owned_directory(storage_conf, as_root):
    conf = storage_conf()
    Path(conf["root"]).mkdir(mode=0o755)
    assert owner(conf["root"]) == (0, 0)
    tool.prepare_mountpoint(conf)
    assert owner(conf["root"]) == (5001, 5001)
    assert stat.S_IMODE(os.stat(conf["root"]).st_mode) == 0o700


@pytest.mark.parametrize("content", ["file", "empty directory"])
def test_prepare_mountpoint_refuses_a_non_empty_directory_and_leaves_it(storage_conf, capsys,
                                                                      content):
    conf = storage_conf()
    root = Path(conf["root"])
    root.mkdir(mode=0o755)
    if content == "file":
        (root / "1.eml").write_text("x")
    else:
        (root / "example.org").mkdir()
    before = (owner(root), stat.S_IMODE(root.stat().st_mode), sorted(os.listdir(root)))
    with pytest.raises(SystemExit) as exc:
        tool.prepare_mountpoint(conf)
    code, answer = failure(capsys, exc)
    assert code == ERROR
    assert answer["ok"] is False
    assert answer["error"].startswith(f"{root} is not empty while the store is not mounted; "
                                      "mounting would hide those files")
    assert (owner(root), stat.S_IMODE(root.stat().st_mode), sorted(os.listdir(root))) == before


def test_chown_tree_gives_the_store_away_without_following_links(tmp_path, as_root):
    outside = tmp_path / "outside"
    outside.write_text("not the store's")
    store = tmp_path / "vhosts.crypt"
    (store / "d1" / "d2").mkdir(parents=True)
    (store / "gocryptfs.conf").write_text("{}")
    (store / "d1" / "d2" / "f").write_text("x")
    (store / "d1" / "link").symlink_to(outside)
    tool.chown_tree(str(store), 5001, 5001)
    for dirpath, dirnames, filenames in os.walk(store):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            assert owner(name) == (5001, 5001), name
    assert owner(outside) == (0, 0)


def test_chown_tree_gives_the_top_directory_last(tmp_path, monkeypatch):
    """Its owner is the mark of a complete handover: one cut short is done again."""
    store = tmp_path / "vhosts.crypt"
    (store / "d1" / "d2").mkdir(parents=True)
    (store / "gocryptfs.conf").write_text("{}")
    (store / "d1" / "d2" / "f").write_text("x")
    order = []
    monkeypatch.setattr(tool.os, "lchown", lambda path, uid, gid: order.append(path))
    tool.chown_tree(str(store), 5001, 5001)
    assert set(order) == {str(store), *(str(p) for p in store.rglob("*"))}
    assert order[-1] == str(store) and order.count(str(store)) == 1
    assert order.index(str(store / "d1" / "d2" / "f")) < order.index(str(store / "d1" / "d2"))


@pytest.mark.parametrize("earlier_owner", [(5000, 5000), (0, 0)])  # the mail user's, root's
def test_prepare_cipher_dir_hands_an_earlier_store_to_the_fuse_user(storage_conf, as_root,
                                                                    earlier_owner):
    conf = storage_conf()
    mkstore(conf)
    Path(conf["cipher_dir"], "ab12").mkdir()
    Path(conf["cipher_dir"], "ab12", "cd34").write_text("x")
    for path in (Path(conf["cipher_dir"]), *Path(conf["cipher_dir"]).rglob("*")):
        os.lchown(path, *earlier_owner)
    os.chmod(conf["cipher_dir"], 0o700)
    tool.prepare_cipher_dir(conf)
    for path in (Path(conf["cipher_dir"]), *Path(conf["cipher_dir"]).rglob("*")):
        assert owner(path) == (5001, 5001), path
    # the mount's root as Dovecot sees it; the daemon, in the mail group, needs its rights
    assert stat.S_IMODE(os.stat(conf["cipher_dir"]).st_mode) == 0o770


# --- the mount command and the wrong-passphrase test ---

def test_gocryptfs_mounts_for_the_mail_user_and_reads_the_passphrase_from_stdin(storage_conf):
    conf = storage_conf("gocryptfs")
    argv = tool.mount_cmd(conf)
    assert argv[0] == "gocryptfs"
    assert "-allow_other" in argv  # implies default_permissions: the kernel checks the owner
    assert argv[argv.index("-force_owner") + 1] == "5000:5000"  # shown as the mail user's
    assert argv[-2:] == [conf["cipher_dir"], conf["root"]]
    # nothing but fixed flags and the two paths: no passphrase, no file or program giving one
    assert set(argv) - {conf["cipher_dir"], conf["root"]} == {
        "gocryptfs", "-q", "-allow_other", "-force_owner", "5000:5000", "-noprealloc"}


def test_encfs_mounts_for_the_mail_user_and_reads_the_passphrase_from_stdin(storage_conf):
    conf = storage_conf("encfs")
    argv = tool.mount_cmd(conf)
    assert argv[0] == "encfs"
    assert argv[argv.index("-o") + 1].split(",") == [
        "allow_other", "default_permissions", "uid=5000", "gid=5000"]
    assert "--stdinpass" in argv
    assert argv[-2:] == [conf["cipher_dir"], conf["root"]]
    assert set(argv) - {conf["cipher_dir"], conf["root"]} == {
        "encfs", "--stdinpass", "-o", "allow_other,default_permissions,uid=5000,gid=5000"}


@pytest.mark.parametrize(("encryption", "code", "output", "wrong"), [
    ("gocryptfs", 12, "", True),  # gocryptfs' exit code for an incorrect password
    ("encfs", 1, "Error decoding volume key, password incorrect", True),  # EncFS says so
    ("encfs", 12, "fuse: mountpoint is not empty", False),  # 12 means it only for gocryptfs
    ("gocryptfs", 10, "fuse: mountpoint is not empty", False),
    ("gocryptfs", 1, "fusermount: option allow_other only allowed if 'user_allow_other' is set "
                     "in /etc/fuse.conf", False),
    ("encfs", 1, "fuse: device not found, try 'modprobe fuse' first", False),
])
def test_wrong_passphrase(encryption, code, output, wrong):
    assert tool.wrong_passphrase(encryption, code, output) is wrong


# --- the command line, run as a real process ---

@pytest.mark.parametrize("args", [(), ("state", "extra")])
def test_without_exactly_one_verb_it_prints_its_usage(storage_conf, host_tool, args):
    proc = host_tool(storage_conf(), *args)
    assert proc.returncode == ERROR
    assert proc.stdout.startswith("mailstack-storage: the encrypted mail store on this host")
    assert "mailstack-storage unlock" in proc.stdout


def test_an_unknown_verb_is_a_json_error(storage_conf, host_tool):
    proc = host_tool(storage_conf(), "frobnicate")
    assert proc.returncode == ERROR
    assert json.loads(proc.stdout) == {"ok": False, "error": "unknown command frobnicate"}


@pytest.mark.parametrize("content", [None, "{not json"])
def test_a_missing_or_damaged_conf_is_a_json_error(tmp_path, content):
    conf_file = tmp_path / "missing.json"
    if content is not None:
        conf_file.write_text(content)
    proc = subprocess.run([sys.executable, "-I", "-c", RUN_TOOL, tool.__file__,
                           str(conf_file), "status"], capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == ERROR, proc.stderr
    assert "Traceback" not in proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["ok"] is False and "run `mailstack deploy` first" in answer["error"]


def test_state_prints_what_state_computes(storage_conf, host_tool):
    conf = storage_conf("encfs")
    mkstore(conf)
    Path(conf["root"] + ".migrating").mkdir()
    proc = host_tool(conf, "state")
    assert proc.returncode == OK, proc.stderr
    assert json.loads(proc.stdout) == tool.state(conf)
    assert json.loads(proc.stdout)["migrating"] is True


def test_unlock_of_a_store_that_does_not_exist_yet(storage_conf, host_tool):
    proc = host_tool(storage_conf(), "unlock", stdin="secret\n")
    assert proc.returncode == NOT_INITIALIZED
    assert json.loads(proc.stdout) == {
        "ok": False, "error": "the encrypted store does not exist yet: run `mailstack deploy`"}


@pytest.mark.parametrize("verb", ["unlock", "mount"])
def test_no_passphrase_on_stdin_is_refused(storage_conf, host_tool, verb):
    conf = storage_conf()
    mkstore(conf)
    proc = host_tool(conf, verb, stdin="")
    assert proc.returncode == ERROR
    assert json.loads(proc.stdout) == {"ok": False, "error": "no passphrase on standard input"}


def test_init_refuses_an_existing_store_and_a_plain_one(storage_conf, host_tool):
    conf = storage_conf()
    mkstore(conf)
    proc = host_tool(conf, "init", stdin="secret\n")
    assert (proc.returncode, json.loads(proc.stdout)["error"]) == (
        ERROR, "the encrypted store is already initialised")
    proc = host_tool(storage_conf("none"), "init", stdin="secret\n")
    assert (proc.returncode, json.loads(proc.stdout)["error"]) == (
        ERROR, "storage.encryption is none: nothing to initialise")


def test_lock_of_a_store_that_is_not_encrypted_is_refused(storage_conf, host_tool):
    # (Locking a store, and one already locked, starts the sealer: tests/e2e/test_storage.py.)
    conf = storage_conf("none")
    proc = host_tool(conf, "lock")
    assert proc.returncode == ERROR
    assert json.loads(proc.stdout) == {
        "ok": False, "error": "storage.encryption is none: there is nothing to lock"}


def test_unlock_hands_the_store_to_the_fuse_user_then_refuses_to_hide_mail(storage_conf,
                                                                           host_tool, as_root):
    """A store created by root (before the daemon ran unprivileged) is given to the FUSE
    user; mail under the bare mountpoint stops the mount before anything runs."""
    conf = storage_conf()
    mkstore(conf)
    Path(conf["root"]).mkdir()
    Path(conf["root"], "1.eml").write_text("x")
    proc = host_tool(conf, "unlock", stdin="secret\n")
    assert proc.returncode == ERROR, proc.stderr
    assert "is not empty while the store is not mounted" in json.loads(proc.stdout)["error"]
    assert owner(conf["cipher_dir"]) == owner(Path(conf["cipher_dir"], "gocryptfs.conf")) == (
        5001, 5001)
    assert owner(conf["root"]) == (0, 0)
    assert "secret" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("given", ["-oProxyCommand=x", "192.0.2.1 --all", "bad", ""])
def test_unban_takes_only_an_address_or_all(storage_conf, host_tool, given):
    """The address reaches fail2ban-client's argv: anything else stops before it."""
    proc = host_tool(storage_conf(), "unban", stdin=given + "\n")
    assert proc.returncode == ERROR
    assert json.loads(proc.stdout)["error"].startswith("not an IP address")


@pytest.mark.parametrize("given", ["{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2FsdA$aGFzaA'; DROP",
                                   "x' OR '1'='1", "", "{PLAIN}secret"])
def test_verify_login_takes_only_an_argon2_hash_or_off(storage_conf, host_tool, given):
    """The hash reaches an SQL statement: anything else stops before it."""
    proc = host_tool(storage_conf(), "verify-login", stdin=given + "\n")
    assert proc.returncode == ERROR
    assert json.loads(proc.stdout)["error"] == "not an {ARGON2ID} hash"


def test_the_locked_marker_is_no_argon2_hash_and_fits_sql():
    assert not tool.VERIFY_LOCKED.startswith("{ARGON2ID}")
    assert "'" not in tool.VERIFY_LOCKED and "\\" not in tool.VERIFY_LOCKED


def test_deferred_reasons_count_messages_per_reason_most_first():
    refused = "SASL authentication failed; server relay.test[172.18.0.5] said: 535 5.7.8 Error"
    down = "connect to mail.second.test[172.18.0.3]:25: Connection refused"
    entries = [
        # Two recipients held back for one reason: one message.
        {"queue_name": "deferred", "queue_id": "A", "recipients": [
            {"address": "a@second.test", "delay_reason": down},
            {"address": "b@second.test", "delay_reason": down}]},
        {"queue_name": "deferred", "queue_id": "B", "recipients": [
            {"address": "c@relayed.test", "delay_reason": refused}]},
        {"queue_name": "deferred", "queue_id": "C", "recipients": [
            {"address": "c@relayed.test", "delay_reason": refused}]},
        # Mail on its way is not waiting for anything.
        {"queue_name": "active", "queue_id": "D", "recipients": [{"address": "d@x.test"}]},
    ]
    assert tool.deferred_reasons(entries) == [{"reason": refused, "messages": 2},
                                              {"reason": down, "messages": 1}]
    assert tool.deferred_reasons(entries, most=1) == [{"reason": refused, "messages": 2}]
    assert tool.deferred_reasons([]) == []

