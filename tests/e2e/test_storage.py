"""Encrypted mail storage, for real, once per method (gocryptfs and EncFS), each on its own
fresh host (a container from the test-bed stack image, reached over SSH like a VPS):

1. a site deployed unencrypted (`encryption: none`) receives mail; switching it to
   encryption and deploying again moves every message into the encrypted store exactly once
   (and delivers at once the mail deferred while LMTP was down),
   leaves no clear text on disk and no old directory behind, and a third deploy changes
   nothing; new mail is delivered into the store;
2. mail that an interrupted switch left aside is moved in by the next deploy (once, on
   gocryptfs: the same tasks whatever the method);
3. the host restarts with messages already in Postfix's queue (Dovecot down, so LMTP
   deferred them): they are sealed at shutdown (nothing bounced or lost, none readable on
   disk); after boot the store is locked, mail sent while locked is accepted and sealed at
   once, a wrong passphrase changes nothing, and `mailstack unlock` delivers every message
   exactly once; locking seals outbound mail waiting for another server, and unlocking
   puts it back in the queue;
4. the FUSE daemon, which holds the store's key, runs as a user of its own: no process of
   the mail user (IMAP, LMTP) can read its memory or trace it (before and after a restart,
   the latter on a store handed over from the mail user, as earlier versions left it).

Runs the real CLI as a subprocess, exactly as a user would. `-s` shows the timings.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import testbed

from mailstack.host import sealer
from mailstack.sandbox import host as sandbox
from mailstack.site.inventory import write_inventory

from .helpers import (
    PASSWORD,
    assert_each_once,
    imap_subjects,
    mailstack,
    send,
    wait_for_subjects,
)

pytestmark = pytest.mark.testbed

DOMAIN = "storage.test"
HOSTNAME = f"mail.{DOMAIN}"
ALICE = f"alice@{DOMAIN}"
MOUNT = "/var/mail/vhosts"
CIPHER = MOUNT + ".crypt"
MIGRATING = MOUNT + ".migrating"
SPOOL = "/var/spool/postfix"
SEALED = sealer.SEALED_DIR
METHODS = ("gocryptfs", "encfs")
FUSE_USER = "mailcrypt"
# Run on the host as the mail user: what it gets from the FUSE daemon PID (argv[1]): its
# memory (at its first readable mapping), its environment, a ptrace attach. PTRACE_SEIZE
# does not stop the daemon, and this process's exit detaches it.
MEMORY_PROBE = r"""
import ctypes, json, os, sys
pid = int(sys.argv[1])
found = {}
for what in ("mem", "environ"):
    try:
        with open(f"/proc/{pid}/{what}", "rb") as f:
            if what == "mem":
                with open(f"/proc/{pid}/maps") as maps:
                    f.seek(next(int(line.split("-")[0], 16) for line in maps
                                if line.split()[1].startswith("r")))
            found[what] = f"read {len(f.read(16))} bytes"
    except OSError as exc:
        found[what] = exc.strerror
libc = ctypes.CDLL(None, use_errno=True)
found["ptrace"] = ("attached" if libc.ptrace(0x4206, pid, None, None) == 0
                   else os.strerror(ctypes.get_errno()))
print(json.dumps(found))
"""


def _unique(label: str, n: int) -> list[str]:
    return [f"{label}-{i}-{time.time_ns()}" for i in range(n)]


@dataclass
class Host:
    """One test host and the site that deploys it."""

    method: str
    container: str
    ip: str
    site: Path
    key: Path
    earlier: list[str] = field(default_factory=list)  # delivered before the switch
    queued: list[str] = field(default_factory=list)  # waiting in the queue for an unlock
    timings: dict[str, float] = field(default_factory=dict)

    def run(self, *cmd: str):
        return testbed.exec_in(self.container, list(cmd), check=False)

    def cli(self, *args: str, input: str | None = None):
        return mailstack(self.site, *args, input=input)

    def deploy(self, what: str):
        started = time.monotonic()
        result = self.cli("deploy")
        self.timings[what] = time.monotonic() - started
        print(f"[{self.method}] {what}: {self.timings[what]:.1f} s")
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def set_encryption(self, method: str) -> None:
        path = self.site / "mailstack.yml"
        text, n = re.subn(r"(?m)^(    encryption:) \S+$", rf"\1 {method}", path.read_text())
        assert n == 1, "mailstack.yml: no options.storage.encryption line"
        path.write_text(text)

    def status(self) -> str:
        """`mailstack status`'s lines. Its exit code is a verdict for monitoring (0 ok, 1
        warning, 2 critical: Dovecot stopped or the store locked, as here on purpose); it
        got to the end when its last line is that verdict."""
        result = self.cli("status")
        assert result.returncode in (0, 1, 2), result.stderr
        assert result.stdout.splitlines()[-1].startswith("status: "), result.stdout + result.stderr
        return result.stdout

    def queue(self) -> int:
        return int(re.search(r"; queue (\d+);", self.status()).group(1))

    def wait_for_queue(self, size: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while (found := self.queue()) != size:
            assert time.monotonic() < deadline, f"queue {found}, expected {size}"
            time.sleep(0.5)

    def grep(self, text: str, where: str) -> int:
        """grep -r's exit code: 0 found, 1 not found (2, an error, fails every check)."""
        return self.run("grep", "-rqF", text, where).returncode

    def exists(self, path: str) -> bool:
        return self.run("test", "-e", path).returncode == 0

    def not_vmails(self) -> str:
        """Files in the store that Dovecot (vmail) does not own, and so may not read."""
        return self.run("find", MOUNT, "!", "-user", "vmail").stdout

    def mounts(self) -> str:
        return self.run("cat", "/proc/mounts").stdout

    def assert_key_out_of_the_mail_users_reach(self) -> None:
        """A process of the mail user can neither read the memory of any FUSE daemon on the
        host nor trace it; each runs as the FUSE user, and the mount is that user's."""
        daemons = self.run("pgrep", "-x", self.method).stdout.split()
        assert daemons, f"no {self.method} process"
        for pid in daemons:
            probe = self.run("runuser", "-u", "vmail", "--", "python3", "-c", MEMORY_PROBE, pid)
            assert probe.returncode == 0, probe.stderr
            assert json.loads(probe.stdout) == {"mem": "Permission denied",
                                                "environ": "Permission denied",
                                                "ptrace": "Operation not permitted"}, pid
        fuse_uid = self.run("id", "-u", FUSE_USER).stdout.strip()
        assert fuse_uid and fuse_uid != self.run("id", "-u", "vmail").stdout.strip()
        for pid in daemons:
            uids = re.search(r"^Uid:\s+(.*)$", self.run("cat", f"/proc/{pid}/status").stdout,
                             re.M).group(1).split()
            assert uids == [fuse_uid] * 4, (pid, uids)
        [mount] = [line for line in self.mounts().splitlines() if f" {MOUNT} " in line]
        assert f" fuse.{self.method} " in mount and f"user_id={fuse_uid}," in mount, mount

    def restart(self) -> None:
        """A real reboot of the container; the inventory follows the host if its IP moved.
        (Its SSH host keys survive, so the site's known_hosts still trusts it.)"""
        started = time.monotonic()
        self.ip = testbed.restart_host(self.container).ip
        write_inventory(self.site, HOSTNAME, self.ip, "root", 22, str(self.key))
        for port in (22, 25):
            testbed.wait_for_port(self.ip, port, 60)
        print(f"[{self.method}] restart: {time.monotonic() - started:.1f} s")


def _switched_host(method: str, name: str, site: Path, key: Path) -> tuple[Host, str]:
    """A fresh host deployed unencrypted (`encryption: none`) with mail in it, then switched
    to `method` and deployed again: the host and the switching deploy's output."""
    booted = testbed.start_host(name, testbed.stack_image(), hostname=HOSTNAME,
                                ssh_pubkey=key.with_suffix(".pub").read_text())
    init = mailstack(None, "init", str(site), "--domain", DOMAIN, "--hostname", HOSTNAME,
                     "--host", booted.ip, "--ssh-key", str(key))
    assert init.returncode == 0, init.stderr
    testbed.offline_site(site)
    host = Host(method, name, booted.ip, site, key)
    added = host.cli("user", "add", ALICE, "--password-stdin", input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    host.set_encryption("none")
    host.deploy("cold deploy, encryption none")
    host.earlier = _unique("before-the-switch", 4)
    send(host.ip, ALICE, host.earlier)
    assert_each_once(wait_for_subjects(host.ip, ALICE, host.earlier), host.earlier)
    # The starting point really is clear text on disk.
    assert host.grep(host.earlier[0], MOUNT) == 0
    assert f" {MOUNT} " not in host.mounts()

    # Mail that arrives while the store is switched finds LMTP down and is deferred: the
    # switching deploy must deliver it before it ends, not after Postfix's retry delay.
    host.run("systemctl", "stop", "dovecot")
    waited = _unique("deferred-before-the-switch", 1)
    send(host.ip, ALICE, waited)
    host.wait_for_queue(1)
    host.earlier += waited

    host.set_encryption(method)
    switched = host.deploy(f"deploy switching none -> {method}")
    return host, switched.stdout + switched.stderr


@pytest.fixture(scope="module")
def switched_hosts(tmp_path_factory) -> Iterator[dict[str, Future[tuple[Host, str]]]]:
    """Both hosts, set up side by side (their deploys mostly wait on SSH round trips):
    per method, the future of `_switched_host`. Removed at the end, whatever happened."""
    key = sandbox.ensure_keypair(sandbox.default_state_dir())
    names = {m: f"mailstack-e2e-storage-{m}-{secrets.token_hex(3)}" for m in METHODS}
    sites = {m: tmp_path_factory.mktemp(m) / "site" for m in METHODS}
    try:
        with ThreadPoolExecutor(len(METHODS)) as pool:
            futures = {m: pool.submit(_switched_host, m, names[m], sites[m], key)
                       for m in METHODS}
            wait(futures.values())
        yield futures
    finally:
        for name in names.values():
            testbed.remove_host(name)


@pytest.fixture(scope="module", params=METHODS)
def migrated(request, switched_hosts) -> Iterator[tuple[Host, str]]:
    host, output = switched_hosts[request.param].result()  # its setup's failure, if any
    yield host, output
    print(f"\n[{host.method}] deploys: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in host.timings.items()))


def test_switch_keeps_every_message_exactly_once(migrated):
    host, output = migrated
    for task in ("Initialise the encrypted directory", "Mount the new store",
                 "Move the existing mail into the encrypted store", "Flush the mail queue"):
        assert f"changed  {HOSTNAME}  {task}" in output, output
    assert_each_once(imap_subjects(host.ip, ALICE), host.earlier)
    assert not host.exists(MIGRATING), "the unencrypted copy must be gone"
    assert host.not_vmails() == ""
    assert f" {MOUNT} fuse.{host.method} " in host.mounts()
    assert f"storage {host.method} unlocked; queue 0;" in host.status()


def test_nothing_readable_on_disk_and_new_mail_delivered(migrated):
    host, _ = migrated
    token = f"cleartext-probe-{host.method}-{time.time_ns()}"
    send(host.ip, ALICE, [token])
    assert_each_once(wait_for_subjects(host.ip, ALICE, [token]), [token])
    assert host.grep(token, MOUNT) == 0, "the new message must be readable through the mount"
    assert host.grep(token, CIPHER) == 1, "clear text of a new message in the cipher dir"
    for subject in host.earlier:
        assert host.grep(subject, CIPHER) == 1, "clear text of a moved message in the cipher dir"
    assert host.exists(f"{CIPHER}/" + ("gocryptfs.conf" if host.method == "gocryptfs"
                                      else ".encfs6.xml"))


def test_mail_processes_cannot_read_the_key_from_the_daemons_memory(migrated):
    """These hosts have no Yama: the mail user's uid alone would give its processes the
    daemon's memory, and the key in it."""
    host, _ = migrated
    host.assert_key_out_of_the_mail_users_reach()
    assert host.run("find", CIPHER, "!", "-user", FUSE_USER).stdout == ""


def test_third_deploy_changes_nothing(migrated):
    host, _ = migrated
    result = host.deploy("third deploy")
    assert "no changes: the hosts already match the site" in result.stdout, result.stdout
    assert "changed=0" in result.stdout


def test_mail_left_aside_by_an_interrupted_switch_is_moved_in(migrated):
    """A switch that stopped after setting the clear mail aside (killed, or its copy fell
    short) leaves it in vhosts.migrating: the next deploy must still move it in."""
    host, _ = migrated
    if host.method != "gocryptfs":
        pytest.skip("the same tasks whatever the method: run once, on gocryptfs")
    [subject] = _unique("left-aside", 1)
    leftover = f"{MIGRATING}/{DOMAIN}/alice/Maildir/new"
    message = f"Subject: {subject}\r\n\r\nset aside, not yet moved\r\n"
    testbed.exec_in(host.container, ["sh", "-ec", f"mkdir -p {leftover}; "
                                     f"cat > {leftover}/{time.time_ns()}.left.{HOSTNAME}; "
                                     f"chown -R vmail:vmail {MIGRATING}"], input=message)
    output = host.deploy("deploy with mail left aside")
    assert f"changed  {HOSTNAME}  Move the existing mail into the encrypted store" in \
        output.stdout + output.stderr
    assert_each_once(wait_for_subjects(host.ip, ALICE, [subject]), [subject, *host.earlier])
    assert not host.exists(MIGRATING)
    assert host.grep(subject, CIPHER) == 1


def test_restart_seals_the_queue_and_locks_the_store(migrated):
    host, _ = migrated
    # Messages stuck in the queue while the host runs: Dovecot is down, LMTP defers them.
    assert host.run("systemctl", "stop", "dovecot").returncode == 0
    before = _unique("queued-before-restart", 3)
    send(host.ip, ALICE, before)
    host.wait_for_queue(len(before))
    host.queued = list(before)

    host.restart()
    status = host.status()
    assert f"storage {host.method} LOCKED" in status and "dovecot inactive" in status, status
    # Sealed at shutdown: out of Postfix's queue, nothing bounced, nothing lost.
    assert f"; queue 0; sealed {len(before)};" in status, status
    assert f" {MOUNT} " not in host.mounts()
    # The locked mountpoint is empty and closed: it can never pass for a mailbox.
    assert host.run("ls", "-A", MOUNT).stdout == ""

    while_locked = _unique("sent-while-locked", 2)
    send(host.ip, ALICE, while_locked)  # accepted (250) and sealed at once
    host.queued += while_locked
    assert f"; queue 0; sealed {len(host.queued)};" in host.status()
    # Not one of them is readable on disk while the store is locked.
    for subject in host.queued:
        assert host.grep(subject, SPOOL) == 1, f"clear text of {subject} in Postfix's queue"
        assert host.grep(subject, SEALED) == 1, f"clear text of {subject} in {SEALED}"


def test_the_sealer_runs_as_its_own_user_with_the_public_key_only(migrated):
    host, _ = migrated
    assert host.run("systemctl", "is-active", "mailstack-sealer.socket").stdout.strip() == "active"
    # What arrived while locked was written by the sealer's own user (the restart test's).
    owners = host.run("find", SEALED, "-name", "l-*.age", "-printf", "%u\n").stdout.split()
    assert owners == ["mailstack-sealer"] * 2, owners
    # Its directory: the sealed files and the public key; the private key is in the store.
    listing = host.run("ls", "-A", SEALED).stdout.split()
    assert "recipient.txt" in listing and all(
        n == "recipient.txt" or n.endswith(".age") for n in listing), listing
    assert host.run("grep", "-rlq", "AGE-SECRET-KEY", SEALED, "/etc/mailstack").returncode == 1


def test_wrong_passphrase_keeps_the_store_locked(migrated):
    host, _ = migrated
    wrong = host.cli("unlock", "--passphrase-stdin", input="not the passphrase\n")
    assert wrong.returncode != 0
    assert "wrong passphrase; the store stays locked" in wrong.stderr, wrong.stderr
    status = host.status()
    assert "LOCKED" in status and "dovecot inactive" in status, status
    assert f"; queue 0; sealed {len(host.queued)};" in status, status
    assert f" {MOUNT} " not in host.mounts()
    # Locking a locked store changes nothing but sealing what the queue holds (nothing).
    again = host.cli("lock")
    assert f"{HOSTNAME}: was already locked; sealed 0 message(s)" in again.stdout, again.stderr


def test_unlock_delivers_every_queued_message_exactly_once(migrated):
    host, _ = migrated
    assert host.queued, "needs the messages queued by the restart test"
    # The store as earlier versions left it (their daemon ran as the mail user): the unlock
    # hands it to the FUSE user.
    assert host.run("chown", "-R", "vmail:vmail", CIPHER, MOUNT).returncode == 0
    started = time.monotonic()
    unlocked = host.cli("unlock")
    print(f"[{host.method}] unlock: {time.monotonic() - started:.1f} s")
    assert unlocked.returncode == 0, unlocked.stderr
    assert f"unlocked; delivered {len(host.queued)} queued message(s)" in unlocked.stdout, \
        unlocked.stdout
    assert_each_once(imap_subjects(host.ip, ALICE), [*host.queued, *host.earlier])
    status = host.status()
    assert f"storage {host.method} unlocked; queue 0; sealed 0;" in status, status
    assert "dovecot active" in status
    for subject in host.queued:
        assert host.grep(subject, CIPHER) == 1
    assert host.not_vmails() == "", "files Dovecot cannot read back"
    assert host.run("find", CIPHER, "!", "-user", FUSE_USER).stdout == ""
    host.assert_key_out_of_the_mail_users_reach()


def test_lock_seals_mail_waiting_for_another_server(migrated):
    """Outbound mail that a remote server defers waits in Postfix's queue for days: locking
    the store seals it too, and unlocking puts it back, to be tried again. (The remote
    server that defers is a relay host on a loopback port where nothing listens: no address
    outside the test bed is ever tried.)"""
    host, _ = migrated
    [subject] = _unique("outbound-deferred", 1)
    host.run("postconf", "-e", "relayhost = [127.0.0.1]:9")
    host.run("postfix", "reload")
    try:
        host.run("sh", "-ec", f"printf 'Subject: {subject}\\n\\nfor later\\n' | "
                 f"sendmail -f {ALICE} someone@elsewhere.example")
        host.wait_for_queue(1)
        locked = host.cli("lock")
        assert locked.returncode == 0, locked.stderr
        assert f"{HOSTNAME}: locked; sealed 1 message(s) from the queue" in locked.stdout
        # The key left memory with the daemon (no process of its user is left).
        assert host.run("pgrep", "-U", FUSE_USER).returncode == 1
        assert "; queue 0; sealed 1;" in host.status()
        assert host.grep(subject, SPOOL) == 1 and host.grep(subject, SEALED) == 1

        unlocked = host.cli("unlock")
        assert unlocked.returncode == 0, unlocked.stderr
        assert "1 still queued" in unlocked.stdout, unlocked.stdout
        assert "someone@elsewhere.example" in host.run("postqueue", "-j").stdout
        assert "; sealed 0;" in host.status()
        assert host.grep(subject, SPOOL) == 0, "the message is back in Postfix's queue"

        # A seal that fails (here: no public key) says so and leaves the message deferred,
        # to be retried, not stuck on hold.
        aside = sealer.RECIPIENT_FILE + ".aside"
        host.run("mv", sealer.RECIPIENT_FILE, aside)
        failed = host.cli("lock")
        host.run("mv", aside, sealer.RECIPIENT_FILE)
        assert failed.returncode != 0 and "recipient.txt" in failed.stderr, failed.stderr
        assert '"queue_name": "deferred"' in host.run("postqueue", "-j").stdout
        assert "; queue 1; sealed 0;" in host.status()
    finally:
        host.run("postsuper", "-d", "ALL")
        host.run("postconf", "-e", "relayhost =")
        host.run("postfix", "reload")
