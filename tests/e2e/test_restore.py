"""The restore drill: a backup is only as good as the restore it was seen to make.

One mail host (mail.drill.test, deployed by `mailstack deploy` into an internet in a box)
with three users, folders, flags and keywords, a Sieve script and a few thousand messages
(most put in over IMAP APPEND, some delivered over SMTP through the Sieve script), and a
backup target: another host of the box with borg and sshd, its user allowed to run
`borg serve` on the repository's path only (the line `mailstack backup init` prints).

1. `mailstack backup now` refuses a site with uncommitted changes; committed, it makes the
   first archive (the repository with it).
2. The host is destroyed. Mail sent meanwhile waits in the queue of an outside MTA (Postfix
   on the box's sender). `mailstack restore --host NEW` brings the site up on a fresh host
   from the archive; per mailbox the folder tree and subscriptions, every message's folder,
   UID, GUID, flags and keywords and a hash of its whole text, and the Sieve scripts are
   identical to what they were before the backup. Once the box's DNS has the new A record,
   the mail that waited arrives exactly once (filed by the restored Sieve script).
3. An archive taken while the store is locked (with mail sealed meanwhile) restores onto
   yet another host: after the unlock the mailboxes are complete and the sealed mail is
   delivered once.

The site has the groupware on: a calendar event PUT before each backup is there after each
restore (from the dump the run made of SOGo's database while it ran; from its data directory
at rest when the store was locked).
4. A damaged repository (a segment file overwritten in the middle): the restore refuses
   with borg's integrity error, and the new host got borg and the backup's settings only:
   no store, no mail services.

The timings and sizes are printed (`-s`): messages, archive size, backup and restore times.
"""

from __future__ import annotations

import email.utils
import hashlib
import imaplib
import json
import random
import re
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import pytest
import testbed

from mailstack.render.context import BACKUP_STATE_FILE, SOGO
from mailstack.sandbox import host as sandbox

from .helpers import (
    PASSWORD,
    BoxedHost,
    assert_each_once,
    edit_config,
    host_in_a_box,
    imap_login,
    mailstack,
    send,
    wait_for_subjects,
)
from .sogo import EVENT, Web

pytestmark = pytest.mark.testbed

DOMAIN = "drill.test"
HOSTNAME = f"mail.{DOMAIN}"
USERS = {f"alice@{DOMAIN}": 1500, f"bob@{DOMAIN}": 1000, f"carol@{DOMAIN}": 500}
ALICE = f"alice@{DOMAIN}"
FOLDERS = ["INBOX", "Archive", "Archive.2024", "Work", "Work.Projects", "Lists"]
FLAGS = ["", "\\Seen", "\\Seen \\Flagged", "\\Answered \\Seen", "$Label1", "\\Seen $Work"]
SMTP_MESSAGES = 120  # of them through the Sieve script into Lists
REPO = "/srv/borg/drill"
SIEVE = 'require ["fileinto"];\nif header :contains "subject" "[list]" {\n  fileinto "Lists";\n}\n'
CIPHER = "/var/mail/vhosts.crypt"


@dataclass
class Drill:
    bed: BoxedHost
    network: str
    target: testbed.Host
    key: Path
    host: str  # the container now serving the site
    extra: list[str] = field(default_factory=list)  # containers this module started
    before: dict[str, dict] = field(default_factory=dict)
    # The calendar events PUT before each backup (their summaries), which restores bring back.
    events: list[str] = field(default_factory=list)
    numbers: dict[str, object] = field(default_factory=dict)


def run(host: str, *cmd: str, input: str | None = None) -> str:
    return testbed.exec_in(host, list(cmd), input=input).stdout


def git(site: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(site), "-c", "user.name=drill", "-c",
                    "user.email=drill@example.test", *args], check=True, capture_output=True)


def start_host(drill: Drill, suffix: str, hostname: str = HOSTNAME) -> testbed.Host:
    name = f"{drill.network}-{suffix}"
    drill.extra.append(name)
    return testbed.start_host(name, testbed.stack_image(), hostname=hostname,
                              network=drill.network,
                              ssh_pubkey=drill.key.with_suffix(".pub").read_text())


def setup_target(bed: BoxedHost, target: testbed.Host) -> None:
    """options.backup pointing at the target, `backup init` (the key, the passphrase, the
    target's host keys as the mail host sees them), and the target's borg user with the
    printed line in its authorized_keys."""
    edit_config(bed.site, ("  backup: null\n",
                           f"  backup:\n    target: borg@{target.ip}\n    path: {REPO}\n"))
    init = mailstack(bed.site, "backup", "init")
    assert init.returncode == 0, init.stdout + init.stderr
    line = next(x for x in init.stdout.splitlines() if x.startswith('command="borg serve'))
    assert line.startswith(f'command="borg serve --restrict-to-path {REPO}",restrict ssh-ed25519 ')
    again = mailstack(bed.site, "backup", "init")  # never made again
    assert again.returncode == 0 and line in again.stdout.splitlines(), again.stdout
    script = ("useradd -m -s /bin/sh borg && install -d -o borg -g borg -m 700 /home/borg/.ssh "
              "&& cat > /home/borg/.ssh/authorized_keys && chown borg: /home/borg/.ssh/authorized_keys "
              "&& install -d -o borg -g borg /srv/borg")
    run(target.name, "sh", "-ec", script, input=line + "\n")


def append_messages(host: str, ip: str, user: str, count: int, seed: int) -> None:
    """count messages over IMAP APPEND, spread over the folders, with flags and keywords.
    A connection the server drops fails with what Dovecot logged meanwhile."""
    try:
        _append_messages(ip, user, count, seed)
    except imaplib.IMAP4.abort as exc:
        log = testbed.exec_in(host, ["journalctl", "-q", "--no-pager", "-n", "80", "-u", "dovecot",
                                     "-p", "warning"], check=False)
        pytest.fail(f"{user}: the server dropped the IMAP connection ({exc}); Dovecot's "
                    f"warnings:\n{log.stdout}{log.stderr}")


def _append_messages(ip: str, user: str, count: int, seed: int) -> None:
    rng = random.Random(seed)
    imap = imap_login(ip, user)
    try:
        for folder in FOLDERS[1:5]:
            assert imap.create(folder)[0] == "OK"
            assert imap.subscribe(folder)[0] == "OK"
        imap.create("Lists")  # the Sieve script files into it; not subscribed
        for i in range(count):
            folder = FOLDERS[rng.randrange(5)]
            body = "".join(rng.choice("abcdefghij klmnop\r\n") for _ in range(rng.randrange(200, 3000)))
            msg = (f"From: friend{i % 17}@outside.test\r\nTo: {user}\r\n"
                   f"Subject: drill {user} {i}\r\nDate: {email.utils.formatdate()}\r\n"
                   f"Message-ID: <drill.{seed}.{i}@outside.test>\r\n\r\n{body}\r\n")
            flags = FLAGS[rng.randrange(len(FLAGS))]
            typ, _ = imap.append(folder, f"({flags})" if flags else None,
                                 imaplib.Time2Internaldate(time.time() - rng.randrange(10**7)),
                                 msg.encode())
            assert typ == "OK"
    finally:
        imap.logout()


def mailbox_state(host: str, user: str) -> dict:
    """What must survive: folders, subscriptions, every message (folder, UID, GUID, flags
    without \\Recent, which is per session, and a hash of its whole text), Sieve scripts."""
    folders = sorted(run(host, "doveadm", "mailbox", "list", "-u", user).split())
    subscribed = sorted(run(host, "doveadm", "mailbox", "list", "-s", "-u", user).split())
    fetched = json.loads(run(host, "doveadm", "-f", "json", "fetch", "-u", user,
                             "mailbox uid guid flags text", "all") or "[]")
    messages = sorted(
        (m["mailbox"], int(m["uid"]), m["guid"],
         " ".join(sorted(f for f in m["flags"].split() if f != "\\Recent")),
         hashlib.sha256(m["text"].encode()).hexdigest())
        for m in fetched)
    scripts = run(host, "doveadm", "sieve", "list", "-u", user).splitlines()
    sieve = {line.split()[0]: run(host, "doveadm", "sieve", "get", "-u", user, line.split()[0])
             for line in scripts if line.strip()}
    return {"folders": folders, "subscribed": subscribed, "messages": messages,
            "active": sorted(scripts), "sieve": sieve}


def assert_same(before: dict[str, dict], after: dict[str, dict]) -> None:
    for user, was in before.items():
        now = after[user]
        for key in ("folders", "subscribed", "active", "sieve"):
            assert now[key] == was[key], f"{user}: {key} differ"
        assert len(now["messages"]) == len(was["messages"]), user
        missing = set(was["messages"]) - set(now["messages"])
        extra = set(now["messages"]) - set(was["messages"])
        assert not missing and not extra, (user, sorted(missing)[:3], sorted(extra)[:3])


def put_event(drill: Drill) -> str:
    """An event in alice's calendar over CalDAV (SOGo's database, in the store); its summary."""
    summary = f"Drill event {secrets.token_hex(6)}"
    uid = str(uuid.uuid4())
    Web(drill.bed.ip, HOSTNAME).put_new(f"/SOGo/dav/{ALICE}/Calendar/personal/{uid}.ics",
                                        EVENT.format(uid=uid, summary=summary),
                                        "text/calendar", (ALICE, PASSWORD))
    drill.events.append(summary)
    return summary


def calendar(ip: str) -> str:
    """alice's calendar as a CalDAV client reads it (PROPFIND, then each event), SOGo given
    a moment to start after the restore."""
    web, deadline = Web(ip, HOSTNAME), time.monotonic() + 60
    while True:
        listed = web.request("PROPFIND", f"/SOGo/dav/{ALICE}/Calendar/personal/",
                             headers={"Depth": "1"}, auth=(ALICE, PASSWORD))
        if listed.status == 207 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert listed.status == 207, (listed.status, listed.body[:300])
    hrefs = [e.text for e in ElementTree.fromstring(listed.body).iter("{DAV:}href")
             if e.text and e.text.endswith(".ics")]
    return "".join(web.request("GET", h, auth=(ALICE, PASSWORD)).body.decode() for h in hrefs)


def outside_mta(drill: Drill) -> str:
    """Postfix on the box's sender as a real outside MTA (it queues and retries), sending
    for outside.test, whose records the box publishes."""
    sender = drill.bed.internet.sender.host
    conf = "\n".join([
        "myhostname = mx.outside.test", "mydomain = outside.test", "myorigin = outside.test",
        "inet_interfaces = loopback-only", "mydestination =", "relayhost =",
        "smtp_tls_security_level = may", "compatibility_level = 3.6",
        # Retry soon: the drill waits for it.
        "queue_run_delay = 5s", "minimal_backoff_time = 5s", "maximal_backoff_time = 10s",
        "smtp_connect_timeout = 5s",
        # The new host may take the old one's address and accept a connection while its
        # services start: a greeting that never comes is retried after 20 s, not Postfix's
        # 300 (seen once: one message 3 minutes late, nothing lost).
        "smtp_helo_timeout = 20s",
        # The same for a session that stalls later (seen once, the new host busy starting:
        # one message waited in an open session past the drill's 3 minutes).
        "smtp_starttls_timeout = 20s", "smtp_mail_timeout = 20s", "smtp_rcpt_timeout = 20s",
        "smtp_data_init_timeout = 20s", "smtp_data_xfer_timeout = 20s",
        "smtp_data_done_timeout = 20s", ""])
    testbed.exec_in(sender.name, ["sh", "-c", "cat > /etc/postfix/main.cf"], input=conf)
    testbed.exec_in(sender.name, ["systemctl", "restart", "postfix"])
    drill.bed.internet.publish(testbed.sender_domain("outside.test", sender.ip))
    return sender.name


@pytest.fixture(scope="module")
def drill(tmp_path_factory) -> Iterator[Drill]:
    site = tmp_path_factory.mktemp("drill") / "site"
    key = sandbox.ensure_keypair(sandbox.default_state_dir())
    state: dict[str, object] = {}

    def before_deploy(bed: BoxedHost) -> None:
        state["target_name"] = f"{bed.name}-target"
        target = testbed.start_host(f"{bed.name}-target", testbed.stack_image(),
                                    hostname="backup.drill.test", network=bed.name)
        state["target"] = target
        setup_target(bed, target)

    edits = [("    greylist_score: 4\n", "    greylist_score: null\n"),
             ("  groupware: false\n", "  groupware: true\n")]
    drill = None
    try:
        with host_in_a_box("drill", site, DOMAIN, list(USERS), edits=edits,
                           before_deploy=before_deploy) as bed:
            drill = Drill(bed, bed.name, state["target"], key, bed.name)  # type: ignore[arg-type]
            records = mailstack(bed.site, "dns", "--format", "json")
            assert records.returncode == 0, records.stderr
            bed.internet.publish(testbed.site_records(records.stdout))
            try:
                yield drill
            finally:
                print("drill numbers:", json.dumps(drill.numbers))
                for name in drill.extra:
                    testbed.remove_host(name)
    finally:
        if "target_name" in state:
            testbed.remove_host(str(state["target_name"]))


@pytest.fixture(scope="module")
def filled(drill: Drill) -> Drill:
    """The mailboxes, the Sieve script, the mail over SMTP, and their state."""
    bed = drill.bed
    started = time.monotonic()
    for user in USERS:
        run(drill.host, "doveadm", "sieve", "put", "-a", "-u", user, "drill", input=SIEVE)
    with ThreadPoolExecutor(len(USERS)) as pool:
        list(pool.map(lambda a: append_messages(drill.host, bed.ip, a[1][0], a[1][1], a[0]),
                      enumerate(USERS.items())))
    subjects = [f"[list] smtp {i}" for i in range(SMTP_MESSAGES)]
    send(bed.ip, ALICE, subjects)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lists = run(drill.host, "doveadm", "search", "-u", ALICE, "mailbox", "Lists").split()
        if len(lists) >= 2 * SMTP_MESSAGES:  # two words per hit: mailbox GUID and UID
            break
        time.sleep(1)
    for user in USERS:
        drill.before[user] = mailbox_state(drill.host, user)
    total = sum(len(s["messages"]) for s in drill.before.values())
    drill.numbers["messages"] = total
    drill.numbers["fill_seconds"] = round(time.monotonic() - started)
    assert total == sum(USERS.values()) + SMTP_MESSAGES
    assert sum(1 for m in drill.before[ALICE]["messages"] if m[0] == "Lists") == SMTP_MESSAGES
    put_event(drill)
    return drill


# --------------------------------------------------------------------------- 1. backup


def test_backup_refuses_a_site_with_uncommitted_changes_then_runs(filled: Drill):
    site = filled.bed.site
    refused = mailstack(site, "backup", "now")
    assert refused.returncode == 1
    assert "uncommitted changes" in refused.stderr and "--allow-dirty" in refused.stderr
    assert "mailstack.yml" in refused.stderr
    git(site, "add", "-A")
    git(site, "commit", "-qm", "the drill's site")
    started = time.monotonic()
    done = mailstack(site, "backup", "now")
    assert done.returncode == 0, done.stdout + done.stderr
    filled.numbers["backup_seconds"] = round(time.monotonic() - started, 1)
    assert "(the repository was made)" in done.stdout
    last = json.loads(run(filled.host, "cat", BACKUP_STATE_FILE))
    assert last["ok"] is True and last["archive"].startswith(f"{HOSTNAME}-")
    assert abs(last["finished"] - time.time()) < 600
    filled.numbers.update(archive=last["archive"], original_size=last["original_size"],
                          deduplicated_size=last["deduplicated_size"])
    checked = mailstack(site, "backup", "check")
    assert checked.returncode == 0 and "the repository is consistent" in checked.stdout, checked.stderr
    listed = mailstack(site, "backup", "list")
    assert listed.returncode == 0 and last["archive"] in listed.stdout, listed.stdout
    # The repository holds ciphertext only: not one subject of the mail in clear text.
    found = testbed.exec_in(filled.target.name, ["grep", "-rl", "drill alice", REPO], check=False)
    assert found.returncode == 1, found.stdout
    # The key may run `borg serve` on the repository and nothing else.
    shell = testbed.exec_in(filled.host, ["ssh", "-i", "/etc/mailstack/backup/id_ed25519",
                                          "-o", "UserKnownHostsFile=/etc/mailstack/backup/known_hosts",
                                          "-o", "BatchMode=yes", f"borg@{filled.target.ip}",
                                          "cat /etc/passwd"], check=False)
    assert "root:" not in shell.stdout
    # The timers are there to run it again.
    for timer in ("mailstack-backup.timer", "mailstack-backup-check.timer"):
        assert run(filled.host, "systemctl", "is-active", timer).strip() == "active"


# --------------------------------------------------------------------------- 2. restore


def test_restore_onto_a_new_host_gives_identical_mailboxes_and_the_waiting_mail(filled: Drill):
    drill = filled
    sender = outside_mta(drill)
    testbed.remove_host(drill.host)  # the VPS died
    destroyed = time.monotonic()
    outage = [f"[list] outage {i}" for i in range(5)]
    for subject in outage:
        testbed.exec_in(sender, ["sendmail", "-f", "friend@outside.test", ALICE],
                        input=f"From: friend@outside.test\nTo: {ALICE}\nSubject: {subject}\n"
                              f"Message-ID: <{secrets.token_hex(8)}@outside.test>\n\nwhile down\n")
    new = start_host(drill, "new")
    restored = mailstack(drill.bed.site, "restore", "--host", new.ip, timeout=3600)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    print(restored.stdout)
    drill.host = new.name
    drill.numbers["restore_seconds"] = float(re.search(r"recovery time: (\d+) s",
                                                       restored.stdout).group(1))
    # Identical, before any new mail reaches it.
    assert_same(drill.before, {u: mailbox_state(new.name, u) for u in USERS})
    # The calendar: the archive's run dumped SOGo's database (it was running), and the
    # new host's database server loaded that dump into a new data directory.
    assert drill.events[0] in calendar(new.ip)
    assert testbed.exec_in(new.name, ["test", "-e", SOGO["db"]["load_marker"]],
                           check=False).returncode == 1
    # The same DKIM key: what the site publishes is what the new host signs with.
    key = run(new.name, "cat", f"/etc/opendkim/keys/{DOMAIN}/"
              + run(new.name, "ls", f"/etc/opendkim/keys/{DOMAIN}").split()[0])
    assert "PRIVATE KEY" in key
    # Only the A record changes; the outside MTA's queued mail then arrives, once.
    drill.bed.internet.publish([testbed.Record(HOSTNAME, "A", new.ip)])
    testbed.exec_in(sender, ["postqueue", "-f"])
    inbox = wait_for_folder(new.ip, ALICE, "Lists", outage, timeout=180)
    if not all(s in inbox for s in outage):
        pytest.fail(f"outage mail missing from Lists: {sorted(set(outage) - set(inbox))}\n"
                    + where_is_the_mail(new.name, sender, "outage"))
    assert_each_once(inbox, outage)
    drill.numbers["outage_delivered_after_s"] = round(time.monotonic() - destroyed)
    drill.bed.ip = new.ip
    # The restored host is simply the site's host now: a deploy finds nothing to change.
    again = mailstack(drill.bed.site, "deploy")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "no changes: the hosts already match the site" in again.stdout, again.stdout


def where_is_the_mail(host: str, sender: str, word: str) -> str:
    """What a missing message's way shows: the sender's queue, both ends' mail log lines
    with the word or its queue ids, every folder's subjects on the host."""
    def out(name: str, *cmd: str) -> str:
        done = testbed.exec_in(name, list(cmd), check=False)
        return (done.stdout + done.stderr)[-6000:]
    folders = out(host, "doveadm", "-f", "tab", "fetch", "-A", "mailbox hdr.subject",
                  "mailbox", "*", "subject", word)
    return "\n".join([
        "sender's queue:", out(sender, "postqueue", "-p"),
        "sender's log:", out(sender, "sh", "-c",
                                 "journalctl -q -u postfix@- -u postfix --no-pager | tail -60"),
        "host's log:", out(host, "sh", "-c", "journalctl -q --no-pager -t postfix/smtpd -t postfix/cleanup "
                           "-t postfix/qmgr -t postfix/lmtp -t postfix/postscreen -t dovecot | tail -80"),
        "host's folders:", folders])


def wait_for_folder(ip: str, user: str, folder: str, subjects: list[str], timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        imap = imap_login(ip, user)
        try:
            imap.select(folder)
            _, data = imap.search(None, "ALL")
            found = []
            for num in data[0].split():
                _, got = imap.fetch(num, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                found.append(got[0][1].decode().split(":", 1)[1].strip())
        finally:
            imap.logout()
        if all(s in found for s in subjects) or time.monotonic() > deadline:
            return found
        time.sleep(2)


# --------------------------------------------------------------------------- 3. locked


def test_an_archive_of_a_locked_store_restores_with_its_sealed_mail(filled: Drill):
    drill = filled
    site = drill.bed.site
    git(site, "commit", "-qam", "restored onto the new host")
    before = {u: mailbox_state(drill.host, u) for u in USERS}
    put_event(drill)
    locked = mailstack(site, "lock")
    assert locked.returncode == 0, locked.stderr
    sealed = ["sealed while locked 1", "sealed while locked 2"]
    send(drill.bed.ip, f"bob@{DOMAIN}", sealed)
    done = mailstack(site, "backup", "now")
    assert done.returncode == 0, done.stdout + done.stderr
    # The second archive adds what is new only (the store's unchanged cipher files dedupe).
    last = json.loads(run(drill.host, "cat", BACKUP_STATE_FILE))
    drill.numbers.update(second_backup_added=last["deduplicated_size"],
                         second_backup_seconds=last["seconds"])
    testbed.remove_host(drill.host)
    third = start_host(drill, "third")
    restored = mailstack(site, "restore", "--host", third.ip, timeout=3600)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "delivered 2 message(s)" in restored.stdout, restored.stdout
    drill.host, drill.bed.ip = third.name, third.ip
    after = {u: mailbox_state(third.name, u) for u in USERS}
    bob = f"bob@{DOMAIN}"
    new = [m for m in after[bob]["messages"] if m not in set(before[bob]["messages"])]
    assert len(new) == 2
    after[bob]["messages"] = [m for m in after[bob]["messages"] if m not in new]
    assert_same(before, after)
    inbox = wait_for_subjects(third.ip, bob, sealed, timeout=60)
    assert_each_once(inbox, sealed)
    # Locked, SOGo's database server was stopped: its data directory at rest is what the
    # archive holds and what the third host runs on, with both events.
    events = calendar(third.ip)
    assert all(e in events for e in drill.events), (drill.events, events[:500])
    git(site, "commit", "-qam", "restored onto the third host")


# --------------------------------------------------------------------------- 4. damaged


def test_a_damaged_archive_is_refused_and_nothing_is_deployed(filled: Drill):
    drill = filled
    site = drill.bed.site
    segments = run(drill.target.name, "find", f"{REPO}/data", "-type", "f", "-size", "+64k").split()
    assert segments
    for segment in segments:  # a disk that went bad under every large segment, in 3 places
        run(drill.target.name, "sh", "-ec",
            'size=$(stat -c %s "$1"); for at in 1 2 3; do dd if=/dev/urandom of="$1" bs=1 '
            'count=512 seek=$((size * at / 4)) conv=notrunc status=none; done', "sh", segment)
    checked = mailstack(site, "backup", "check")
    assert checked.returncode == 1 and "borg check found problems" in checked.stderr, checked.stderr
    assert "Traceback" not in checked.stderr
    fourth = start_host(drill, "fourth")
    refused = mailstack(site, "restore", "--host", fourth.ip, timeout=1800)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "cannot be restored" in refused.stderr or "cannot list" in refused.stderr \
        or "cannot open" in refused.stderr, refused.stderr
    assert "the mail stack was not deployed there" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    # Nothing of the mail stack: no store, none of its settings, no staged files left.
    for path in (CIPHER, "/etc/mailstack/storage.json", "/usr/local/sbin/mailstack-storage",
                 "/etc/postfix/mysql", "/var/lib/mailstack/restore/tree"):
        assert testbed.exec_in(fourth.name, ["test", "-e", path], check=False).returncode == 1, path
