"""Backups (options.backup): the option's validation, the secrets made once and never again,
the rendered files, `backup now`'s refusal of an uncommitted site, and the host tools'
parts that need no host: mailstack-backup against a real borg repository on this machine
(create, list, stage, a damaged segment) and the storage tool taking a staged store.
The SSH path to a real target and the whole restore: tests/e2e/test_restore.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RUN_TOOL

from mailstack.host import backup_tool
from mailstack.host import storage_tool as tool
from mailstack.render.context import BACKUP_STATE_FILE
from mailstack.render.renderer import render_host
from mailstack.site.backup import (
    SECRET,
    authorized_keys_line,
    ensure_secrets,
    known_host_lines,
    repository_url,
)
from mailstack.site.config import Backup, SiteConfig
from mailstack.site.directory import Site

KEYSCAN = ("203.0.113.9 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO7Uq0kq2m8KjO0yqJp9y0Gm8g1x1YtC5Y8mAFbqk0aM\n"
           "# 203.0.113.9:22 SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\n")
BACKUP_YML = "  backup:\n    target: borg@backup.example.net\n    path: /srv/borg/mail\n"


def with_backup(site: Path, block: str = BACKUP_YML) -> None:
    config = site / "mailstack.yml"
    config.write_text(config.read_text().replace("  backup: null\n", block))


def keep_secrets(site: Path, known_hosts: str = KEYSCAN) -> dict:
    """What `backup init` keeps in the vault (the host's ssh-keyscan answer given)."""
    s = Site(site)
    with s.editing():
        ensure_secrets(s.secrets.site)
        s.secrets.site[SECRET]["known_hosts"] = known_host_lines(known_hosts)
        s.commit(config=False)
    return Site(site).secrets.site[SECRET]


# --- the option ---

@pytest.mark.parametrize("field,value,says", [
    ("target", "-oProxyCommand=x@host", "must be an SSH target"),
    ("target", "borg@backup.example.net:70000", "port 70000"),
    ("target", "borg@[2001:db8::1::2]", "not an IPv6 address"),
    ("target", "borg@localhost", "host name"),
    ("path", "../etc", "no .."),
    ("path", "-x", "letters, digits"),
    ("path", "a b", "letters, digits"),
    ("schedule", "*-*-* 25:00", "systemd calendar time"),
    ("schedule", "daily\nExecStart=/bin/sh", "systemd calendar time"),
    ("check_schedule", "Funday *-*-* 04:00", "systemd calendar time"),
])
def test_bad_backup_settings_name_the_field(cli, field, value, says):
    values = {"target": "borg@backup.example.net", "path": "/srv/borg/mail", field: value}
    block = "  backup:\n" + "".join(f"    {k}: {json.dumps(v)}\n" for k, v in values.items())
    with_backup(cli.site, block)
    result = cli("render")
    assert result.exit_code == 2  # an invalid mailstack.yml
    assert f"options.backup.{field}" in result.output and says in result.output, result.output


def test_a_good_backup_option_and_its_derived_values():
    backup = Backup(target="borg@[2001:db8::1]:2222", path="mail/example",
                    schedule="Mon,Thu *-*-* 03:15", retention={"keep_daily": 3})
    assert (backup.user, backup.host, backup.port) == ("borg", "2001:db8::1", 2222)
    assert repository_url(backup) == "ssh://borg@[2001:db8::1]:2222/./mail/example"
    assert backup.retention.keep_weekly == 4
    assert repository_url(Backup(target="b@192.0.2.1", path="/srv/r")) == "ssh://b@192.0.2.1:22/srv/r"


# --- the secrets: made once, never again ---

def test_the_secrets_are_made_once_and_kept(site_dir):
    with_backup(site_dir)
    first = keep_secrets(site_dir)
    again = {SECRET: dict(first)}
    assert ensure_secrets(again) is False and again[SECRET] == first
    line = authorized_keys_line(Site(site_dir).config.options.backup, {SECRET: first},
                                "mail.example.org")
    assert line.startswith('command="borg serve --restrict-to-path /srv/borg/mail",restrict '
                           "ssh-ed25519 ")
    assert line.endswith(" mailstack-backup@mail.example.org")


def test_half_the_secrets_are_never_papered_over():
    site = {SECRET: {"ssh_key": "x", "known_hosts": []}}
    with pytest.raises(Exception, match="passphrase is missing"):
        ensure_secrets(site)


def test_render_without_the_secrets_says_run_backup_init(cli):
    with_backup(cli.site)
    result = cli("render")
    assert result.exit_code == 1
    assert "mailstack backup init" in result.output


def test_known_hosts_takes_only_host_key_lines():
    assert known_host_lines(KEYSCAN + "garbage\n[x]:22 ssh-ed25519 A\nb;rm -rf ssh-rsa AAAA\n") == [
        KEYSCAN.splitlines()[0], "[x]:22 ssh-ed25519 A"]


# --- what is rendered ---

def test_rendered_backup_files(site_dir):
    with_backup(site_dir)
    vault = keep_secrets(site_dir)
    site = Site(site_dir)
    from mailstack.site.inventory import load_hosts

    files = {str(f.path): f for f in render_host(site.config, site.secrets,
                                                 load_hosts(site_dir)[0])}
    for secret in ("etc/mailstack/backup/passphrase", "etc/mailstack/backup/id_ed25519"):
        assert files[secret].secret and files[secret].mode == 0o600
    assert files["etc/mailstack/backup/passphrase"].content == vault["passphrase"] + "\n"
    assert "BEGIN OPENSSH PRIVATE KEY" in files["etc/mailstack/backup/id_ed25519"].content
    assert KEYSCAN.splitlines()[0] in files["etc/mailstack/backup/known_hosts"].content
    conf = json.loads(files["etc/mailstack/backup.json"].content)
    assert conf["repository"] == "ssh://borg@backup.example.net:22/srv/borg/mail"
    assert conf["compression"] == "auto,zstd,3"
    assert conf["paths"][0] == "/var/mail/vhosts.crypt"  # ciphertext, never the clear view
    assert conf["state_file"] == BACKUP_STATE_FILE == "/var/lib/mailstack/backup/last.json"
    assert vault["passphrase"] not in files["etc/mailstack/backup.json"].content
    assert "OnCalendar=*-*-* 02:40\n" in files["etc/systemd/system/mailstack-backup.timer"].content
    assert "OnCalendar=Sun *-*-* 04:10\n" in files["etc/systemd/system/mailstack-backup-check.timer"].content
    import yaml

    facts = yaml.safe_load(files["mailstack_vars.yml"].content)["mailstack_backup"]
    assert facts["known_hosts"] == "/etc/mailstack/backup/known_hosts" and facts["enabled"]
    assert vault["passphrase"] not in files["mailstack_vars.yml"].content
    assert files["usr/local/sbin/mailstack-backup"].content == Path(backup_tool.__file__).read_text()


def test_no_backup_files_without_the_option(site_dir):
    site = Site(site_dir)
    from mailstack.site.inventory import load_hosts

    paths = [str(f.path) for f in render_host(site.config, site.secrets, load_hosts(site_dir)[0])]
    assert not [p for p in paths if "backup" in p]


# --- backup now wants the site committed ---

def test_backup_now_refuses_an_uncommitted_site(cli):
    with_backup(cli.site)
    keep_secrets(cli.site)
    result = cli("backup", "now")
    assert result.exit_code == 1
    assert "uncommitted changes" in result.output and "--allow-dirty" in result.output
    assert "mailstack.yml" in result.output


def test_backup_commands_without_the_option_say_how(cli):
    for command in (["backup", "now"], ["backup", "list"], ["backup", "init"],
                    ["restore", "--host", "203.0.113.8"]):
        result = cli(*command)
        assert result.exit_code == 1
        assert "options.backup is not set" in result.output, result.output


def test_restore_refuses_a_bad_address_before_touching_anything(cli):
    with_backup(cli.site)
    keep_secrets(cli.site)
    inventory = (cli.site / "inventories" / "production" / "hosts.yml").read_text()
    result = cli("restore", "--host", "-oProxyCommand=x")
    assert result.exit_code == 1 and "--host" in result.output
    assert (cli.site / "inventories" / "production" / "hosts.yml").read_text() == inventory


# --- mailstack-backup against a real repository on this machine ---

needs_borg = pytest.mark.skipif(not shutil.which("borg"), reason="borg (borgbackup) not installed")


@pytest.fixture
def borg_conf(tmp_path) -> dict:
    store = tmp_path / "vhosts.crypt"
    (store / "d").mkdir(parents=True)
    (store / "gocryptfs.conf").write_text("{}")
    for i in range(20):
        (store / "d" / f"m{i}").write_bytes(os.urandom(3000))
    (tmp_path / "pass").write_text("a-passphrase-long-enough-for-borg\n")
    return {"repository": str(tmp_path / "repo"), "prefix": "mail.example.org",
            "paths": [str(store), str(tmp_path / "sealed"), str(tmp_path / "dump.rdb")],
            "store": str(store), "compression": "zstd,3",
            "retention": {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 6},
            "passphrase_file": str(tmp_path / "pass"), "key_file": "/nonexistent",
            "known_hosts": "/nonexistent", "base_dir": str(tmp_path / "base"),
            "state_file": str(tmp_path / "state" / "last.json"),
            "staging_dir": str(tmp_path / "staging"), "redis_dump": str(tmp_path / "dump.rdb")}


def backup(conf: dict, tmp_path: Path, verb: str, stdin: str = "") -> tuple[int, dict]:
    conf_file = tmp_path / "backup.json"
    conf_file.write_text(json.dumps(conf))
    proc = subprocess.run([sys.executable, "-I", "-c", RUN_TOOL, backup_tool.__file__,
                           str(conf_file), verb], input=stdin, capture_output=True, text=True,
                          timeout=120, check=False)
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


@needs_borg
def test_create_list_stage(borg_conf, tmp_path):
    code, made = backup(borg_conf, tmp_path, "create")
    assert code == 0 and made["ok"] and made["repository_created"], made
    assert made["archive"].startswith("mail.example.org-") and made["files"] == 21
    state = json.loads(Path(borg_conf["state_file"]).read_text())
    assert state["archive"] == made["archive"] and isinstance(state["finished"], int)
    assert {"original_size", "deduplicated_size"} <= set(state)
    # The repository holds no byte of the files in clear.
    sample = Path(borg_conf["store"], "d", "m3").read_bytes()[:64]
    assert not any(sample in p.read_bytes() for p in Path(borg_conf["repository"]).rglob("*")
                   if p.is_file())
    code, checked = backup(borg_conf, tmp_path, "check")
    assert code == 0 and checked == {"ok": True, "verified_data": False}
    code, listed = backup(borg_conf, tmp_path, "list")
    assert [a["name"] for a in listed["archives"]] == [made["archive"]]
    code, staged = backup(borg_conf, tmp_path, "stage", "latest\n")
    assert code == 0 and staged["archive"] == made["archive"], staged
    tree = Path(staged["tree"])
    restored = tree / borg_conf["store"].lstrip("/") / "d" / "m3"
    assert restored.read_bytes() == Path(borg_conf["store"], "d", "m3").read_bytes()
    assert json.loads((Path(borg_conf["staging_dir"]) / "staged.json").read_text())["tree"] == str(tree)


@needs_borg
def test_a_damaged_segment_stops_the_stage_and_leaves_nothing(borg_conf, tmp_path):
    assert backup(borg_conf, tmp_path, "create")[0] == 0
    for segment in Path(borg_conf["repository"], "data").rglob("*"):
        if segment.is_file() and segment.stat().st_size > 32 * 1024:
            with segment.open("r+b") as f:
                f.seek(segment.stat().st_size // 2)
                f.write(os.urandom(4096))
    code, answer = backup(borg_conf, tmp_path, "check")
    assert code == 1 and "borg check found problems" in answer["error"], answer
    code, answer = backup(borg_conf, tmp_path, "stage", "latest\n")
    assert code == 1
    assert "cannot be restored (nothing was changed)" in answer["error"]
    assert "integrity" in answer["error"].lower(), answer["error"]
    assert not Path(borg_conf["staging_dir"], "tree").exists()
    assert not Path(borg_conf["staging_dir"], "staged.json").exists()


def test_stage_takes_only_an_archive_name(tmp_path):
    conf = {"staging_dir": str(tmp_path)}
    code, answer = backup(conf, tmp_path, "stage", "::x; rm -rf /\n")
    assert code == 1 and "not an archive name" in answer["error"]


# --- the storage tool takes a staged store ---

def test_init_takes_the_staged_store_and_its_sealed_mail(storage_conf, tmp_path, as_root):
    conf = storage_conf()
    conf["restore_dir"] = str(tmp_path / "restore")
    conf["sealing"] = {**conf["sealing"], "dir": str(tmp_path / "sealed")}
    tree = tmp_path / "restore" / "tree"
    staged_store = tree / conf["cipher_dir"].lstrip("/")
    staged_store.mkdir(parents=True)
    (staged_store / "gocryptfs.conf").write_text("{}")
    (staged_store / "XyZ").write_text("ciphertext")
    staged_sealed = tree / conf["sealing"]["dir"].lstrip("/")
    staged_sealed.mkdir(parents=True)
    (staged_sealed / "1.age").write_text("sealed")
    (tmp_path / "sealed").mkdir()
    (tmp_path / "restore" / "staged.json").write_text(json.dumps(
        {"archive": "mail.example.org-2026", "tree": str(tree)}))
    staged = tool.staged_restore(conf)
    tool.adopt_staged(conf, staged)
    assert Path(conf["cipher_dir"], "XyZ").read_text() == "ciphertext"
    assert os.stat(conf["cipher_dir"]).st_uid == conf["fuse_uid"]
    assert os.stat(Path(conf["cipher_dir"], "XyZ")).st_uid == conf["fuse_uid"]
    assert (tmp_path / "sealed" / "1.age").read_text() == "sealed"
    assert not (tmp_path / "restore" / "staged.json").exists()
    assert Path(tool.clean_marker(conf)).exists()


def test_a_staged_restore_never_writes_over_a_store(storage_conf, tmp_path, capsys):
    conf = storage_conf()
    conf["restore_dir"] = str(tmp_path / "restore")
    tree = tmp_path / "restore" / "tree"
    (tree / conf["cipher_dir"].lstrip("/")).mkdir(parents=True)
    (tree / conf["cipher_dir"].lstrip("/") / "gocryptfs.conf").write_text("{}")
    Path(conf["cipher_dir"]).mkdir()
    Path(conf["cipher_dir"], "existing").write_text("x")
    with pytest.raises(SystemExit):
        tool.adopt_staged(conf, {"archive": "a", "tree": str(tree)})
    assert "never writes over a store" in capsys.readouterr().out
    assert Path(conf["cipher_dir"], "existing").exists()


def test_a_staged_tree_outside_the_restore_dir_is_ignored(storage_conf, tmp_path):
    conf = storage_conf()
    conf["restore_dir"] = str(tmp_path / "restore")
    (tmp_path / "restore").mkdir()
    (tmp_path / "restore" / "staged.json").write_text(json.dumps({"tree": "/etc"}))
    assert tool.staged_restore(conf) is None


def test_the_indexes_are_made_again_after_a_restore(storage_conf, tmp_path):
    conf = storage_conf()
    conf["restore_dir"] = str(tmp_path / "restore")
    maildir = Path(conf["root"], "example.org", "alice", "Maildir")
    (maildir / "cur").mkdir(parents=True)
    (maildir / ".Work" / "cur").mkdir(parents=True)
    (maildir / "xapian-indexes").mkdir()
    (maildir / "xapian-indexes" / "db").write_text("x")
    keep = [maildir / "cur" / "1.M1:2,S", maildir / "dovecot-uidlist",
            maildir / "dovecot-keywords", maildir / "subscriptions", maildir / ".Work" / "dovecot-uidlist"]
    gone = [maildir / "dovecot.index", maildir / "dovecot.index.log", maildir / "dovecot.index.cache",
            maildir / "dovecot.list.index", maildir / ".Work" / "dovecot.index.log"]
    for path in keep + gone:
        path.write_text("x")
    Path(conf["restore_dir"]).mkdir()
    Path(tool.clean_marker(conf)).write_text("a\n")
    assert tool.clean_indexes(conf) == len(gone) + 1
    assert all(p.exists() for p in keep)
    assert not any(p.exists() for p in gone) and not (maildir / "xapian-indexes").exists()
    assert not Path(tool.clean_marker(conf)).exists()


def groupware_conf(conf: dict, tmp_path: Path) -> dict:
    root = Path(conf["root"])
    conf["restore_dir"] = str(tmp_path / "restore")
    conf["groupware_db"] = {
        "db_name": "sogo", "service": "mailstack-groupware-db", "socket": str(tmp_path / "s"),
        "datadir": str(root / ".groupware" / "db"), "dump": str(root / ".groupware" / "sogo.sql"),
        "load_marker": str(root / ".groupware" / "load-dump"),
        "backup_note": "/var/lib/mailstack/backup/groupware-db.json"}
    return conf


def stage_with_note(conf: dict, tmp_path: Path, note: dict | None) -> dict:
    tree = tmp_path / "restore" / "tree"
    store = tree / conf["cipher_dir"].lstrip("/")
    store.mkdir(parents=True)
    (store / "gocryptfs.conf").write_text("{}")
    if note is not None:
        path = tree / conf["groupware_db"]["backup_note"].lstrip("/")
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(note))
    staged = {"archive": "mail.example.org-2026", "tree": str(tree)}
    (tmp_path / "restore" / "staged.json").write_text(json.dumps(staged))
    return staged


def test_a_restore_whose_archive_dumped_the_groupware_db_loads_that_dump(storage_conf, tmp_path,
                                                                         as_root):
    """The archive's run dumped SOGo's database (the server was running while borg read its
    files): at the mount the copied data directory is set aside and the server's next start
    loads the dump."""
    conf = groupware_conf(storage_conf(), tmp_path)
    tool.adopt_staged(conf, stage_with_note(conf, tmp_path, {"dumped": True, "at": 1}))
    assert Path(tool.groupware_marker(conf)).exists()
    g = conf["groupware_db"]
    Path(g["datadir"], "mysql").mkdir(parents=True)  # what the mounted store shows
    Path(g["datadir"], "ibdata1").write_text("torn")
    Path(g["dump"]).write_text("CREATE DATABASE sogo;\n")
    tool.set_aside_groupware_db(conf)
    assert not Path(g["datadir"]).exists()
    assert Path(g["datadir"] + ".from-archive", "ibdata1").read_text() == "torn"
    assert Path(g["load_marker"]).exists()
    assert not Path(tool.groupware_marker(conf)).exists()


@pytest.mark.parametrize("note", [{"dumped": False}, None, "not json"])
def test_a_restore_without_a_dump_keeps_the_data_directory(storage_conf, tmp_path, as_root, note):
    """Taken while locked (the server stopped cleanly), or by a run without the groupware:
    the data directory at rest is the one to run on."""
    conf = groupware_conf(storage_conf(), tmp_path)
    staged = stage_with_note(conf, tmp_path, note if isinstance(note, dict) or note is None else {})
    if isinstance(note, str):
        Path(staged["tree"], conf["groupware_db"]["backup_note"].lstrip("/")).write_text(note)
    tool.adopt_staged(conf, staged)
    assert not Path(tool.groupware_marker(conf)).exists()


def test_the_groupware_db_loads_nothing_without_a_restore(storage_conf, tmp_path, capsys):
    conf = groupware_conf(storage_conf(), tmp_path)
    tool.cmd_groupware_db_restore(conf)
    assert json.loads(capsys.readouterr().out) == {"ok": True, "loaded": False}


def test_a_backup_of_a_locked_store_notes_that_it_did_not_dump(tmp_path, monkeypatch):
    """The groupware's server is stopped while the store is locked: nothing to dump, and
    the note in the archive says so."""
    note = tmp_path / "note.json"
    conf = {"groupware_db": {"service": "mailstack-groupware-db-not-here", "socket": "/none",
                             "db_name": "sogo", "dump": str(tmp_path / "sogo.sql"),
                             "backup_note": str(note)}}
    backup_tool.dump_groupware_db(conf)
    assert json.loads(note.read_text()) == {"dumped": False}
    assert not (tmp_path / "sogo.sql").exists()
    backup_tool.dump_groupware_db({"groupware_db": None})  # without the groupware: nothing


def test_the_site_config_model_has_backup_null_by_default():
    cfg = SiteConfig.model_validate({"hostname": "mail.example.org",
                                     "admin_email": "a@example.org", "domains": ["example.org"]})
    assert cfg.options.backup is None
