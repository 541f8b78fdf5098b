#!/usr/bin/python3
# Managed by mailstack (mailstack/host/storage_tool.py): rendered and placed by `mailstack deploy`.
"""mailstack-storage: the encrypted mail store on this host (installed by mailstack's
storage role). Run by `mailstack unlock` / `mailstack status` over SSH, and by the role.

  mailstack-storage state            JSON: encryption, initialized, mounted, plain mail,
                                     mail still to migrate
  mailstack-storage init             create the encrypted store (passphrase on stdin), or
                                     take the one a restore staged (mailstack-backup stage)
  mailstack-storage mount            mount it (passphrase on stdin), nothing else
  mailstack-storage unlock           mount it (passphrase on stdin), start Dovecot, hand
                                     the mail sealed while locked back to Postfix, flush
                                     the Postfix queue, report what was delivered
  mailstack-storage lock             stop Dovecot, unmount, let the sealer take Dovecot's
                                     LMTP socket and seal what waits in Postfix's queue
  mailstack-storage status           JSON: store, services, queue size, its oldest message
                                     and why deferred mail waits, the store's disk and
                                     inode use, the certificate's end, the last backup, the
                                     ban jails, whether the spam filter, the resolver and the
                                     DNS lists answer, and whether they list this host
  mailstack-storage metrics          the same, written for Prometheus' node-exporter
                                     (textfile collector) to prometheus_file, atomically
  mailstack-storage unban            lift fail2ban's bans of one address (on stdin), or of
                                     every address ("all")
  mailstack-storage verify-login     set the verify mailbox's password hash (on stdin) for one
                                     `mailstack verify` run, or "off": locked again
  mailstack-storage groupware-db-restore
                                     after a restore: load the archive's dump of the
                                     groupware's database (its server's ExecStartPost)

The passphrase is only ever read from standard input: never an argument, a file or a log.
Exit codes: 0 ok, 1 error, 3 wrong passphrase, 4 store not initialized.

The FUSE daemon (gocryptfs or EncFS) runs as a user of its own (fuse_uid in storage.json),
neither root nor the mail user:
- not root: a daemon running as root with allow_other has to switch its credentials for
  every file a mail process creates, and gocryptfs 2.3 (Debian 12) races doing so under
  concurrent LMTP deliveries: some creates fail with EPERM and the mail is deferred. As any
  other user it creates every file as itself and needs no switching.
- not the mail user: a process may read the memory (/proc/PID/mem, ptrace) of any process
  of its own uid, and the daemon's memory holds the store's key. Dovecot's IMAP and LMTP
  processes run as the mail user.
It presents every file as the mail user's, and the kernel checks permissions against that
owner (default_permissions), so Dovecot sees its files as before; in the cipher dir they
are the daemon's. It needs `user_allow_other` in /etc/fuse.conf and a usable /dev/fuse (the
storage role sees to both), and a mountpoint its user owns (the rule for unprivileged FUSE
mounts).
"""

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time

# The controller imports these (mailstack/deploy): the one place they are defined.
PATH = "/usr/local/sbin/mailstack-storage"
CONF = "/etc/mailstack/storage.json"
OK = 0
ERROR = 1
WRONG_PASSPHRASE = 3
NOT_INITIALIZED = 4
# The verify mailbox's password hash outside a `mailstack verify` run: no password matches
# it (not an Argon2 hash), so the mailbox cannot log in.
VERIFY_LOCKED = "!locked: mailstack verify sets a one-time password for its run"


def conf():
    with open(CONF, encoding="utf-8") as f:
        return json.load(f)


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)


def mounted(path):
    with open("/proc/self/mounts", encoding="utf-8") as f:
        return any(line.split()[1] == path for line in f)


def initialized(c):
    marker = {"gocryptfs": "gocryptfs.conf", "encfs": ".encfs6.xml"}.get(c["encryption"])
    return bool(marker) and os.path.exists(os.path.join(c["cipher_dir"], marker))


def has_files(path):
    return any(files for _, _, files in os.walk(path))


def state(c):
    is_mounted = mounted(c["root"])
    return {
        "encryption": c["encryption"],
        "initialized": initialized(c) if c["encryption"] != "none" else True,
        "mounted": is_mounted,
        "locked": c["encryption"] != "none" and not is_mounted,
        # Mail in the clear directory (a store that is not encrypted yet, or mail written
        # under the mountpoint by mistake): only meaningful while not mounted.
        "plain_mail": (not is_mounted) and os.path.isdir(c["root"]) and has_files(c["root"]),
        # Unencrypted mail set aside by a switch to encryption and not moved into the store
        # yet (a deploy interrupted mid-way, or a copy that fell short).
        "migrating": os.path.isdir(c["root"] + ".migrating"),
    }


def passphrase():
    value = sys.stdin.readline().rstrip("\n")
    if not value:
        fail("no passphrase on standard input")
    return value


def fail(msg, code=ERROR):
    print(json.dumps({"ok": False, "error": msg}))
    sys.exit(code)


def ids(c):
    """(mail uid, mail gid, FUSE uid, FUSE gid), checked: they reach argv and setuid/setgid.
    The FUSE user is neither root nor the mail user (see the module docstring)."""
    found = tuple(c.get(k) for k in ("uid", "gid", "fuse_uid", "fuse_gid"))
    if not all(type(v) is int and 0 < v < 2**31 - 1 for v in found) or found[2] == found[0]:
        fail(f"{CONF} has no valid uid, gid, fuse_uid and fuse_gid: run `mailstack deploy`")
    return found


def mount_cmd(c):
    """The daemon presents every file as the mail user's; the kernel checks permissions
    against that owner (gocryptfs' -allow_other implies default_permissions)."""
    uid, gid, _, _ = ids(c)
    if c["encryption"] == "gocryptfs":
        return ["gocryptfs", "-q", "-allow_other", "-force_owner", f"{uid}:{gid}",
                "-noprealloc", c["cipher_dir"], c["root"]]
    # Run unprivileged, EncFS creates every file as its user (as root it would need --public,
    # i.e. the same per-request credential switching that gocryptfs races on). It has no
    # -force_owner: libfuse's uid=/gid= present the files the same way.
    return ["encfs", "--stdinpass", "-o",
            f"allow_other,default_permissions,uid={uid},gid={gid}", c["cipher_dir"], c["root"]]


def as_fuse_user(c, cmd, **kw):
    """Run a FUSE tool as the FUSE user (see the module docstring for why), in the mail
    user's group: once mounted, gocryptfs creates a probe file in its own mount (go-fuse's
    poll hack), which the kernel checks against the owner it presents, the mail user's."""
    _, mail_gid, uid, gid = ids(c)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": c["cipher_dir"], "LANG": "C.UTF-8"}
    return run(cmd, user=uid, group=gid, extra_groups=[mail_gid], env=env, **kw)


def chown_tree(path, uid, gid):
    """Give a tree to uid:gid without following links; touches only what is not theirs yet.
    Bottom up, the top directory last: its owner tells whether a handover is complete."""
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in [os.path.join(dirpath, n) for n in dirnames + filenames] + [dirpath]:
            st = os.lstat(name)
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.lchown(name, uid, gid)


def prepare_cipher_dir(c):
    """The cipher dir: the FUSE user's. Stores of earlier versions (the mail user's, or
    root's before that) are handed over, once. Mode 0770, that of the mount's root as
    Dovecot sees it (the dovecot role sets the same): the daemon needs the group's rights
    on it (see as_fuse_user)."""
    _, _, uid, gid = ids(c)
    os.makedirs(c["cipher_dir"], mode=0o700, exist_ok=True)
    st = os.stat(c["cipher_dir"])
    if (st.st_uid, st.st_gid) != (uid, gid):
        chown_tree(c["cipher_dir"], uid, gid)
    if stat.S_IMODE(st.st_mode) != 0o770:
        os.chmod(c["cipher_dir"], 0o770)


def prepare_mountpoint(c):
    """The bare mountpoint: owned by the FUSE user (the rule for unprivileged FUSE mounts),
    and empty, so that mounting can never hide mail written there by mistake."""
    _, _, uid, gid = ids(c)
    os.makedirs(c["root"], exist_ok=True)
    if os.listdir(c["root"]):
        fail(f"{c['root']} is not empty while the store is not mounted; mounting would hide "
             "those files: move them aside (they are not encrypted), then unlock again")
    os.chown(c["root"], uid, gid)
    os.chmod(c["root"], 0o700)


def staged_restore(c):
    """The store a restore extracted and checked (mailstack-backup stage), or None."""
    try:
        with open(os.path.join(c["restore_dir"], "staged.json"), encoding="utf-8") as f:
            staged = json.load(f)
    except (OSError, ValueError, KeyError):
        return None
    tree = staged.get("tree") if isinstance(staged, dict) else None
    if not isinstance(tree, str) or not tree.startswith(c["restore_dir"] + "/"):
        return None
    return staged


def clean_marker(c):
    return os.path.join(c["restore_dir"], "clean-indexes")


def groupware_marker(c):
    return os.path.join(c["restore_dir"], "groupware-db-from-dump")


def archive_dumped_groupware_db(note):
    """Whether the archive's note (mailstack-backup wrote it beside the store) says the run
    dumped the groupware's database into the store."""
    try:
        with open(note, encoding="utf-8") as f:
            return json.load(f).get("dumped") is True
    except (OSError, ValueError, AttributeError):
        return False


def set_aside_groupware_db(c):
    """After the mount of a restored store whose archive dumped the groupware's database:
    its data directory (read while the server wrote it) is set aside, and the server's next
    start makes a new one and loads the dump (cmd_groupware_db_restore)."""
    g = c["groupware_db"]
    if os.path.isfile(g["dump"]):
        aside = g["datadir"] + ".from-archive"
        shutil.rmtree(aside, ignore_errors=True)
        if os.path.isdir(g["datadir"]):
            os.rename(g["datadir"], aside)
        with open(g["load_marker"], "w", encoding="utf-8") as f:
            f.write("load " + g["dump"] + "\n")
    os.unlink(groupware_marker(c))


def cmd_groupware_db_restore(c):
    """The groupware database server's ExecStartPost (as root, its administrator through
    the socket): after a restore, load the archive's dump into the new data directory
    before SOGo starts. Loading twice is harmless (the dump drops and makes each table),
    so a load that failed is tried again at the next start."""
    g = c.get("groupware_db")
    if not g or not os.path.exists(g["load_marker"]):
        print(json.dumps({"ok": True, "loaded": False}))
        return
    with open(g["dump"], "rb") as dump:
        loaded = subprocess.run(["mariadb", f"--socket={g['socket']}"], stdin=dump,
                                capture_output=True, check=False)
    if loaded.returncode != 0:
        fail("the groupware's database did not take the archive's dump "
             f"({g['dump']}): " + loaded.stderr.decode(errors="replace").strip())
    os.unlink(g["load_marker"])
    shutil.rmtree(g["datadir"] + ".from-archive", ignore_errors=True)
    print(json.dumps({"ok": True, "loaded": True}))


def adopt_staged(c, staged):
    """Put the restored cipher directory (and the mail sealed in it) where the store lives,
    owned by the FUSE user, instead of a new, empty store. The store's files are only moved
    (one file system), never rewritten."""
    tree = staged["tree"]
    src = os.path.join(tree, c["cipher_dir"].lstrip("/"))
    marker = {"gocryptfs": "gocryptfs.conf", "encfs": ".encfs6.xml"}[c["encryption"]]
    if not os.path.exists(os.path.join(src, marker)):
        fail(f"the staged archive {staged.get('archive')} holds no {c['encryption']} store")
    if os.path.isdir(c["cipher_dir"]):
        if os.listdir(c["cipher_dir"]):
            fail(f"{c['cipher_dir']} is not empty: a restore never writes over a store")
        os.rmdir(c["cipher_dir"])
    os.makedirs(os.path.dirname(c["cipher_dir"]), exist_ok=True)
    os.rename(src, c["cipher_dir"])
    prepare_cipher_dir(c)
    sealed_src = os.path.join(tree, c["sealing"]["dir"].lstrip("/"))
    if c["sealing"]["enabled"] and os.path.isdir(sealed_src):
        dest = c["sealing"]["dir"]
        os.makedirs(dest, mode=0o700, exist_ok=True)
        st = os.stat(dest)
        for name in os.listdir(sealed_src):
            os.rename(os.path.join(sealed_src, name), os.path.join(dest, name))
            os.lchown(os.path.join(dest, name), st.st_uid, st.st_gid)
    # The groupware's database: when the archive's run dumped it (the server was running,
    # its files changing as borg read them), the dump is what it starts from.
    g = c.get("groupware_db")
    if g and archive_dumped_groupware_db(os.path.join(tree, g["backup_note"].lstrip("/"))):
        with open(groupware_marker(c), "w", encoding="utf-8") as f:
            f.write(staged.get("archive", "") + "\n")
    # Dovecot's indexes may have been read half-written: made again after the mount.
    with open(clean_marker(c), "w", encoding="utf-8") as f:
        f.write(staged.get("archive", "") + "\n")
    os.unlink(os.path.join(c["restore_dir"], "staged.json"))


def clean_indexes(c):
    """After the mount of a restored store, before Dovecot starts: delete Dovecot's index
    files and the search indexes (Dovecot makes them again from the Maildir)."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(c["root"]):
        for name in list(dirnames):
            if name in c["index_dirs"]:
                shutil.rmtree(os.path.join(dirpath, name))
                dirnames.remove(name)
                removed += 1
        for name in filenames:
            if name in c["index_names"]:
                os.unlink(os.path.join(dirpath, name))
                removed += 1
    os.unlink(clean_marker(c))
    return removed


def cmd_init(c):
    if c["encryption"] == "none":
        fail("storage.encryption is none: nothing to initialise")
    if initialized(c):
        fail("the encrypted store is already initialised")
    staged = staged_restore(c)
    if staged:
        passphrase()  # the deploy hands it over; the restored store has its own config
        adopt_staged(c, staged)
        print(json.dumps({"ok": True, "initialized": True, "restored": staged.get("archive")}))
        return
    prepare_cipher_dir(c)
    secret = passphrase()
    if c["encryption"] == "gocryptfs":
        proc = as_fuse_user(c, ["gocryptfs", "-init", "-q", c["cipher_dir"]],
                            input=secret + "\n")
    else:
        # EncFS creates the volume on first mount. --standard, not --paranoia: paranoia's
        # external IV chaining breaks the hard links Maildir uses.
        prepare_mountpoint(c)
        proc = as_fuse_user(c, ["encfs", "--stdinpass", "--standard", c["cipher_dir"],
                                c["root"]], input=secret + "\n")
        if proc.returncode == 0:
            run(["fusermount", "-u", c["root"]])
            # Its wrapped volume key: as private as gocryptfs.conf.
            os.chmod(os.path.join(c["cipher_dir"], ".encfs6.xml"), 0o600)
    if proc.returncode != 0:
        fail("init failed: " + (proc.stderr or proc.stdout).strip())
    print(json.dumps({"ok": True, "initialized": True}))


def do_mount(c, secret):
    prepare_cipher_dir(c)
    prepare_mountpoint(c)
    proc = as_fuse_user(c, mount_cmd(c), input=secret + "\n")
    if proc.returncode != 0:
        text = (proc.stderr + proc.stdout).strip()
        if wrong_passphrase(c["encryption"], proc.returncode, text):
            fail("wrong passphrase: the store stays locked", WRONG_PASSPHRASE)
        fail("mount failed: " + text)
    if os.path.exists(clean_marker(c)):
        clean_indexes(c)
    if c.get("groupware_db") and os.path.exists(groupware_marker(c)):
        set_aside_groupware_db(c)


def sealer(c, verb):
    """Run mailstack-sealer (see there): its JSON answer; a failure ends this command."""
    proc = run([c["sealing"]["tool"], verb])
    try:
        answer = json.loads(proc.stdout)
    except ValueError:
        answer = {"ok": False, "error": (proc.stderr or proc.stdout).strip()}
    if not answer.get("ok") and verb != "drain":
        fail(f"mailstack-sealer {verb}: {answer.get('error')}")
    return answer


def wrong_passphrase(encryption, returncode, output):
    """Whether a failed mount was refused for its passphrase: gocryptfs exits 12 on a wrong
    password; EncFS says so in its output ("Error decoding volume key, password incorrect")."""
    if encryption == "gocryptfs":
        return returncode == 12
    return "password incorrect" in output.lower() or "invalid password" in output.lower()


def queue_entries():
    """Postfix's queue, one dict per message (postqueue -j)."""
    proc = run(["postqueue", "-j"])
    entries = []
    for line in proc.stdout.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def queue_size():
    return len(queue_entries())


def deferred_reasons(entries, most=5):
    """Why deferred mail waits: each reason Postfix gave with the number of messages it
    holds back, most first (the controller names a relay that refuses its login)."""
    held = {}
    for entry in entries:
        if entry.get("queue_name") != "deferred":
            continue
        for reason in {r.get("delay_reason") or "no reason given"
                       for r in entry.get("recipients") or []}:
            held[reason] = held.get(reason, 0) + 1
    ranked = sorted(held.items(), key=lambda item: (-item[1], item[0]))[:most]
    return [{"reason": reason[:400], "messages": n} for reason, n in ranked]


def cmd_unlock(c):
    if c["encryption"] == "none":
        fail("storage.encryption is none: there is nothing to unlock")
    if not initialized(c):
        fail("the encrypted store does not exist yet: run `mailstack deploy`", NOT_INITIALIZED)
    secret = passphrase()
    already = mounted(c["root"])
    if not already:
        do_mount(c, secret)
    sealer(c, "key")
    before = queue_size()
    start = run(["systemctl", "start", *c["bound_services"]])
    if start.returncode != 0:
        fail("mounted, but Dovecot did not start: " + start.stderr.strip())
    # Flush only once Dovecot's LMTP socket exists (a message tried before that is
    # deferred again and waits out Postfix's backoff), and flush again while mail remains.
    deadline = time.monotonic() + float(os.environ.get("MAILSTACK_FLUSH_WAIT", "30"))
    while not os.path.exists(c["lmtp_socket"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    unsealed = sealer(c, "drain")
    after = queue_size()
    last_flush, at_last_flush, stalled = 0.0, None, 0
    while after and time.monotonic() < deadline:
        if time.monotonic() - last_flush >= 3:
            # Two flushes that delivered nothing: what is left waits for another server
            # (outbound mail deferred by its destination), not for Dovecot.
            stalled = stalled + 1 if at_last_flush is not None and after >= at_last_flush else 0
            if stalled >= 2:
                break
            run(["postqueue", "-f"])
            last_flush, at_last_flush = time.monotonic(), after
        time.sleep(0.5)
        after = queue_size()
    # Sealed mail joined the queue (once each) and left it with the rest.
    before += unsealed.get("delivered", 0)
    print(json.dumps({"ok": True, "already_unlocked": already, "queued_before": before,
                      "delivered": max(before - after, 0), "still_queued": after,
                      "still_sealed": unsealed.get("still_sealed", 0),
                      "unseal_errors": unsealed.get("errors", [])}))


def cmd_mount(c):
    if not mounted(c["root"]):
        do_mount(c, passphrase())
    sealer(c, "key")
    print(json.dumps({"ok": True, "mounted": True}))


def stop_fuse_daemon(c):
    """The key must leave memory too. Unmounting is not always enough: a service that
    started after the mount, in a mount namespace of its own (containers, where mounts do
    not propagate), keeps a copy of the mount and with it the daemon. Nothing but the daemon
    runs as the FUSE user, so its processes are ended by uid."""
    _, _, uid, _ = ids(c)
    for signal, wait in (("TERM", 5.0), ("KILL", 5.0)):
        if run(["pkill", f"-{signal}", "-U", str(uid)]).returncode == 1:
            return  # none left
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if run(["pgrep", "-U", str(uid)]).returncode == 1:
                return
            time.sleep(0.1)
    fail("unmounted, but the FUSE daemon did not end: its key is still in memory")


def cmd_lock(c):
    if c["encryption"] == "none":
        fail("storage.encryption is none: there is nothing to lock")
    already = not mounted(c["root"])
    if not already:
        run(["systemctl", "stop", *c["bound_services"]])
        proc = run(["fusermount", "-u", c["root"]])
        if proc.returncode != 0:
            fail("unmount failed: " + proc.stderr.strip())
    stop_fuse_daemon(c)
    # From now on Postfix's LMTP deliveries reach the sealer; what waits in the queue
    # (deferred while Dovecot stopped, outbound mail a remote server deferred) is sealed too.
    start = run(["systemctl", "start", c["sealing"]["socket_unit"]])
    if start.returncode != 0:
        fail("locked, but the sealer did not start: " + start.stderr.strip())
    sealed = sealer(c, "queue")
    print(json.dumps({"ok": True, "locked": True, "already_locked": already,
                      "sealed": sealed["sealed"]}))


def jails():
    """Each fail2ban jail and how many addresses it bans now; None when fail2ban is off."""
    if run(["systemctl", "is-active", "--quiet", "fail2ban"]).returncode != 0:
        return None
    listed = run(["fail2ban-client", "status"]).stdout
    names = next((line.split(":", 1)[1] for line in listed.splitlines() if "Jail list:" in line), "")
    found = {}
    for name in (n.strip() for n in names.split(",") if n.strip()):
        detail = run(["fail2ban-client", "status", name]).stdout
        banned = [line.split(":", 1)[1].strip() for line in detail.splitlines()
                  if "Currently banned:" in line]
        found[name] = int(banned[0]) if banned and banned[0].isdigit() else None
    return found


def answers(cmd):
    """'ok', or the command's last words (why it did not answer)."""
    proc = run(cmd, timeout=15)
    words = (proc.stderr or proc.stdout).strip().splitlines()
    return "ok" if proc.returncode == 0 else (words[-1] if words else f"exit {proc.returncode}")


def blocklist_answers(lists):
    """What each DNS list answers for its test entry 2.0.0.127.<zone>, through the host's
    resolver (the controller judges the answers against the list's filter)."""
    found = {}
    for dl in lists:
        proc = run(["getent", "ahostsv4", "2.0.0.127." + dl["zone"]], timeout=15)
        if proc.returncode == 0:
            found[dl["zone"]] = {"answers": sorted({line.split()[0] for line in
                                                    proc.stdout.splitlines() if line.strip()})}
        else:
            found[dl["zone"]] = {"error": "not listed" if proc.returncode == 2
                                 else (proc.stderr.strip() or f"exit {proc.returncode}")}
    return found


def queue_oldest(entries, now):
    """Seconds since the oldest message in the queue arrived; None when it is empty."""
    times = [e["arrival_time"] for e in entries
             if isinstance(e.get("arrival_time"), (int, float))]
    return max(int(now - min(times)), 0) if times else None


def filesystem(path):
    """Space and inodes of the filesystem holding path, as df counts them (the space root
    keeps for itself counts as used)."""
    try:
        st = os.statvfs(path)
    except OSError as exc:
        return {"path": path, "error": exc.strerror or str(exc)}
    used, free = st.f_blocks - st.f_bfree, st.f_bavail
    inodes_used = st.f_files - st.f_ffree
    return {"path": path, "size_bytes": st.f_blocks * st.f_frsize,
            "free_bytes": free * st.f_frsize,
            "used_percent": round(100 * used / (used + free), 1) if used + free else 0.0,
            # Some filesystems (btrfs, some FUSE ones) count no inodes: None, not 0 %.
            "inodes_used_percent": (round(100 * inodes_used / st.f_files, 1)
                                    if st.f_files else None)}


def filesystems(c, store):
    """The store's filesystems: the mount as Dovecot sees it (while mounted, or the plain
    directory without encryption) and the cipher directory's, where the bytes land."""
    paths = []
    if c["encryption"] == "none" or store["mounted"]:
        paths.append(c["root"])
    if c["encryption"] != "none":
        paths.append(c["cipher_dir"])
    return [filesystem(p) for p in paths]


def certificate(path):
    """The end of the certificate the services present (the installed file)."""
    import calendar

    proc = run(["openssl", "x509", "-noout", "-enddate", "-in", path])
    text = proc.stdout.strip()
    if proc.returncode != 0 or not text.startswith("notAfter="):
        return {"path": path, "error": (proc.stderr.strip().splitlines() or
                                        [f"openssl exit {proc.returncode}"])[-1]}
    try:
        not_after = calendar.timegm(time.strptime(text.split("=", 1)[1], "%b %d %H:%M:%S %Y GMT"))
    except ValueError:
        return {"path": path, "error": f"unreadable end date: {text}"}
    return {"path": path, "not_after": not_after}


def last_backup(path):
    """The last successful backup as the backup service recorded it; recorded false when
    there is none (no backup configured, or none finished yet)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {"path": path, "recorded": False}
    except (OSError, ValueError) as exc:
        return {"path": path, "recorded": True, "error": f"unreadable: {exc}"}
    finished = data.get("finished") if isinstance(data, dict) else None
    if type(finished) is not int:
        return {"path": path, "recorded": True, "error": "no finished time (unix seconds) in it"}
    return {"path": path, "recorded": True, "finished": finished, "ok": data.get("ok") is True,
            "archive": str(data.get("archive", ""))[:200]}


def own_addresses(hostname):
    """The addresses receivers see this host send from (lists list those): the source
    address of the default routes, and the host name's addresses; loopback and link-local
    aside (Debian's /etc/hosts names the host 127.0.1.1)."""
    import ipaddress
    import socket

    found = set()
    # A UDP socket "connected" to a documentation address sends nothing; the kernel only
    # picks the source address its route would use.
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 53))
                found.add(s.getsockname()[0])
        except OSError:
            continue  # no route of that family
    proc = run(["getent", "ahosts", hostname], timeout=15)
    found.update(line.split()[0] for line in proc.stdout.splitlines() if line.strip())
    kept = set()
    for text in found:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if not (address.is_loopback or address.is_link_local or address.is_unspecified):
            kept.add(str(address))
    return sorted(kept)


def listings(addresses, lists):
    """What each DNS blocklist answers for each of the host's addresses (not listed, or the
    answers, which the controller judges against the list's filter)."""
    import ipaddress

    found = {}
    for dl in lists:
        per_address = {}
        for address in addresses:
            reverse = ipaddress.ip_address(address).reverse_pointer
            name = reverse.rsplit(".", 2)[0] + "." + dl["zone"]
            proc = run(["getent", "ahostsv4", name], timeout=15)
            if proc.returncode == 0:
                per_address[address] = {"answers": sorted({line.split()[0] for line in
                                                           proc.stdout.splitlines() if line.strip()})}
            else:
                per_address[address] = {"error": "not listed" if proc.returncode == 2
                                        else (proc.stderr.strip() or f"exit {proc.returncode}")}
        found[dl["zone"]] = per_address
    return found


def status_data(c):
    services = {s: run(["systemctl", "is-active", s]).stdout.strip() for s in c["services"]}
    checks = {"jails": jails()}
    if c.get("spam_controller"):
        checks["spam_filter"] = answers(["rspamc", "-h", c["spam_controller"], "stat"])
    if c.get("hostname"):
        # Through the host's own resolver: the DNS blocklists and SPF depend on it.
        checks["resolver"] = answers(["getent", "ahosts", c["hostname"]])
    if c.get("blocklists"):
        checks["blocklists"] = blocklist_answers(c["blocklists"])
        if c.get("hostname"):
            checks["listed"] = listings(own_addresses(c["hostname"]), c["blocklists"])
    if c["encryption"] != "none":
        checks["sealed"] = sealed_count(c)
    if c.get("tls_cert"):
        checks["certificate"] = certificate(c["tls_cert"])
    if c.get("backup_state"):
        checks["backup"] = last_backup(c["backup_state"])
    now = time.time()
    store = state(c)
    entries = queue_entries()
    return {"ok": True, "time": int(now), "storage": store, "services": services,
            "queue": len(entries), "queue_oldest": queue_oldest(entries, now),
            "deferred": deferred_reasons(entries), "filesystems": filesystems(c, store),
            **checks}


def cmd_status(c):
    print(json.dumps(status_data(c)))


def label(value):
    """A Prometheus label value: backslash, double quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics(data):
    """The status as Prometheus' text format (node-exporter's textfile collector)."""
    out = []

    def metric(name, help_text, samples):
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            shown = ",".join(f'{k}="{label(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{shown}}} {value}" if shown else f"{name} {value}")

    store = data["storage"]
    metric("mailstack_status_timestamp_seconds", "When mailstack-storage metrics ran.",
           [({}, data["time"])])
    metric("mailstack_store_locked", "1 while the encrypted store is locked (mail is sealed).",
           [({}, int(store["locked"]))])
    metric("mailstack_service_up", "1 when the unit is active.",
           [({"unit": u}, int(v == "active")) for u, v in sorted(data["services"].items())])
    metric("mailstack_queue_messages", "Messages in Postfix's queue.", [({}, data["queue"])])
    metric("mailstack_queue_oldest_seconds", "Age of the oldest queued message (0: empty).",
           [({}, data["queue_oldest"] or 0)])
    if "sealed" in data:
        metric("mailstack_sealed_messages", "Mail sealed while the store was locked.",
               [({}, data["sealed"])])
    fs = [f for f in data["filesystems"] if "error" not in f]
    metric("mailstack_filesystem_used_ratio", "Space used on the store's filesystems.",
           [({"path": f["path"]}, round(f["used_percent"] / 100, 4)) for f in fs])
    metric("mailstack_filesystem_inodes_used_ratio", "Inodes used on the store's filesystems.",
           [({"path": f["path"]}, round(f["inodes_used_percent"] / 100, 4)) for f in fs
            if f["inodes_used_percent"] is not None])
    cert = data.get("certificate") or {}
    if "not_after" in cert:
        metric("mailstack_cert_expiry_seconds", "Seconds until the certificate expires.",
               [({}, cert["not_after"] - data["time"])])
    backup = data.get("backup") or {}
    if backup.get("ok"):
        metric("mailstack_backup_last_success_timestamp",
               "When the last successful backup finished.", [({}, backup["finished"])])
    if data.get("jails") is not None:
        metric("mailstack_fail2ban_banned", "Addresses a jail bans now.",
               [({"jail": j}, n or 0) for j, n in sorted(data["jails"].items())])
    for key, name in (("spam_filter", "mailstack_spam_filter_up"),
                      ("resolver", "mailstack_resolver_up")):
        if key in data:
            metric(name, "1 when it answers.", [({}, int(data[key] == "ok"))])
    return "\n".join(out) + "\n"


def cmd_metrics(c):
    """Write the metrics next to their final name and rename: node-exporter never reads a
    half-written file."""
    path = c.get("prometheus_file")
    if not path:
        fail(f"{CONF} names no prometheus_file: run `mailstack deploy`")
    text = metrics(status_data(c))
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        fail(f"cannot write {path}: {exc}")
    print(json.dumps({"ok": True, "written": path, "bytes": len(text.encode())}))


def sealed_count(c):
    try:
        return len([n for n in os.listdir(c["sealing"]["dir"]) if n.endswith(".age")])
    except FileNotFoundError:
        return 0


def cmd_unban(c):
    """The address comes on stdin, checked here too: it reaches fail2ban-client's argv."""
    import ipaddress

    wanted = sys.stdin.readline().strip()
    if wanted != "all":
        try:
            wanted = str(ipaddress.ip_address(wanted))
        except ValueError:
            fail(f"not an IP address: {wanted!r}")
    before = jails()
    if before is None:
        fail("fail2ban is not running here (options.bans.enabled is false?)")
    banned_before = sum(n or 0 for n in before.values())
    proc = run(["fail2ban-client", "unban", "--all"] if wanted == "all"
               else ["fail2ban-client", "unban", wanted])
    if proc.returncode != 0:
        fail(f"fail2ban-client unban: {(proc.stderr or proc.stdout).strip()}")
    print(json.dumps({"ok": True, "address": wanted, "unbanned": proc.stdout.strip(),
                      "banned_before": banned_before,
                      "banned_now": sum(n or 0 for n in jails().values())}))


def cmd_verify_login(c):
    """The hash reaches an SQL statement: only an Argon2id hash as mailstack makes it."""
    import re

    wanted = sys.stdin.readline().strip()
    value = VERIFY_LOCKED if wanted == "off" else wanted
    if wanted != "off" and not re.fullmatch(
            r"\{ARGON2ID\}\$argon2id\$v=19\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+",
            wanted):
        fail("not an {ARGON2ID} hash")
    if not re.fullmatch(r"[a-z0-9._+-]+@[a-z0-9.-]+", c.get("verify_address", "")) \
            or not re.fullmatch(r"[A-Za-z0-9_]+", c.get("db_name", "")):
        fail(f"{CONF} has no valid verify_address and db_name: run `mailstack deploy`")
    address = c["verify_address"]
    proc = run(["mariadb", "--batch", "--skip-column-names", c["db_name"], "--execute",
                f"UPDATE mailboxes SET password_hash = '{value}' WHERE address = '{address}'; "
                f"SELECT COUNT(*) FROM mailboxes WHERE address = '{address}'"])
    if proc.returncode != 0:
        fail(f"mariadb: {(proc.stderr or proc.stdout).strip()}")
    if proc.stdout.strip() != "1":
        fail(f"no mailbox {address}: run `mailstack deploy`")
    print(json.dumps({"ok": True, "locked": wanted == "off"}))


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(ERROR)
    verb = sys.argv[1]
    if verb not in ("state", "init", "unlock", "mount", "lock", "status", "metrics", "unban",
                    "verify-login", "groupware-db-restore"):
        fail("unknown command " + verb)
    try:
        c = conf()
    except (OSError, ValueError) as exc:
        fail(f"cannot read {CONF} ({exc}): run `mailstack deploy` first")
    if verb == "state":
        print(json.dumps(state(c)))
    elif verb == "init":
        cmd_init(c)
    elif verb == "unlock":
        cmd_unlock(c)
    elif verb == "mount":
        cmd_mount(c)
    elif verb == "lock":
        cmd_lock(c)
    elif verb == "status":
        cmd_status(c)
    elif verb == "metrics":
        cmd_metrics(c)
    elif verb == "unban":
        cmd_unban(c)
    elif verb == "groupware-db-restore":
        cmd_groupware_db_restore(c)
    elif verb == "verify-login":
        cmd_verify_login(c)


if __name__ == "__main__":
    main()
