"""Upgrading mailstack over a server the last release deployed: the release's own wheel (built
from its commit, installed with its locked dependencies into a virtualenv of its own) makes
the site, adds the users and deploys a host in the box; mail arrives, is read, flagged and
filed, and the store is locked and unlocked as usual. Then the working tree's mailstack:

- its first command migrates the site's format when the release's is older, and says so;
- `deploy` succeeds and lists what it changed, task by task;
- every earlier message is still there, unchanged (same UID, content hash and flags, same
  folders), the store is the same (its cipher directory's key file untouched);
- mail sent DURING the upgrading deploy (an MTA that retries on temporary failures, as real
  senders do) and mail sent after it arrive exactly once;
- a second deploy changes nothing, and `mailstack verify` passes;
- a Debian update (Postfix, Dovecot, OpenDKIM and OpenSSL reinstalled from the mirror as
  unattended-upgrades installs updates): the packages' scripts restart their daemons,
  needrestart the others still on the replaced OpenSSL, mail flows, and `deploy --check`
  finds no drift; with the store locked, the update starts no Dovecot on the bare mount;
- unattended-upgrades installs a security update that changes a conffile the admin replaced
  (a package built here, offered as Debian-Security) and keeps the admin's file;
- after a reboot the same passphrase (from the vault) unlocks the same store, with all the mail.

Runs the real CLIs as subprocesses, exactly as a user would. `-s` shows the timings.
"""

from __future__ import annotations

import email
import hashlib
import imaplib
import re
import smtplib
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import testbed

from mailstack.render.context import POSTFIX_INSTANCE_UNIT, STATUS_SERVICES, VMAIL
from mailstack.sandbox import host as sandbox
from mailstack.site.config import SITE_FORMAT
from mailstack.site.inventory import write_inventory

from .helpers import (
    BoxedHost,
    Cli,
    assert_each_once,
    host_in_a_box,
    imap_login,
    imap_subjects,
    installed_mailstack,
    send,
    wait_for_subjects,
)

pytestmark = pytest.mark.testbed

REPO = Path(__file__).resolve().parents[2]
DOMAIN = "upgrade.test"
HOSTNAME = f"mail.{DOMAIN}"
ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"
CIPHER = VMAIL["root"] + ".crypt"
ARCHIVE = "Archive"
# Sending during the upgrading deploy: one message a second, at most this many.
DURING_MAX = 600


def git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


VERSION_FILE = "mailstack/__init__.py"
RELEASE = re.compile(r'^__version__ = "(\d+(?:\.\d+)*)"$', re.M)  # 0.1.0, not 0.2.0.dev0


def version_at(rev: str) -> str | None:
    """The release version the tree of rev has, or None (a development version)."""
    found = RELEASE.search(git("show", f"{rev}:{VERSION_FILE}"))
    return found[1] if found else None


def last_release() -> tuple[str, str]:
    """(version, commit) of the last release below the working tree: the last commit that had a
    release version other than the tree's own, i.e. the parent of the commit that moved the
    version on (or HEAD, when the tree has moved it and is not committed yet). Read from the
    version file's history, not from tags: a clone need not carry tags (CI's clone of main
    does not), while a full one always has the history. A shallow clone has neither."""
    tree = RELEASE.search((REPO / VERSION_FILE).read_text())
    own = tree[1] if tree else None
    roots = git("rev-list", "--max-parents=0", "HEAD").split()
    changes = git("log", "--format=%H", "HEAD", "--", VERSION_FILE).split()
    for rev in ["HEAD", *(f"{c}^" for c in changes if c not in roots)]:
        version = version_at(rev)
        if version and version != own:
            return version, git("rev-parse", rev)
    pytest.fail(f"no release version below the working tree in the history of {VERSION_FILE} "
                "(a shallow clone?): git fetch --unshallow")


def run(*cmd: str | Path) -> None:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 0, " ".join(map(str, cmd)) + "\n" + done.stderr[-3000:]


def installed(src: Path, root: Path, *extra: str) -> Cli:
    """The mailstack of the tree at src as its users get it: its wheel, installed with the
    versions its constraints.txt locks into a virtualenv of its own (and extra packages)."""
    dist, venv = root / "dist", root / "venv"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, src)
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin/pip", "install", "-q", "-c", src / "constraints.txt", *dist.glob("*.whl"),
        *extra)
    return installed_mailstack(venv)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[str, Cli]:
    """The last release, built from its commit's tree. 0.1.0's roles named a filter of the
    `ansible` package's collections, which its users had to install beside it (0.2.0's use
    ansible-core's own: tests/unit/test_packaging.py)."""
    version, commit = last_release()
    tag = f"v{version}"
    root = tmp_path_factory.mktemp("release")
    src = root / "src"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    old = installed(src, root, *(["ansible"] if version == "0.1.0" else []))
    said = old(None, "--version").stdout.strip()
    assert said == f"mailstack {version}", said
    return tag, old


@pytest.fixture(scope="module")
def new(tmp_path_factory) -> Cli:
    """The working tree's mailstack, installed as `pip install -U mailstack` gets it: no
    test extras (no collections), the locked versions."""
    return installed(REPO, tmp_path_factory.mktemp("new"))


# --- what a mailbox holds ---------------------------------------------------------------------


Mailbox = dict[int, tuple[str, frozenset[str]]]  # UID: (SHA-256 of the message, flags)


def _fetched(imap: imaplib.IMAP4, item: str) -> list[tuple[bytes, bytes]]:
    typ, data = imap.uid("FETCH", "1:*", f"({item})")
    assert typ == "OK", data
    return [d for d in data if isinstance(d, tuple)] if item.startswith("BODY") else \
        [(d, b"") for d in data if isinstance(d, bytes) and d.strip()]


def read_mailbox(imap: imaplib.IMAP4, folder: str) -> tuple[int, Mailbox]:
    """UIDVALIDITY, and each message's UID, content hash and flags (\\Recent aside: it
    belongs to a session), read over IMAP."""
    typ, exists = imap.select(folder, readonly=True)
    assert typ == "OK", folder
    validity = int(imap.response("UIDVALIDITY")[1][0])
    if int(exists[0]) == 0:
        return validity, {}
    hashes = {int(re.search(rb"UID (\d+)", head).group(1)): hashlib.sha256(body).hexdigest()
              for head, body in _fetched(imap, "BODY.PEEK[]")}
    flags = {}
    for line, _ in _fetched(imap, "FLAGS"):
        uid = int(re.search(rb"UID (\d+)", line).group(1))
        found = re.search(rb"FLAGS \(([^)]*)\)", line).group(1).decode().split()
        flags[uid] = frozenset(f for f in found if f != "\\Recent")
    assert hashes.keys() == flags.keys()
    return validity, {uid: (hashes[uid], flags[uid]) for uid in hashes}


def _subjects(imap: imaplib.IMAP4) -> list[str]:
    """The Subject of each message of the selected folder."""
    return [email.message_from_bytes(body)["Subject"] or ""
            for _, body in _fetched(imap, "BODY.PEEK[HEADER.FIELDS (SUBJECT)]")]


@dataclass
class Snapshot:
    folders: dict[str, list[str]] = field(default_factory=dict)  # user: folder names
    mail: dict[tuple[str, str], tuple[int, Mailbox]] = field(default_factory=dict)
    subjects: dict[tuple[str, str], list[str]] = field(default_factory=dict)


def snapshot(ip: str) -> Snapshot:
    snap = Snapshot()
    for user in (ALICE, BOB):
        imap = imap_login(ip, user)
        try:
            _, listed = imap.list()
            names = sorted(line.decode().rsplit(" ", 1)[-1].strip('"') for line in listed)
            snap.folders[user] = names
            for folder in names:
                snap.mail[user, folder] = read_mailbox(imap, folder)
                snap.subjects[user, folder] = _subjects(imap) if snap.mail[user, folder][1] else []
        finally:
            imap.logout()
    return snap


def read_and_file(ip: str, user: str) -> None:
    """What a user does with mail: read some, flag one, file two into a folder."""
    imap = imap_login(ip, user)
    try:
        imap.create(ARCHIVE)
        imap.select("INBOX")
        assert imap.uid("STORE", "1:3", "+FLAGS", r"(\Seen)")[0] == "OK"
        assert imap.uid("STORE", "2", "+FLAGS", r"(\Flagged)")[0] == "OK"
        assert imap.uid("COPY", "4:5", ARCHIVE)[0] == "OK"
    finally:
        imap.logout()


# --- sending as an MTA does -------------------------------------------------------------------


def _code(exc: Exception) -> int | None:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return next(iter(exc.recipients.values()))[0]
    return getattr(exc, "smtp_code", None)


def send_until(ip: str, rcpt: str, label: str, done) -> tuple[list[str], int]:
    """One message a second until done() (at most DURING_MAX), each retried like an MTA
    retries while the server is away or answers 4xx; a 5xx fails (mail lost). The subjects
    accepted, and how many attempts had to be retried."""
    accepted: list[str] = []
    retries = 0
    while not done() and len(accepted) < DURING_MAX:
        subject = f"{label}-{len(accepted)}"
        while True:
            try:
                send(ip, rcpt, [subject])
                break
            except (OSError, smtplib.SMTPException) as exc:
                code = _code(exc)
                assert not (code and code >= 500), f"{subject} refused for good: {exc}"
                retries += 1
                time.sleep(1)
        accepted.append(subject)
        time.sleep(1)
    return accepted, retries


# --- the upgrade ------------------------------------------------------------------------------


@dataclass
class Upgrade:
    bed: BoxedHost
    cli: Cli  # the working tree's
    tag: str
    old_format: int
    before: Snapshot
    cipher_key: str  # SHA-256 of the store's gocryptfs.conf (its wrapped master key)
    upgraded: subprocess.CompletedProcess[str]
    during: list[str]
    retries: int
    earlier: dict[str, list[str]]
    timings: dict[str, float] = field(default_factory=dict)

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return testbed.exec_in(self.bed.name, ["bash", "-ec", script], check=check)

    def cipher(self) -> str:
        return self.sh(f"sha256sum {CIPHER}/gocryptfs.conf").stdout.split()[0]


def publish_site(bed: BoxedHost, cli: Cli) -> None:
    records = cli(bed.site, "dns", "--format", "json")
    assert records.returncode == 0, records.stderr
    bed.internet.publish(testbed.site_records(records.stdout.replace("203.0.113.7", bed.ip)))


@pytest.fixture(scope="module")
def upgrade(release, new, tmp_path_factory):
    tag, old = release
    timings: dict[str, float] = {}
    edits = (("    greylist_score: 4\n", "    greylist_score: null\n"),
             # The box's blocklist (verify asks each list for its test entry).
             ("    threshold: 3\n", "    threshold: 3\n    lists: [{zone: bl.test, weight: 3, "
                                  "answers: 127.0.0.2}]\n"))
    started = time.monotonic()
    site = tmp_path_factory.mktemp("upgrade") / "site"
    # As root on a VPS has them: NET_ADMIN, so that the firewall and the ban jails act
    # (verify checks the jails); SYS_PTRACE, without which root cannot read another user's
    # /proc/PID/exe, and needrestart skips every daemon not running as root.
    with host_in_a_box("upgrade", site, DOMAIN, [ALICE, BOB], edits=edits, cli=old,
                       cap_add=("NET_ADMIN", "SYS_PTRACE"),
                       before_deploy=lambda bed: publish_site(bed, old)) as bed:
        timings[f"host, box and deploy by {tag}"] = time.monotonic() - started
        old_format = int(re.search(r"(?m)^format: (\d+)$", (site / "mailstack.yml").read_text())[1])
        earlier = {user: [f"before-{user.split('@')[0]}-{i}" for i in range(8)] for user in (ALICE, BOB)}
        for user, subjects in earlier.items():
            send(bed.ip, user, subjects)
            assert_each_once(wait_for_subjects(bed.ip, user, subjects), subjects)
            read_and_file(bed.ip, user)
        # Locked and unlocked as usual, by the release: mail that came meanwhile is delivered.
        locked = old(site, "lock")
        assert locked.returncode == 0, locked.stdout + locked.stderr
        while_locked = [f"while-locked-{i}" for i in range(3)]
        send(bed.ip, ALICE, while_locked)
        unlocked = old(site, "unlock")
        assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
        assert_each_once(wait_for_subjects(bed.ip, ALICE, while_locked), while_locked)
        earlier[ALICE] += while_locked
        before = snapshot(bed.ip)
        cipher_key = testbed.exec_in(bed.name, ["sha256sum", f"{CIPHER}/gocryptfs.conf"]).stdout.split()[0]

        # The upgrade: the working tree's mailstack deploys while mail keeps coming.
        t0 = time.monotonic()
        with ThreadPoolExecutor(1) as pool:
            deploying = pool.submit(new, site, "deploy")
            during, retries = send_until(bed.ip, ALICE, "during-upgrade", deploying.done)
            upgraded = deploying.result()
        timings["upgrading deploy"] = time.monotonic() - t0
        print(f"\n[upgrade] {tag} -> working tree: deploy {timings['upgrading deploy']:.1f} s, "
              f"{len(during)} messages sent meanwhile, {retries} attempts retried\n"
              + upgraded.stdout)
        up = Upgrade(bed, new, tag, old_format, before, cipher_key, upgraded, during, retries,
                     earlier, timings)
        yield up
        timings["module"] = time.monotonic() - started
        print("\n[upgrade] " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))


def test_the_upgrading_deploy_succeeds_and_lists_what_it_changed(upgrade):
    done = upgrade.upgraded
    assert done.returncode == 0, done.stdout + done.stderr
    counts = re.search(rf"  {HOSTNAME}: ok=\d+ changed=(\d+) failed=0 unreachable=0", done.stdout)
    assert counts, done.stdout
    listed = re.findall(r"(?m)^    changed: (.+)$", done.stdout)
    assert len(listed) == int(counts[1]), done.stdout  # every change named, one line each
    assert "Traceback" not in done.stderr


def test_the_first_command_migrates_an_older_site_format_and_says_so(upgrade):
    said = upgrade.upgraded.stderr
    config = (upgrade.bed.site / "mailstack.yml").read_text()
    assert re.search(rf"(?m)^format: {SITE_FORMAT}$", config), config[:400]
    if upgrade.old_format < SITE_FORMAT:
        assert f"from format {upgrade.old_format} to {SITE_FORMAT}" in said, said
    else:
        assert "migrated" not in said, said


def test_every_earlier_message_is_kept_unchanged_with_its_flags_and_folders(upgrade):
    after = snapshot(upgrade.bed.ip)
    assert after.folders == upgrade.before.folders
    assert ARCHIVE in after.folders[ALICE]
    for (user, folder), (validity, mail) in upgrade.before.mail.items():
        now_validity, now = after.mail[user, folder]
        assert now_validity == validity, (user, folder)
        # Same UIDs, same bytes, same flags; only new mail may have come since.
        assert {uid: now.get(uid) for uid in mail} == mail, (user, folder)
    # What the users had: their mail in INBOX, two messages filed each.
    for user in (ALICE, BOB):
        assert_each_once(upgrade.before.subjects[user, "INBOX"], upgrade.earlier[user])
        assert len(upgrade.before.mail[user, ARCHIVE][1]) == 2
    print("\n[upgrade] kept: " + ", ".join(f"{u.split('@')[0]}/{f} {len(m)}"
                                          for (u, f), (_, m) in upgrade.before.mail.items()))


def test_the_store_is_the_same(upgrade):
    assert upgrade.cipher() == upgrade.cipher_key
    mounts = upgrade.sh("cat /proc/mounts").stdout
    assert f" {VMAIL['root']} fuse.gocryptfs " in mounts, mounts


def test_mail_sent_during_the_upgrade_arrives_exactly_once(upgrade):
    assert upgrade.during, "no message was sent while the deploy ran"
    inbox = wait_for_subjects(upgrade.bed.ip, ALICE, upgrade.during, timeout=120)
    assert_each_once(inbox, upgrade.during + upgrade.earlier[ALICE])


def test_new_mail_arrives_once(upgrade):
    for user in (ALICE, BOB):
        subjects = [f"after-upgrade-{user.split('@')[0]}-{i}" for i in range(3)]
        send(upgrade.bed.ip, user, subjects)
        assert_each_once(wait_for_subjects(upgrade.bed.ip, user, subjects),
                         subjects + upgrade.earlier[user])


def test_a_second_deploy_changes_nothing(upgrade):
    again = upgrade.cli(upgrade.bed.site, "deploy")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "no changes: the hosts already match the site" in again.stdout, again.stdout
    assert re.search(rf"  {HOSTNAME}: ok=\d+ changed=0 ", again.stdout), again.stdout
    assert "    changed: " not in again.stdout


def test_verify_passes_after_the_upgrade(upgrade):
    import json

    result = upgrade.cli(upgrade.bed.site, "verify", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    failed = {n: c["detail"] for n, c in checks.items() if not c["passed"]}
    assert not failed and result.returncode == 0, failed


# --- Debian's updates ---------------------------------------------------------------------


# A point or security update of the mail daemons, as unattended-upgrades installs it: apt
# with debconf non-interactive and no answer to any question (a dpkg conffile prompt would
# fail it), the packages' maintainer scripts restarting their services. Reinstalling the
# versions the host has runs exactly those scripts (the mirror has no newer ones to offer).
# libssl3 too: a library update no package script restarts anything for (needrestart does).
UPDATED = ("postfix", "dovecot-core", "dovecot-imapd", "dovecot-lmtpd", "opendkim", "libssl3")
RESTARTED = (POSTFIX_INSTANCE_UNIT, "dovecot", "opendkim", "rspamd", "unbound")
# Every service process still running on a replaced (deleted) OpenSSL: unit and command.
# Not systemd's own and D-Bus, which needrestart leaves for a reboot (its defaults).
STALE_OPENSSL = r"""
for p in /proc/[0-9]*; do
  grep -qE '/(libssl|libcrypto)\.so[^ ]* \(deleted\)$' $p/maps 2>/dev/null || continue
  unit=$(grep -oE 'system\.slice/[^/]+\.service' $p/cgroup | tail -1)
  unit=${unit#system.slice/}
  case "$unit" in ""|systemd-*|dbus*|getty*) continue;; esac
  echo "$unit $(cat $p/comm)"
done | sort -u
"""


def debian_update(upgrade: Upgrade, packages: tuple[str, ...]) -> None:
    done = upgrade.sh("export DEBIAN_FRONTEND=noninteractive; apt-get -q update && "
                      f"apt-get -q -y install --reinstall {' '.join(packages)} </dev/null; "
                      "dpkg --audit", check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def started_at(upgrade: Upgrade, unit: str) -> str:
    return upgrade.sh(f"systemctl show -p ActiveEnterTimestampMonotonic --value {unit}").stdout.strip()


def assert_no_drift(upgrade: Upgrade) -> None:
    check = upgrade.cli(upgrade.bed.site, "deploy", "--check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no changes needed" in check.stdout, check.stdout


def test_a_debian_update_restarts_the_daemons_and_leaves_no_drift(upgrade):
    """The daemons' packages restart them; the services left on the replaced OpenSSL
    (rspamd, unbound: their packages were not updated) are restarted by needrestart."""
    before = {unit: started_at(upgrade, unit) for unit in RESTARTED}
    started = time.monotonic()
    debian_update(upgrade, UPDATED)
    upgrade.timings["Debian update"] = time.monotonic() - started
    after = {unit: started_at(upgrade, unit) for unit in RESTARTED}
    assert [u for u in RESTARTED if after[u] == before[u]] == [], (before, after)
    assert upgrade.sh(STALE_OPENSSL).stdout == ""
    for unit in STATUS_SERVICES:
        assert upgrade.sh(f"systemctl is-active {unit}", check=False).stdout.strip() == "active", unit
    subjects = [f"after-debian-update-{i}" for i in range(3)]
    send(upgrade.bed.ip, ALICE, subjects)
    assert_each_once(wait_for_subjects(upgrade.bed.ip, ALICE, subjects), subjects)
    assert_no_drift(upgrade)


def test_a_debian_update_while_the_store_is_locked_starts_no_dovecot_on_the_empty_mount(upgrade):
    """After a reboot nobody has unlocked yet, the update's restart of Dovecot must not start
    it on the bare mount point (a locked store looking like empty mailboxes, new mail
    written in clear text): the service stays down, mail is sealed, unlock delivers it."""
    site, ip = upgrade.bed.site, upgrade.bed.ip
    locked = upgrade.cli(site, "lock")
    assert locked.returncode == 0, locked.stdout + locked.stderr
    debian_update(upgrade, ("dovecot-core",))
    assert upgrade.sh("systemctl is-active dovecot", check=False).stdout.strip() != "active"
    assert upgrade.sh(f"find {VMAIL['root']} -mindepth 1 | head -3").stdout == ""
    subjects = [f"debian-update-while-locked-{i}" for i in range(2)]
    send(ip, ALICE, subjects)
    unlocked = upgrade.cli(site, "unlock")
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    assert_each_once(wait_for_subjects(ip, ALICE, subjects), subjects)
    assert_no_drift(upgrade)


# A package whose next version changes a conffile the admin (here: mailstack) replaced, in
# a local repository that says it is Debian's security archive, so that unattended-upgrades
# itself, with the host's settings, decides whether to install it.
CONFFILE_UPDATE = r"""
d=$(mktemp -d)
build() {
  mkdir -p "$d/$1/DEBIAN" "$d/$1/etc"
  printf 'Package: mailstack-conffile-probe\nVersion: %s\nArchitecture: all\n' "$1" > "$d/$1/DEBIAN/control"
  printf 'Maintainer: t <t@t.test>\nDescription: a conffile\n' >> "$d/$1/DEBIAN/control"
  echo /etc/mailstack-conffile-probe.conf > "$d/$1/DEBIAN/conffiles"
  echo "$2" > "$d/$1/etc/mailstack-conffile-probe.conf"
  dpkg-deb --build --root-owner-group "$d/$1" "$d/probe_$1.deb" >/dev/null
}
build 1.0 "Debian's default"
build 1.1 "Debian's new default"
dpkg -i "$d/probe_1.0.deb" >/dev/null
echo "mailstack's" > /etc/mailstack-conffile-probe.conf
repo=/srv/mailstack-test-security; mkdir -p $repo; cp "$d/probe_1.1.deb" $repo/
cd $repo
{ dpkg-deb -f probe_1.1.deb; echo "Filename: ./probe_1.1.deb"; echo "Size: $(stat -c %s probe_1.1.deb)"
  echo "SHA256: $(sha256sum probe_1.1.deb | cut -d' ' -f1)"; echo; } > Packages
{ printf 'Origin: Debian\nLabel: Debian-Security\nSuite: bookworm-security\nCodename: bookworm-security\n'
  printf 'Date: %s\nArchitectures: all amd64 arm64\nSHA256:\n' "$(date -Ru)"
  echo " $(sha256sum Packages | cut -d' ' -f1) $(stat -c %s Packages) Packages"; } > Release
echo "deb [trusted=yes] file:$repo ./" > /etc/apt/sources.list.d/mailstack-test-security.list
# This package only: whatever else the real archive has pending is not this test's.
printf 'Unattended-Upgrade::Package-Whitelist { "mailstack-conffile-probe"; };\n%s\n' \
  'Unattended-Upgrade::Package-Whitelist-Strict "true";' > /etc/apt/apt.conf.d/99mailstack-test-only
apt-get -q update >/dev/null
unattended-upgrade -v
"""


def test_unattended_upgrades_installs_an_update_that_changes_a_replaced_conffile(upgrade):
    """Without a setting, unattended-upgrades holds back any update whose package changes a
    conffile the admin changed (mailstack replaces /etc/opendkim.conf, for one): security
    fixes would wait for someone to log in. With the common role's, it installs it and keeps
    the file (Debian's beside it as .dpkg-dist)."""
    try:
        done = upgrade.sh(CONFFILE_UPDATE, check=False)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "conffile prompt" not in done.stdout + done.stderr, done.stdout
        version = upgrade.sh("dpkg-query -W -f '${Version}' mailstack-conffile-probe").stdout
        assert version == "1.1", done.stdout[-3000:]
        assert upgrade.sh("cat /etc/mailstack-conffile-probe.conf").stdout == "mailstack's\n"
        assert upgrade.sh("cat /etc/mailstack-conffile-probe.conf.dpkg-dist").stdout == \
            "Debian's new default\n"
    finally:
        upgrade.sh("rm -rf /etc/apt/sources.list.d/mailstack-test-security.list "
                   "/etc/apt/apt.conf.d/99mailstack-test-only "
                   "/srv/mailstack-test-security; dpkg --purge mailstack-conffile-probe; "
                   "apt-get -q update", check=False)


def test_the_same_passphrase_unlocks_the_same_store_after_a_reboot(upgrade):
    bed = upgrade.bed
    started = time.monotonic()
    host = testbed.restart_host(bed.name, network=bed.name)
    key = sandbox.ensure_keypair(sandbox.default_state_dir())
    write_inventory(bed.site, HOSTNAME, host.ip, "root", 22, str(key))
    bed.ip = host.ip
    for port in (22, 25):
        testbed.wait_for_port(bed.ip, port, 60)
    unlocked = upgrade.cli(bed.site, "unlock")
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    assert f"{HOSTNAME}: unlocked;" in unlocked.stdout, unlocked.stdout  # it was locked
    upgrade.timings["reboot and unlock"] = time.monotonic() - started
    assert upgrade.cipher() == upgrade.cipher_key
    after = snapshot(bed.ip)
    for (user, folder), (validity, mail) in upgrade.before.mail.items():
        now_validity, now = after.mail[user, folder]
        assert now_validity == validity and {uid: now.get(uid) for uid in mail} == mail
    inbox = imap_subjects(bed.ip, ALICE)
    assert_each_once(inbox, upgrade.during + upgrade.earlier[ALICE])
