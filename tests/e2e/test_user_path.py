"""The user's path, for real: `mailstack sandbox up` (a fresh Debian host reached over SSH)
→ `user add` → `deploy` → `verify` → a second `deploy` changes nothing → `sandbox down`.
Plus the failure modes a user meets: unreachable host, SSH auth failure, wrong vault password.

Runs the real CLI as a subprocess, exactly as a user would.
"""

from __future__ import annotations

import imaplib
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import testbed

from mailstack.deploy.ssh import control_path_dir
from mailstack.host import storage_tool
from mailstack.render.context import DB_NAME, VERIFY_LOCAL_PART
from mailstack.sandbox import host as sandbox

from .helpers import (
    PASSWORD,
    assert_each_once,
    imap_login,
    imap_subjects,
    mailstack,
    send,
    tls_context,
    wait_for_subjects,
)

pytestmark = pytest.mark.testbed
ALICE = "alice@sandbox.test"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if sandbox.sandbox_status() is not None:
        pytest.skip("a mailstack-sandbox container already exists; not touching it")
    root = tmp_path_factory.mktemp("e2e") / "site"
    try:
        up = mailstack(None, "sandbox", "up", str(root))
        assert up.returncode == 0, up.stdout + up.stderr
        testbed.offline_site(root)
        yield root
    finally:
        mailstack(None, "sandbox", "down")


@pytest.fixture(scope="module")
def deployed(site):
    assert mailstack(site, "user", "add", ALICE, "--password-stdin",
                     input=PASSWORD + "\n").returncode == 0
    aliases = mailstack(site, "alias", "list").stdout  # the domain's first user is postmaster
    assert f"postmaster@sandbox.test -> {ALICE}" in aliases
    leftovers = set(Path(tempfile.gettempdir()).glob("mailstack-build-*"))
    started = time.monotonic()
    result = mailstack(site, "deploy")
    print(f"cold deploy: {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "change(s) made" in result.stdout
    # First contact: the host key trusted is shown, to compare with the provider's console.
    assert "first contact: trusted the host key" in result.stdout
    assert "SHA256:" in result.stdout.split("first contact:")[1].splitlines()[0]
    # The rendered secrets lived only for the run: no build/ in the site, nothing in /tmp.
    assert not (site / "build").exists()
    assert set(Path(tempfile.gettempdir()).glob("mailstack-build-*")) == leftovers
    return site


def test_verify_passes_every_check(deployed):
    result = mailstack(deployed, "verify", "--json")
    checks = json.loads(result.stdout)
    failed = [c for c in checks if not c["passed"]]
    assert not failed, json.dumps(failed, indent=2)
    names = {c["name"] for c in checks}
    for expected in ("STARTTLS offered on 25", "AUTH not offered on 587 before TLS",
                     "relay to an outside domain refused", "relay via %-hack refused",
                     "unknown recipient refused at RCPT",
                     "sender not owned by the user refused",
                     "message from 587 DKIM-signed and valid",
                     "message from 465 DKIM-signed and valid",
                     "message from 587 found by full-text search",
                     "message from 465 found by full-text search",
                     "IMAP IDLE tells of new mail (push)",
                     "mail from outside to the verify mailbox refused",
                     "message from 587 does not reveal the sender's computer",
                     "message from 465 does not reveal the sender's computer",
                     "spam filter refuses GTUBE", "brute-force ban jails active",
                     "spam filter answers on the host", "verify mailbox locked again",
                     "every port presents the site's key (TLSA)",
                     "certificate trusted, with time left",
                     "MTA-STS policy of sandbox.test served"):
        assert expected in names
    # No groupware on the sandbox: nothing of it is checked.
    assert not names & {"webmail login over HTTPS", "ActiveSync answers OPTIONS"}
    assert result.returncode == 0
    # Between runs the verify mailbox has no password at all.
    stored = testbed.exec_in(sandbox.CONTAINER, [
        "mariadb", "-N", DB_NAME, "-e",
        "SELECT password_hash FROM mailboxes WHERE local_part = '" + VERIFY_LOCAL_PART + "'"])
    assert stored.stdout.strip() == storage_tool.VERIFY_LOCKED


def test_ssh_takes_keys_only(deployed):
    """options.ssh.harden (on in a new site): sshd offers public keys and nothing else, and
    the deploy that set it (by key) goes on working."""
    ip = sandbox.sandbox_status().ip
    tried = subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                            "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes",
                            "-o", "IdentityFile=/dev/null", "-o", "ConnectTimeout=10",
                            f"root@{ip}", "true"], capture_output=True, text=True, timeout=30)
    assert tried.returncode == 255
    assert "Permission denied (publickey)." in tried.stderr, tried.stderr
    effective = testbed.exec_in(sandbox.CONTAINER, ["/usr/sbin/sshd", "-T"]).stdout
    for line in ("passwordauthentication no", "kbdinteractiveauthentication no",
                 "x11forwarding no", "permitrootlogin without-password"):
        assert line in effective.splitlines(), line


def test_second_deploy_changes_nothing(deployed):
    result = mailstack(deployed, "deploy")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no changes: the hosts already match the site" in result.stdout
    assert "changed=0" in result.stdout


def test_check_mode_reports_no_changes(deployed):
    result = mailstack(deployed, "deploy", "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no changes needed" in result.stdout


def test_new_user_is_usable_after_a_fast_accounts_deploy(deployed):
    assert mailstack(deployed, "user", "add", "bob@sandbox.test", "--password-stdin",
                     input=PASSWORD + "\n").returncode == 0
    started = time.monotonic()
    result = mailstack(deployed, "deploy", "--tags", "accounts")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"deploy --tags accounts: {elapsed:.1f} s")
    ip = sandbox.sandbox_status().ip
    imap_login(ip, "bob@sandbox.test").logout()
    # Removing the user takes the login away again.
    assert mailstack(deployed, "user", "remove", "bob@sandbox.test").returncode == 0
    assert mailstack(deployed, "deploy", "--tags", "accounts").returncode == 0
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(ip, "bob@sandbox.test")


def _with_inventory(site: Path, old: str, new: str):
    path = site / "inventories/production/hosts.yml"
    original = path.read_text()
    assert old in original
    path.write_text(original.replace(old, new))
    return path, original


def test_unreachable_host_is_named(deployed):
    path, original = _with_inventory(deployed, "ansible_port: 22", "ansible_port: 2")
    try:
        result = mailstack(deployed, "deploy", timeout=120)
    finally:
        path.write_text(original)
    assert result.returncode == 1
    assert "mail.sandbox.test" in result.stderr
    assert "cannot reach root@" in result.stderr and ":2 over SSH" in result.stderr
    assert "Traceback" not in result.stderr


def test_ssh_auth_failure_is_named(deployed, tmp_path):
    other_key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)],
                   check=True)
    key = str(sandbox.sandbox_status().ssh_key)
    # deploy keeps SSH master connections for 60 s (ControlPersist): end them, or the
    # already-authenticated connection would be reused and the new key never tried. Only
    # this site's (its own control path directory): other sites' deploys may be running.
    own = str(control_path_dir(deployed))
    masters = subprocess.run(["pgrep", "-f", rf"{re.escape(own)}/.*\[mux\]"],
                             capture_output=True, text=True, check=False).stdout.split()
    for pid in masters:
        subprocess.run(["kill", pid], check=False)
    time.sleep(0.5)
    path, original = _with_inventory(deployed, key, str(other_key))
    try:
        result = mailstack(deployed, "deploy", timeout=120)
    finally:
        path.write_text(original)
    assert result.returncode == 1
    assert "SSH authentication failed for root@" in result.stderr
    assert "ansible_ssh_private_key_file" in result.stderr


def test_wrong_vault_password_stops_before_touching_the_host(deployed, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    result = mailstack(deployed, "--vault-password-file", str(wrong), "deploy")
    assert result.returncode == 1
    assert "cannot decrypt" in result.stderr and "wrong password" in result.stderr


# --- encrypted storage: locked on boot, unlocked over SSH, no mail lost --------------------


def _restart_host(site: Path) -> str:
    subprocess.run(["docker", "restart", sandbox.CONTAINER], check=True, capture_output=True)
    up = mailstack(None, "sandbox", "up", str(site))  # re-points the inventory if the IP moved
    assert up.returncode == 0, up.stderr
    return sandbox.sandbox_status().ip


def test_store_is_encrypted_on_disk(deployed):
    token = f"cleartext-probe-{time.time_ns()}"
    ip = sandbox.sandbox_status().ip
    send(ip, ALICE, [token])
    wait_for_subjects(ip, ALICE, [token], timeout=20)
    through_mount = subprocess.run(
        ["docker", "exec", sandbox.CONTAINER, "grep", "-rl", token, "/var/mail/vhosts"],
        capture_output=True, text=True, check=False)
    raw = subprocess.run(
        ["docker", "exec", sandbox.CONTAINER, "grep", "-rl", token, "/var/mail/vhosts.crypt"],
        capture_output=True, text=True, check=False)
    assert through_mount.stdout.strip(), "the token must be readable through the mount"
    assert raw.returncode == 1 and raw.stdout == "", f"clear text on disk: {raw.stdout}"


def test_reboot_locks_the_store_and_unlock_delivers_every_message_once(deployed):
    ip = _restart_host(deployed)
    status = mailstack(deployed, "status")
    assert status.returncode == 2, status.stdout + status.stderr  # locked: critical
    assert "LOCKED" in status.stdout and "dovecot inactive" in status.stdout
    subjects = [f"sent-while-locked-{i}-{time.time_ns()}" for i in range(5)]
    send(ip, ALICE, subjects)  # accepted (250) and sealed at once: nothing bounced
    queued = mailstack(deployed, "status")
    assert "queue 0; sealed 5;" in queued.stdout, queued.stdout
    # The locked mountpoint is empty and closed: it can never pass for a mailbox.
    listing = subprocess.run(["docker", "exec", sandbox.CONTAINER, "ls", "-A",
                              "/var/mail/vhosts"], capture_output=True, text=True, check=False)
    assert listing.stdout == ""

    # A deploy while locked stops with a clear message and changes nothing.
    refused = mailstack(deployed, "deploy", timeout=300)
    assert refused.returncode == 1
    assert "is locked" in refused.stderr and "mailstack unlock" in refused.stderr

    wrong = mailstack(deployed, "unlock", "--passphrase-stdin", input="not the passphrase\n")
    assert wrong.returncode == 1
    assert "wrong passphrase; the store stays locked" in wrong.stderr
    assert "LOCKED" in mailstack(deployed, "status").stdout

    unlocked = mailstack(deployed, "unlock")
    assert unlocked.returncode == 0, unlocked.stderr
    assert "delivered 5 queued message(s)" in unlocked.stdout
    assert_each_once(imap_subjects(ip, ALICE), subjects)
    after = mailstack(deployed, "status").stdout
    assert "unlocked; queue 0" in after and "dovecot active" in after


def _systemctl(action: str, unit: str) -> None:
    subprocess.run(["docker", "exec", sandbox.CONTAINER, "systemctl", action, unit], check=True,
                   capture_output=True)


def test_database_down_means_4xx_then_delivered_once(deployed):
    import smtplib

    ip = sandbox.sandbox_status().ip
    subject = f"db-down-{time.time_ns()}"
    _systemctl("stop", "mariadb")
    try:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            send(ip, ALICE, [subject])
        code = refused.value.recipients[ALICE][0]
        assert 400 <= code < 500, refused.value.recipients  # the sender retries later
    finally:
        _systemctl("start", "mariadb")
    # The sender retries (Postfix's mysql client itself waits retry_interval = 60 s before
    # it tries a failed server again); bounded like any sender's retry schedule.
    deadline = time.monotonic() + 100
    while True:
        try:
            send(ip, ALICE, [subject])
            break
        except smtplib.SMTPRecipientsRefused as exc:
            code = exc.recipients[ALICE][0]
            assert 400 <= code < 500 and time.monotonic() < deadline, exc.recipients
            time.sleep(5)
    assert_each_once(wait_for_subjects(ip, ALICE, [subject]), [subject])


def test_milter_down_means_4xx_never_unsigned_mail(deployed):
    import smtplib

    ip = sandbox.sandbox_status().ip
    subject = f"dkim-down-{time.time_ns()}"
    message = (f"From: alice@sandbox.test\r\nTo: alice@sandbox.test\r\nSubject: {subject}\r\n"
               f"\r\nsigned or nothing\r\n")

    def submit() -> None:
        with smtplib.SMTP(ip, 587, timeout=20, local_hostname="client.test") as smtp:
            smtp.starttls(context=tls_context())
            smtp.login(ALICE, PASSWORD)
            smtp.sendmail(ALICE, [ALICE], message)

    _systemctl("stop", "opendkim")
    try:
        with pytest.raises(smtplib.SMTPResponseException) as refused:
            submit()
        assert 400 <= refused.value.smtp_code < 500, refused.value
    finally:
        _systemctl("start", "opendkim")
    submit()
    assert_each_once(wait_for_subjects(ip, ALICE, [subject]), [subject])
    imap = imap_login(ip, ALICE)
    try:
        imap.select("INBOX")
        _, data = imap.search(None, "SUBJECT", f'"{subject}"')
        _, fetched = imap.fetch(data[0].split()[0], "(BODY.PEEK[HEADER])")
        assert b"DKIM-Signature:" in fetched[0][1]
    finally:
        imap.logout()


def test_etrn_is_refused(deployed):
    """Nobody outside may make the server flush its queue for a domain."""
    import smtplib

    with smtplib.SMTP(sandbox.sandbox_status().ip, 25, timeout=20,
                      local_hostname="client.test") as smtp:
        smtp.ehlo()
        code, reply = smtp.docmd("ETRN", "sandbox.test")
        assert code >= 500, reply
