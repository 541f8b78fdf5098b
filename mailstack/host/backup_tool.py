#!/usr/bin/python3
# Managed by mailstack (mailstack/host/backup_tool.py): rendered and placed by `mailstack deploy`.
"""mailstack-backup: encrypted backups of this host with borgbackup (installed by mailstack's
backup role). Run by its timers and by `mailstack backup` / `mailstack restore` over SSH.

  mailstack-backup create     one archive of what the site cannot make again (the store's
                              cipher directory, with a dump of the groupware's database
                              made just before, the mail sealed while it is locked,
                              rspamd's learned data), then prune by the retention policy
                              and compact;
                              the repository is made (repokey) on the first run
  mailstack-backup list       JSON: the archives, newest last
  mailstack-backup check      borg check of the repository (its metadata; "data" on stdin:
                              every chunk read back and verified too)
  mailstack-backup stage      extract one archive (its name on stdin, or "latest") into the
                              staging directory, every chunk checked on the way: a restore's
                              first step, which replaces nothing. The storage tool's `init`
                              takes the staged store instead of making an empty one.
  mailstack-backup finish     after the restored store is in place: put the staged rspamd
                              data in place (Redis stopped meanwhile), remove the staging
  mailstack-backup last       JSON: the last successful run (the state file)

Secrets stay in files only root reads: borg gets the passphrase through BORG_PASSCOMMAND
and the SSH key through BORG_RSH, never on a command line. Exit codes: 0 ok, 1 error.
The last line of stdout is JSON.

Consistency: borg reads the cipher directory while mail may arrive. Every message file is
complete (Maildir writes tmp/ then renames), and gocryptfs keeps each file in a cipher file
of its own, so an archive holds whole messages; a message moved or flagged while the run
reads its folder may be missing from that archive (the next one has it). Dovecot's index
files are rewritten in place and may be caught half-written: a restore deletes them and
Dovecot builds them again from the Maildir (UIDs, GUIDs, flags and keywords live in the
file names, dovecot-uidlist and dovecot-keywords). A store that is locked does not change.
"""

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time

PATH = "/usr/local/sbin/mailstack-backup"
CONF = "/etc/mailstack/backup.json"
OK = 0
ERROR = 1
REMOTE_LOG_ENV = "MAILSTACK_BORG_REMOTE_LOG"
ARCHIVE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,199}")


def conf():
    with open(CONF, encoding="utf-8") as f:
        return json.load(f)


def fail(msg, **more):
    print(json.dumps({"ok": False, "error": msg, **more}))
    sys.exit(ERROR)


def env(c):
    """borg's environment: the repository, where the passphrase and the key are, the pinned
    host keys (never ask, never learn a new one). borg reaches the server through this tool's
    `ssh` verb (ssh_relay)."""
    rsh = " ".join([
        PATH, "ssh", "-i", c["key_file"], "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={c['known_hosts']}",
        "-o", "ServerAliveInterval=30", "-o", "ConnectTimeout=20"])
    return {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": c["base_dir"],
        "BORG_REPO": c["repository"], "BORG_RSH": rsh, REMOTE_LOG_ENV: remote_log(c),
        "BORG_PASSCOMMAND": f"cat {c['passphrase_file']}",
        "BORG_BASE_DIR": c["base_dir"],
        # A restored host reaches the same repository from a new machine (or at a new
        # address): that is what a restore is. The repository is encrypted either way.
        "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "no",
        "BORG_DISPLAY_PASSPHRASE": "no",
        "BORG_CHECK_I_KNOW_WHAT_I_AM_DOING": "NO",
        "BORG_DELETE_I_KNOW_WHAT_I_AM_DOING": "NO",
    }


def remote_log(c):
    return os.path.join(c["base_dir"], "remote.log")


def ssh_relay(args):
    """borg's ssh (BORG_RSH): ssh ARGS, with what the server says (its log lines, on ssh's
    stderr) appended to a file instead of sent back to borg. borg 1.2 stops reading that pipe
    once it has its answer and waits for ssh to end, while ssh, with more lines to pass on
    than the pipe holds (a damaged repository's check logs one per chunk), waits for borg:
    both wait for good (borg issue 8230; fixed after Debian 12's 1.2). ssh writes to the file
    directly, so nothing can block it; this process keeps borg's stderr pipe open until ssh
    ends, because borg takes an end of that pipe for a closed connection."""
    with open(os.environ[REMOTE_LOG_ENV], "ab") as log:
        proc = subprocess.Popen(["ssh", *args], stderr=log)
    while True:
        try:
            sys.exit(proc.wait())
        except KeyboardInterrupt:  # borg's Ctrl-C reaches ssh too; wait for it to end
            continue


def borg(c, *args, **kw):
    """borg ARGS; what the server said (remote_log) comes before borg's own stderr (whose
    last lines are its verdict), each line as borg itself would show it."""
    os.makedirs(c["base_dir"], mode=0o700, exist_ok=True)
    with open(os.open(remote_log(c), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w"):
        pass
    proc = subprocess.run(["borg", *args], env=env(c), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=False, **kw)
    with open(remote_log(c), encoding="utf-8", errors="replace") as f:
        remote = [said for line in f.read().splitlines() if (said := remote_said(line))]
    proc.stderr = "\n".join([*remote, *(proc.stderr or "").splitlines()])
    return proc


def remote_said(line):
    """A line of `borg serve`'s stderr as borg shows it: its log messages come as JSON
    (progress reports are dropped), ssh's own lines as they are."""
    if not line.startswith("{"):
        return line.strip()
    try:
        msg = json.loads(line)
    except ValueError:
        return line.strip()
    return f"Remote: {msg.get('message', '')}" if msg.get("type") == "log_message" else ""


def last_words(proc):
    """borg's own message: the first line of what it said, before any traceback and the
    platform report it appends to one."""
    lines = []
    for line in (proc.stderr or proc.stdout).splitlines():
        if line.startswith(("Traceback", "Platform:")):
            break
        if line.strip() and not line.startswith(" ") and line not in lines:
            lines.append(line.strip())
    return " | ".join(lines[-3:])[-600:] or f"exit {proc.returncode}"


def repository_missing(proc):
    text = proc.stderr
    return "does not exist" in text or "is not a valid repository" in text


def ensure_repository(c):
    """Make the repository on the first run (repokey: its key, encrypted with the passphrase
    from the vault, lives in the repository). Never over an existing one."""
    info = borg(c, "info", "--json")
    if info.returncode == 0:
        return False
    if not repository_missing(info):
        fail("cannot open the repository: " + last_words(info))
    made = borg(c, "init", "--encryption=repokey-blake2", "--make-parent-dirs")
    if made.returncode != 0:
        fail("cannot make the repository: " + last_words(made))
    return True


def save_redis(c):
    """Have Redis write its data to its dump file now (rspamd's learned data). Best effort:
    without Redis running there is nothing newer than the file."""
    if subprocess.run(["systemctl", "is-active", "--quiet", "redis-server"],
                      check=False).returncode == 0:
        subprocess.run(["redis-cli", "-h", "127.0.0.1", "SAVE"], capture_output=True,
                       check=False, timeout=300)


def dump_groupware_db(c):
    """The groupware's database into the store before borg reads it: its server's files
    change while it runs, a dump made in one transaction does not. A note beside the store
    (in the archive too) says whether this run dumped it; locked, the server is stopped
    and its data directory at rest is the one a restore takes."""
    g = c.get("groupware_db")
    if not g:
        return
    note = {"dumped": False}
    running = shutil.which("systemctl") is not None and subprocess.run(
        ["systemctl", "is-active", "--quiet", g["service"]], check=False).returncode == 0
    if running:
        partial = g["dump"] + ".new"
        with open(partial, "wb") as out:
            dumped = subprocess.run(
                ["mariadb-dump", f"--socket={g['socket']}", "--single-transaction",
                 "--routines", "--databases", g["db_name"]],
                stdout=out, stderr=subprocess.PIPE, check=False)
        if dumped.returncode != 0:
            os.unlink(partial)
            fail("could not dump the groupware's database: "
                 + dumped.stderr.decode(errors="replace").strip())
        os.replace(partial, g["dump"])
        note = {"dumped": True, "at": int(time.time())}
    os.makedirs(os.path.dirname(g["backup_note"]), mode=0o700, exist_ok=True)
    with open(g["backup_note"], "w", encoding="utf-8") as f:
        json.dump(note, f)


def write_state(c, state):
    path = c["state_file"]
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def cmd_create(c):
    os.makedirs(c["base_dir"], mode=0o700, exist_ok=True)
    lock = open(c["base_dir"] + ".lock", "w")  # noqa: SIM115 (held until the process ends)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fail("another backup is running")
    started = time.time()
    # A host whose restore stopped half-way (or was never deployed) has no store: never an
    # archive without one, which prune would count as the day's.
    if not os.path.isdir(c["store"]):
        fail(f"{c['store']} does not exist: nothing to back up (run `mailstack deploy`)")
    made = ensure_repository(c)
    save_redis(c)
    dump_groupware_db(c)
    paths = [p for p in c["paths"] if os.path.exists(p)]
    name = f"{c['prefix']}-{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(started))}"
    created = borg(c, "create", "--json", "--compression", c["compression"],
                   "--one-file-system", "--numeric-ids", f"::{name}", *paths)
    # 1: warnings only (a file that vanished while it was read: a message moved meanwhile).
    if created.returncode not in (0, 1):
        fail("borg create failed: " + last_words(created), archive=name)
    try:
        stats = json.loads(created.stdout)["archive"]["stats"]
    except (ValueError, KeyError):
        stats = {}
    keep = c["retention"]
    pruned = borg(c, "prune", "--glob-archives", f"{c['prefix']}-*",
                  f"--keep-daily={keep['keep_daily']}", f"--keep-weekly={keep['keep_weekly']}",
                  f"--keep-monthly={keep['keep_monthly']}")
    if pruned.returncode not in (0, 1):
        fail("borg prune failed: " + last_words(pruned), archive=name)
    borg(c, "compact")
    state = {"finished": int(time.time()), "archive": name, "ok": True,
             "original_size": stats.get("original_size"),
             "compressed_size": stats.get("compressed_size"),
             "deduplicated_size": stats.get("deduplicated_size"),
             "files": stats.get("nfiles"), "seconds": round(time.time() - started, 1),
             "warnings": created.returncode == 1, "repository_created": made}
    write_state(c, state)
    print(json.dumps(state))


def cmd_list(c):
    listed = borg(c, "list", "--json")
    if listed.returncode != 0:
        fail("borg list failed: " + last_words(listed))
    archives = [{"name": a["name"], "time": a.get("time") or a.get("start")}
                for a in json.loads(listed.stdout).get("archives", [])]
    print(json.dumps({"ok": True, "archives": archives}))


def cmd_check(c):
    verify = sys.stdin.readline().strip() == "data"
    checked = borg(c, "check", *(["--verify-data"] if verify else []))
    if checked.returncode != 0:
        fail("borg check found problems: " + last_words(checked))
    print(json.dumps({"ok": True, "verified_data": verify}))


def cmd_last(c):
    try:
        with open(c["state_file"], encoding="utf-8") as f:
            print(json.dumps({"ok": True, "last": json.load(f)}))
    except FileNotFoundError:
        print(json.dumps({"ok": True, "last": None}))


def latest_archive(c):
    listed = borg(c, "list", "--json", "--glob-archives", f"{c['prefix']}-*")
    if listed.returncode != 0:
        fail("cannot list the archives: " + last_words(listed))
    archives = json.loads(listed.stdout).get("archives", [])
    if not archives:
        fail(f"the repository has no archive of {c['prefix']}")
    return archives[-1]["name"]


def cmd_stage(c):
    """Extract into a fresh directory below the staging directory; only a complete, checked
    extraction is marked staged (staged.json). On any error the partial tree is removed."""
    wanted = sys.stdin.readline().strip()
    if wanted != "latest" and not ARCHIVE_NAME.fullmatch(wanted):
        fail(f"not an archive name: {wanted!r}")
    started = time.time()
    name = latest_archive(c) if wanted == "latest" else wanted
    staging = c["staging_dir"]
    os.makedirs(staging, mode=0o700, exist_ok=True)
    os.chmod(staging, 0o700)
    for entry in os.listdir(staging):  # an earlier, unfinished attempt
        target = os.path.join(staging, entry)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        else:
            os.unlink(target)
    tree = os.path.join(staging, "tree")
    os.mkdir(tree, 0o700)
    extracted = borg(c, "extract", "--numeric-ids", f"::{name}", cwd=tree)
    if extracted.returncode != 0:
        shutil.rmtree(tree, ignore_errors=True)
        fail(f"archive {name} cannot be restored (nothing was changed): "
             + last_words(extracted), archive=name)
    store = os.path.join(tree, c["store"].lstrip("/"))
    if not os.path.isdir(store):
        shutil.rmtree(tree, ignore_errors=True)
        fail(f"archive {name} holds no store ({c['store']}); nothing was changed", archive=name)
    size = sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(tree) for f in fs)
    staged = {"archive": name, "tree": tree, "bytes": size,
              "seconds": round(time.time() - started, 1)}
    with open(os.path.join(staging, "staged.json"), "w", encoding="utf-8") as f:
        json.dump(staged, f)
    print(json.dumps({"ok": True, **staged}))


def cmd_finish(c):
    tree = os.path.join(c["staging_dir"], "tree")
    redis = False
    dump = os.path.join(tree, c["redis_dump"].lstrip("/"))
    if os.path.isfile(dump) and os.path.isdir(os.path.dirname(c["redis_dump"])):
        subprocess.run(["systemctl", "stop", "redis-server"], capture_output=True, check=False)
        st = os.stat(os.path.dirname(c["redis_dump"]))
        shutil.copyfile(dump, c["redis_dump"] + ".restored")
        os.chown(c["redis_dump"] + ".restored", st.st_uid, st.st_gid)
        os.chmod(c["redis_dump"] + ".restored", 0o660)
        os.replace(c["redis_dump"] + ".restored", c["redis_dump"])
        started = subprocess.run(["systemctl", "start", "redis-server"], capture_output=True,
                                 text=True, check=False)
        if started.returncode != 0:
            fail("Redis did not start on the restored data: " + started.stderr.strip())
        redis = True
    shutil.rmtree(c["staging_dir"], ignore_errors=True)
    print(json.dumps({"ok": True, "redis": redis}))


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "ssh":  # only as borg's BORG_RSH (ssh_relay)
        ssh_relay(sys.argv[2:])
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(ERROR)
    verb = sys.argv[1]
    verbs = {"create": cmd_create, "list": cmd_list, "check": cmd_check, "stage": cmd_stage,
             "finish": cmd_finish, "last": cmd_last}
    if verb not in verbs:
        fail("unknown command " + verb)
    try:
        c = conf()
    except (OSError, ValueError) as exc:
        fail(f"cannot read {CONF} ({exc}): set options.backup and run `mailstack deploy`")
    verbs[verb](c)


if __name__ == "__main__":
    main()
