"""The spam filter on a real host, against real outside senders and real DNS (offline).

A stack-image host and the internet in a box on one test network. The box publishes the
site's records (`mailstack dns --format json`) and three outside domains: good.test (SPF,
DKIM and DMARC p=reject, all passing from the box's sender), spoof.test (p=reject, the
sender is not allowed by its SPF) and junk.test (the same with p=quarantine). The host's
unbound forwards to the box. Real swaks, real rspamd, Redis, Dovecot Sieve.

Every message is counted: refused ones are refused at SMTP time (the sender knows), the
others arrive exactly once.
"""

from __future__ import annotations

import base64
import email
import email.utils
import json
import re
import secrets
import smtplib
import time
from collections.abc import Callable
from dataclasses import dataclass

import dkim
import pytest
import testbed
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from testbed.internet import sender_domain, write_file

from mailstack.verify.probes import GTUBE

from .helpers import (
    PASSWORD,
    BoxedHost,
    edit_config,
    fetch,
    host_in_a_box,
    imap_login,
    mailstack,
    message,
    tls_context,
)

pytestmark = pytest.mark.testbed
DOMAIN = "spam.test"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"  # the rate-limit test's user: his bucket is his alone
CAROL = f"carol@{DOMAIN}"  # the From: header test's
HOURLY_LIMIT = 5
GREYLIST_SECONDS = 10
SELECTOR = "s1"
# The controller's socket (rspamd's group only) and its web interface (password only).
CONTROLLER = "/run/rspamd/controller.sock"
WEB_UI = "127.0.0.1:11334"


@dataclass
class Bed(BoxedHost):
    """The deployed host, the box, and the DKIM key good.test publishes."""

    key_pem: bytes = b""

    @property
    def sender(self):
        return self.internet.sender

    def run(self, *cmd: str, check: bool = True):
        return testbed.exec_in(self.name, list(cmd), check=check)

    def send_outside(self, text: str, *, mail_from: str, to: str = ALICE, helo: str = "mx.good.test"):
        """swaks from the box's sender on port 25 with this exact message."""
        path = f"/tmp/msg-{secrets.token_hex(4)}.eml"
        write_file(self.sender.host.name, path, text)
        return self.sender.swaks(self.ip, to=to, mail_from=mail_from, helo=helo,
                                 args=["--data", f"@{path}"])

    def learned(self) -> dict[str, int]:
        """rspamd's Bayes counters, as it keeps them in Redis: messages learned as spam and
        as ham (`rspamc stat` shows them only after its periodic refresh)."""
        out = self.run("redis-cli", "hmget", "RS", "learns_spam", "learns_ham").stdout.splitlines()
        spam, ham = (int(v) if v.strip() else 0 for v in out)  # a missing counter prints empty
        return {"spam": spam, "ham": ham}


def signed(subject: str, key_pem: bytes, sender: str = "news@good.test") -> str:
    """A message from good.test, DKIM-signed with the key its DNS publishes."""
    text = message(subject, ALICE, sender) + "\r\n".join(
        f"Line {i} of a perfectly ordinary newsletter about gardening." for i in range(8)) + "\r\n"
    signature = dkim.sign(text.encode(), SELECTOR.encode(), b"good.test", key_pem,
                          include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return signature.decode() + text


def outside_domains(key_pem: bytes) -> Callable[[BoxedHost], None]:
    """Publish the site's records and the outside domains in the box (before the deploy)."""
    private = serialization.load_pem_private_key(key_pem, password=None)
    public = base64.b64encode(private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()

    def publish(bed: BoxedHost) -> None:
        records = mailstack(bed.site, "dns", "--format", "json")
        assert records.returncode == 0, records.stderr
        bed.internet.publish(testbed.site_records(records.stdout.replace("203.0.113.7", bed.ip)))
        bed.internet.publish(sender_domain("good.test", bed.internet.sender.host.ip,
                                           dkim=(SELECTOR, public)))
        # Domains whose SPF allows only another address (no PTR: not the box's network).
        for domain, policy in (("spoof.test", "reject"), ("junk.test", "quarantine")):
            bed.internet.publish([r for r in sender_domain(domain, "192.0.2.1", host="mail",
                                                           dmarc=f"v=DMARC1; p={policy}")
                                  if r.type != "PTR"])
    return publish


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    key_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption())
    edits = (("    greylist_score: 4\n", "    greylist_score: null\n"),
             ("    user_hourly_limit: 200\n", f"    user_hourly_limit: {HOURLY_LIMIT}\n"),
             ("    threshold: 3\n", "    threshold: 3\n    lists: [{zone: bl.test, weight: 3, "
                                  "answers: 127.0.0.2}]\n"))
    with host_in_a_box("spam", tmp_path_factory.mktemp("spam") / "site", DOMAIN, [ALICE, BOB, CAROL],
                       edits=edits, before_deploy=outside_domains(key_pem)) as host:
        yield Bed(**vars(host), key_pem=key_pem)


def submit(user: str, ip: str, subject: str, body: str = "hello") -> tuple[int, str]:
    """Send as the user on 587 (STARTTLS, AUTH); the server's answer to the message."""
    with smtplib.SMTP(ip, 587, timeout=30) as smtp:
        smtp.starttls(context=tls_context())
        smtp.login(user, PASSWORD)
        text = message(subject, ALICE, user).replace(f"body of {subject}", body)
        try:
            smtp.sendmail(user, [ALICE], text)
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error.decode()
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            return code, text.decode()
    return 250, "accepted"


def smtp_code(transcript: str) -> int:
    """The server's answer to the message's data, from swaks's transcript."""
    answers = re.findall(r"^<[-~*]{1,2} +(\d{3})[ -]", transcript, re.M)
    return int(answers[-2]) if len(answers) >= 2 else 0  # the last one answers QUIT


def test_the_filter_and_its_resolver_run(bed) -> None:
    for unit in ("rspamd", "redis-server", "unbound"):
        assert bed.run("systemctl", "is-active", unit).stdout.strip() == "active", unit
    # The host resolves the box's names through its own unbound.
    assert bed.run("getent", "hosts", "mx.good.test").stdout.split()[0] == bed.sender.host.ip


def test_status_shows_the_filter_and_the_resolver_answering(bed) -> None:
    status = mailstack(bed.site, "status")
    assert status.returncode == 0, status.stderr
    for expected in ("rspamd active", "redis-server active", "unbound active",
                     "spam filter: answers", "resolver: answers",
                     "blocklist bl.test: lists its test entry",  # the box's test list
                     "bans: fail2ban not running"):  # this host has no CAP_NET_ADMIN
        assert expected in status.stdout, status.stdout


def test_verify_checks_the_host_over_ssh(bed) -> None:
    result = mailstack(bed.site, "verify", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    for name in ("spam filter answers on the host", "host's resolver resolves its own name",
                 "DNS blocklist bl.test answers", "spam filter refuses GTUBE"):
        assert checks[name]["passed"], checks[name]
    # This host has no CAP_NET_ADMIN, so no bans: verify says so (and fails) rather than
    # passing a server that cannot ban.
    jails = checks["brute-force ban jails active"]
    assert not jails["passed"] and "CAP_NET_ADMIN" in jails["detail"], jails
    assert [n for n, c in checks.items() if not c["passed"]] == ["brute-force ban jails active"]
    assert result.returncode != 0
    # The deploy said so too, as warnings the user sees (not debug lines shown nowhere).
    assert "no brute-force bans: this container lacks CAP_NET_ADMIN" in bed.deployed.stderr
    assert "no firewall loaded: this container lacks CAP_NET_ADMIN" in bed.deployed.stderr


# The first tests that connect from the outside sender: postscreen remembers a client that
# passed its tests and lets it straight through afterwards.

PREGREET = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 25), timeout=20)
s.sendall(b"EHLO mx.good.test\r\n")  # before the server's greeting: what bots do
f = s.makefile("rb")
def answer():
    while True:
        line = f.readline().decode()
        if line[3:4] != "-":
            return line
answer()  # the greeting (what was sent before it is not answered)
for command in ("EHLO mx.good.test", "MAIL FROM:<news@good.test>", "RCPT TO:<" + sys.argv[2] + ">"):
    s.sendall(command.encode() + b"\r\n")
    reply = answer()
print(reply.strip())
"""


def test_a_client_that_talks_first_is_refused(bed) -> None:
    out = testbed.exec_in(bed.sender.host.name, ["python3", "-c", PREGREET, bed.ip, ALICE]).stdout
    assert out.startswith("550"), out


def unbound_forgets(bed: Bed, zone: str) -> None:
    bed.run("unbound-control", "flush_zone", zone)
    bed.run("unbound-control", "flush_negative")


def test_a_blocklisted_client_is_refused_and_a_clean_one_passes(bed) -> None:
    subject = f"listed {secrets.token_hex(4)}"
    bed.internet.block(bed.sender.host.ip)
    try:
        unbound_forgets(bed, "bl.test")
        sent = bed.send_outside(signed(subject, bed.key_pem), mail_from="news@good.test")
        assert smtp_code(sent.stdout) == 550, sent.stdout[-2000:]
        assert "blocked using bl.test" in sent.stdout, sent.stdout[-2000:]
    finally:
        bed.internet.unblock(bed.sender.host.ip)
        unbound_forgets(bed, "bl.test")
    assert fetch(bed.ip, ALICE, subject, timeout=2) == []
    sent = bed.send_outside(signed(subject, bed.key_pem), mail_from="news@good.test")
    assert sent.returncode == 0, sent.stdout[-2000:]
    assert len(fetch(bed.ip, ALICE, subject)) == 1


def test_legitimate_outside_mail_reaches_the_inbox_with_passing_results(bed) -> None:
    subject = f"newsletter {secrets.token_hex(4)}"
    sent = bed.send_outside(signed(subject, bed.key_pem), mail_from="news@good.test")
    assert sent.returncode == 0, sent.stdout[-2000:]
    (raw,) = fetch(bed.ip, ALICE, subject)
    results = " ".join(email.message_from_bytes(raw).get_all("Authentication-Results") or [])
    for check in ("dkim=pass", "spf=pass", "dmarc=pass"):
        assert check in results, (raw.decode(errors="replace")[:1500]
                                  + bed.run("tail", "-n", "25", "/var/log/rspamd/rspamd.log").stdout
                                  + bed.run("cat", "/etc/rspamd/local.d/milter_headers.conf").stdout)


def test_a_spoofed_domain_with_p_reject_is_refused(bed) -> None:
    subject = f"spoof {secrets.token_hex(4)}"
    sent = bed.send_outside(message(subject, ALICE, "ceo@spoof.test"), mail_from="ceo@spoof.test")
    assert smtp_code(sent.stdout) // 100 == 5, sent.stdout[-2000:]
    assert fetch(bed.ip, ALICE, subject, timeout=3) == []


def test_a_spoofed_domain_with_p_quarantine_goes_to_junk(bed) -> None:
    subject = f"quarantined {secrets.token_hex(4)}"
    sent = bed.send_outside(message(subject, ALICE, "billing@junk.test"), mail_from="billing@junk.test")
    assert sent.returncode == 0, sent.stdout[-2000:]
    (raw,) = fetch(bed.ip, ALICE, subject, folder="Junk")
    assert email.message_from_bytes(raw)["X-Spam"] == "Yes"
    assert fetch(bed.ip, ALICE, subject, timeout=1) == []


def test_gtube_is_refused_from_outside_and_from_our_own_users(bed) -> None:
    subject = f"gtube {secrets.token_hex(4)}"
    text = message(subject, ALICE, "news@good.test").replace(f"body of {subject}", GTUBE)
    sent = bed.send_outside(text, mail_from="news@good.test")
    assert smtp_code(sent.stdout) // 100 == 5, sent.stdout[-2000:]
    code, answer = submit(ALICE, bed.ip, subject + " submitted", GTUBE)
    assert code // 100 == 5, answer
    assert fetch(bed.ip, ALICE, subject, timeout=3) == []


def test_rspamd_down_means_try_again_later_and_nothing_lost(bed) -> None:
    subject = f"while rspamd was down {secrets.token_hex(4)}"
    text = signed(subject, bed.key_pem)
    bed.run("systemctl", "stop", "rspamd")
    try:
        refused = bed.send_outside(text, mail_from="news@good.test")
        assert smtp_code(refused.stdout) // 100 == 4, refused.stdout[-2000:]
    finally:
        bed.run("systemctl", "start", "rspamd")
    deadline = time.monotonic() + 60
    while (retry := bed.send_outside(text, mail_from="news@good.test")).returncode != 0:
        assert time.monotonic() < deadline, retry.stdout[-2000:]  # rspamd still starting
        time.sleep(2)
    assert len(fetch(bed.ip, ALICE, subject)) == 1


def test_mail_flows_without_redis(bed) -> None:
    subject = f"while redis was down {secrets.token_hex(4)}"
    bed.run("systemctl", "stop", "redis-server")
    try:
        sent = bed.send_outside(signed(subject, bed.key_pem), mail_from="news@good.test")
        assert sent.returncode == 0, sent.stdout[-2000:]
        assert len(fetch(bed.ip, ALICE, subject)) == 1
    finally:
        bed.run("systemctl", "start", "redis-server")


def _words(seed: str) -> str:
    # Enough distinct words for Bayes to take the message (it skips very short ones).
    return " ".join(f"{seed}{i} offer{i} winner{i} prize{i}" for i in range(20))


def test_moving_mail_into_and_out_of_junk_teaches_rspamd(bed) -> None:
    n = 3
    tag = secrets.token_hex(3)
    imap = imap_login(bed.ip, ALICE)
    try:
        for i in range(n):
            text = message(f"learn {tag} {i}", ALICE, "someone@good.test").replace(
                f"body of learn {tag} {i}", _words(f"{tag}x{i}"))
            imap.append("INBOX", None, None, text.encode())
        imap.select("INBOX")
        _, data = imap.uid("SEARCH", None, "SUBJECT", f'"learn {tag}"')
        uids = data[0].decode().replace(" ", ",")
        before = bed.learned()
        assert imap.uid("MOVE", uids, "Junk")[0] == "OK"
        after_junk = bed.learned()
        assert after_junk["spam"] - before["spam"] == n, (before, after_junk)

        imap.select("Junk")
        _, data = imap.uid("SEARCH", None, "SUBJECT", f'"learn {tag}"')
        first, *rest = data[0].decode().split()
        assert imap.uid("MOVE", ",".join(rest), "INBOX")[0] == "OK"
        after_ham = bed.learned()
        assert after_ham["ham"] - after_junk["ham"] == len(rest), (after_junk, after_ham)
        # Deleting spam (Junk -> Trash) teaches nothing.
        assert imap.uid("MOVE", first, "Trash")[0] == "OK"
        assert bed.learned() == after_ham
    finally:
        imap.logout()


def test_a_user_past_the_hourly_limit_is_told_to_wait(bed) -> None:
    answers = [submit(BOB, bed.ip, f"limit {i} {secrets.token_hex(3)}")[0]
               for i in range(HOURLY_LIMIT + 1)]
    assert answers[:HOURLY_LIMIT] == [250] * HOURLY_LIMIT, answers
    assert answers[HOURLY_LIMIT] // 100 == 4, answers
    # Alice's bucket is her own.
    assert submit(ALICE, bed.ip, f"alice is fine {secrets.token_hex(3)}")[0] == 250


def test_a_user_sends_only_under_their_own_from_header(bed) -> None:
    """Postfix checks the envelope sender against the login; the From: header people see
    (and DKIM signs) must be that same address. Carol's own rate-limit bucket."""
    refused = []
    for header, expected in ((CAROL, 250), (ALICE, 554), (f"{CAROL}, {ALICE}", 554),
                             (f'"Carol" <{CAROL.upper()}>', 250)):
        subject = f"from {secrets.token_hex(4)}"
        with smtplib.SMTP(bed.ip, 587, timeout=30) as smtp:
            smtp.starttls(context=tls_context())
            smtp.login(CAROL, PASSWORD)
            try:
                smtp.sendmail(CAROL, [CAROL], message(subject, CAROL, header))
                code, said = 250, ""
            except smtplib.SMTPDataError as exc:
                code, said = exc.smtp_code, exc.smtp_error.decode()
        assert code == expected, (header, code, said)
        if code == 250:
            assert len(fetch(bed.ip, CAROL, subject)) == 1
        else:
            assert "From: header must be your own address" in said, said
            refused.append(subject)
    for subject in refused:
        assert fetch(bed.ip, CAROL, subject, timeout=0) == []


def test_verify_style_probe_scans_from_the_host(bed) -> None:
    out = bed.run("sh", "-c", f"printf 'Subject: probe\\n\\n%s\\n' '{GTUBE}' | rspamc -h {CONTROLLER}").stdout
    assert "Action: reject" in out, out
    stats = json.loads(bed.run("rspamc", "-h", CONTROLLER, "-j", "stat").stdout)
    assert stats.get("scanned", 0) > 0, stats


def ui_stat(bed: Bed, *password: str):
    """`rspamc stat` against the web interface's port, from loopback: where an SSH tunnel
    comes from, so being local must not be enough."""
    done = bed.run("rspamc", "-h", WEB_UI, *(("-P", *password) if password else ()), "stat",
                   check=False)
    return done.stdout + done.stderr


def test_web_interface_takes_only_the_vault_password(bed) -> None:
    shown = mailstack(bed.site, "spam", "password")
    assert shown.returncode == 0, shown.stderr
    password = shown.stdout.strip()
    assert "401" in ui_stat(bed)
    assert "401" in ui_stat(bed, "q1"), "rspamd's stock password must not work"
    assert "Messages scanned" in ui_stat(bed, password)
    page = bed.run("python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                   f"'http://{WEB_UI}/').read().decode())").stdout
    assert "<title>Rspamd Web Interface</title>" in page, page[:500]
    # The controller socket trusts whoever connects: only rspamd's group may.
    denied = bed.run("runuser", "-u", "nobody", "--", "rspamc", "--connect", CONTROLLER, "stat",
                     check=False)
    assert denied.returncode != 0 and "Permission denied" in denied.stdout + denied.stderr


def test_a_new_web_interface_password_replaces_the_old_one(bed) -> None:
    old = mailstack(bed.site, "spam", "password").stdout.strip()
    made = mailstack(bed.site, "spam", "password", "--new")
    assert made.returncode == 0, made.stderr
    new = made.stdout.strip()
    assert new and new != old
    assert mailstack(bed.site, "spam", "password").stdout.strip() == new
    deployed = mailstack(bed.site, "deploy")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "401" in ui_stat(bed, old)
    assert "Messages scanned" in ui_stat(bed, new)


def test_greylisting_defers_the_first_attempt_and_takes_the_retry(bed) -> None:
    """Last: it redeploys with every outside message greylisted (greylist_score far below
    any real score) and a test-sized delay."""
    edit_config(bed.site, ("    greylist_score: null\n", "    greylist_score: -100\n"),
                ("    greylist_delay: 5m\n", f"    greylist_delay: {GREYLIST_SECONDS}s\n"))
    deployed = mailstack(bed.site, "deploy")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    subject = f"greylisted {secrets.token_hex(4)}"
    text = signed(subject, bed.key_pem)
    first = bed.send_outside(text, mail_from="news@good.test")
    assert smtp_code(first.stdout) // 100 == 4, first.stdout[-2000:]
    early = bed.send_outside(text, mail_from="news@good.test")
    assert smtp_code(early.stdout) // 100 == 4, "a retry before the delay is deferred too"
    time.sleep(GREYLIST_SECONDS + 2)
    retry = bed.send_outside(text, mail_from="news@good.test")
    assert retry.returncode == 0, retry.stdout[-2000:]
    assert len(fetch(bed.ip, ALICE, subject)) == 1
