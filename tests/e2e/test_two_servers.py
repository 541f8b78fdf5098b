"""Mail between two mailstack servers, the MTA's real job, in one internet in a box.

Two sites made by `mailstack init` and deployed by `mailstack deploy`: mail.first.test and
mail.second.test, their records published in the box's DNS exactly as `mailstack dns` prints
them. Both get their certificate from the box's ACME CA (pebble), whose root each host trusts
as hosts trust Let's Encrypt's: each serves its MTA-STS policy in mode enforce over it, so
each verifies the other when it sends (MTA-STS, no DNSSEC needed). first's options.queue is
shortened (warn after WARN_AFTER, bounce after LIFETIME). A relay host in the box (Postfix
with SASL over TLS, tests/testbed/relay.py) plays SES. In order:

1. alice@first writes to carol@second through 587: delivered over SMTP with verified TLS;
   the receiver's Authentication-Results says dkim, spf and dmarc pass. carol's reply goes
   the other way the same, and alice's mail client threads it under her message.
2. second's Postfix is down: the message waits in first's queue, and arrives once after.
3. second stays down: alice gets a delay warning after WARN_AFTER, then the bounce after
   LIFETIME, never earlier, both DKIM-signed by first.test (dkimpy, keys from the box's DNS).
4. second sends through the relay (`mailstack relay set`): authenticated there, verified
   TLS to it, delivered. A wrong relay password: the mail waits with the relay's 535 and
   `mailstack status` says what to do; the right one, deployed, delivers it once.
5. Every message sent is accounted for: delivered exactly once, or bounced with its notices.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import json
import re
import smtplib
import time
from dataclasses import dataclass, field
from email.message import EmailMessage

import dkim
import dns.resolver
import pytest
import testbed
from testbed.acme import AcmeCA
from testbed.relay import Smarthost

from mailstack.render.context import RSPAMD

from .helpers import (
    PASSWORD,
    BoxedHost,
    SiteSpec,
    assert_each_once,
    edit_config,
    fetch,
    fetch_matching,
    hosts_in_a_box,
    imap_login,
    imap_subjects,
    mailstack,
    tls_context,
)

pytestmark = pytest.mark.testbed
FIRST, SECOND = "first.test", "second.test"
ALICE, CAROL = f"alice@{FIRST}", f"carol@{SECOND}"
WARN_AFTER, LIFETIME = 10, 40  # first's options.queue, in seconds
ACME_EDITS = (("certificate: self-signed", "certificate: acme"),
              ("acme_directory: https://acme-v02.api.letsencrypt.org/directory",
               "acme_directory: https://acme.test:14000/dir"))


@dataclass
class Two:
    first: BoxedHost
    second: BoxedHost
    # What each mailbox must hold exactly once by the end (test 5), and what bounced.
    sent: dict[str, list[str]] = field(default_factory=dict)
    bounced: list[str] = field(default_factory=list)
    alice_message: EmailMessage | None = None  # test 1's, which carol answers

    def expect(self, mailbox: str, subject: str) -> None:
        self.sent.setdefault(mailbox, []).append(subject)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    queue = ("    delay_warning_time: 4h\n    maximal_queue_lifetime: 5d\n    bounce_queue_lifetime: 5d\n",
             f"    delay_warning_time: {WARN_AFTER}s\n    maximal_queue_lifetime: {LIFETIME}s\n"
             f"    bounce_queue_lifetime: {LIFETIME}s\n")
    specs = [SiteSpec(root / "first", FIRST, [ALICE], (*ACME_EDITS, queue)),
             SiteSpec(root / "second", SECOND, [CAROL], ACME_EDITS)]

    def before_deploy(beds: list[BoxedHost]) -> None:
        for bed in beds:
            publish_site(bed)
        ca = AcmeCA(beds[0].internet).start()
        for bed in beds:
            ca.trust_on(bed.name)
            ca.trust_issued_on(bed.name)

    started = time.monotonic()
    with hosts_in_a_box("two", specs, before_deploy=before_deploy) as (first, second):
        print(f"two hosts deployed in {time.monotonic() - started:.0f} s")
        for bed in (first, second):
            assert "no certificate from the CA yet" not in bed.deployed.stderr, bed.deployed.stderr
        yield Two(first, second)


@pytest.fixture(scope="module")
def relay(two):
    with Smarthost(two.first.internet) as relay:
        yield relay


# --------------------------------------------------------------------------- helpers


def publish_site(bed: BoxedHost) -> None:
    """The site's records, as `mailstack dns --format json` prints them, live in the box."""
    records = mailstack(bed.site, "dns", "--format", "json")
    assert records.returncode == 0, records.stderr
    bed.internet.publish(testbed.site_records(records.stdout))


def run(bed: BoxedHost, *cmd: str, check: bool = True):
    return bed.run(*cmd, check=check)


def postfix_log(bed: BoxedHost) -> str:
    return run(bed, "journalctl", "-u", "postfix@-", "--no-pager", "-o", "cat").stdout


def queue(bed: BoxedHost) -> dict[str, dict]:
    """Postfix's queue (postqueue -j), by queue id."""
    entries = [json.loads(line) for line in run(bed, "postqueue", "-j").stdout.splitlines() if line]
    return {e["queue_id"]: e for e in entries}


def deferred(bed: BoxedHost, qid: str) -> dict | None:
    """The message's entry while it waits in the deferred queue."""
    entry = queue(bed).get(qid)
    return entry if entry and entry["queue_name"] == "deferred" else None


def compose(sender: str, to: str, subject: str, *, cc: str | None = None,
            reply_to: EmailMessage | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    if cc:
        msg["Cc"] = cc
    msg["Date"] = email.utils.formatdate()
    msg["Message-ID"] = email.utils.make_msgid(domain=sender.split("@")[1])
    if reply_to is not None:
        msg["In-Reply-To"] = reply_to["Message-ID"]
        msg["References"] = reply_to["Message-ID"]
    msg.set_content(f"body of {subject}\n")
    return msg


def submit(bed: BoxedHost, user: str, msg: EmailMessage) -> str:
    """Send as the user through 587 (STARTTLS, AUTH) with smtplib; the queue id Postfix gave
    the message (its 250 answer to DATA)."""
    with smtplib.SMTP(bed.ip, 587, timeout=30, local_hostname="laptop.example.test") as smtp:
        smtp.starttls(context=tls_context())
        smtp.login(user, PASSWORD)
        smtp.mail(user)
        for rcpt in [a for h in ("To", "Cc") for _, a in email.utils.getaddresses(msg.get_all(h, []))]:
            code, said = smtp.rcpt(rcpt)
            assert code == 250, (rcpt, code, said)
        code, said = smtp.data(msg.as_bytes())
        assert code == 250, said
    return said.decode().rsplit(" ", 1)[-1]


def wait_for(condition, what: str, timeout: float = 60, every: float = 1):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)
    return found


def delivery(bed: BoxedHost, qid: str, rcpt: str) -> str:
    """The log line of the queue id's delivery to rcpt (waits until there is one)."""
    pattern = re.compile(rf"^{qid}: to=<{re.escape(rcpt)}>, relay=.*status=sent", re.M)
    return wait_for(lambda: (m := pattern.search(postfix_log(bed))) and m.group(0),
                    f"{qid} delivered to {rcpt}", timeout=60)


def results(raw: bytes, authserv: str) -> str:
    """The Authentication-Results header the receiving host (authserv) wrote."""
    found = [h for h in email.message_from_bytes(raw).get_all("Authentication-Results") or []
             if h.strip().startswith(authserv + ";")]
    assert len(found) == 1, found
    return " ".join(found[0].split())


def assert_authenticated(raw: bytes, authserv: str, domain: str, sender: str) -> None:
    said = results(raw, authserv)
    assert re.search(rf"\bdkim=pass header\.d={re.escape(domain)}\b", said), said
    assert re.search(rf"\bspf=pass .*smtp\.mailfrom={re.escape(sender)}\b", said), said
    assert re.search(rf"\bdmarc=pass .*header\.from={re.escape(domain)}\b", said), said


def box_dkim(bed: BoxedHost, raw: bytes) -> bytes:
    """The d= of the message's DKIM signature, checked by dkimpy with the key the box's DNS
    publishes (as any receiver would find it); fails if the signature does not verify."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [bed.internet.resolver_ip]

    def txt(name: bytes, timeout: int = 5) -> bytes:
        answer = resolver.resolve(name.decode(), "TXT", lifetime=timeout)
        return b"".join(answer[0].strings)

    verifier = dkim.DKIM(raw)
    assert verifier.verify(dnsfunc=txt), "the DKIM signature does not verify"
    return verifier.domain


def notices(bed: BoxedHost, user: str, qid: str) -> list[email.message.Message]:
    """The delivery status notifications in the user's INBOX about one queue id."""
    raws = fetch_matching(bed.ip, user, ("FROM", "MAILER-DAEMON", "TEXT", qid), timeout=0,
                          keep=lambda raw: qid.encode() in raw)  # the index matches words: check
    return [email.message_from_bytes(r, policy=email.policy.compat32) for r in raws]


def dsn_action(notice: email.message.Message) -> str:
    """The Action: of a DSN's per-recipient fields (delayed, failed)."""
    for part in notice.walk():
        if part.get_content_type() == "message/delivery-status":
            for fields in part.get_payload():
                if fields.get("Action"):
                    return fields["Action"]
    raise AssertionError("no message/delivery-status part")


def verified_tls_to(bed: BoxedHost, host: str) -> list[str]:
    return re.findall(rf"^Verified TLS connection established to {re.escape(host)}\[.*$",
                      postfix_log(bed), re.M)


def ttl_passed(bed: BoxedHost, zone: str) -> None:
    """As if the zone's TTL (an hour) had passed at a receiver: its resolver and rspamd (which
    keeps parsed SPF records as long, its workers anew at a reload) forget what they cached."""
    run(bed, "unbound-control", "flush_zone", zone)
    run(bed, "systemctl", "reload", "rspamd")
    time.sleep(2)  # the new workers take over
    wait_for(lambda: run(bed, "rspamc", "-h", RSPAMD["controller_socket"], "stat",
                         check=False).returncode == 0, "rspamd after its reload", timeout=30)


def receiver(bed: BoxedHost, up: bool) -> None:
    run(bed, "systemctl", "start" if up else "stop", "postfix@-")


# --------------------------------------------------------------------------- 1. both ways


def test_mail_goes_from_first_to_second_verified_and_authenticated(two):
    # first asks second's MTA-STS policy (over HTTPS, the CA's certificate) and gets enforce.
    maps = run(two.first, "postconf", "-h", "smtp_tls_policy_maps").stdout.strip()
    policy = run(two.first, "postmap", "-q", SECOND, maps).stdout
    assert policy.startswith(f"secure match=mail.{SECOND}"), policy

    subject = f"hello carol {time.time_ns()}"
    msg = compose(ALICE, CAROL, subject, cc=ALICE)  # a copy to herself, as a client keeps one
    qid = submit(two.first, ALICE, msg)
    two.expect(CAROL, subject)
    two.expect(ALICE, subject)
    line = delivery(two.first, qid, CAROL)
    assert f"relay=mail.{SECOND}[{two.second.ip}]:25" in line, line
    assert verified_tls_to(two.first, f"mail.{SECOND}"), "no verified TLS connection to second"
    [raw] = fetch(two.second.ip, CAROL, subject)
    assert_authenticated(raw, f"mail.{SECOND}", FIRST, ALICE)
    assert box_dkim(two.first, raw) == FIRST.encode()
    two.alice_message = msg


def test_carols_reply_goes_back_the_same_way_and_threads(two):
    original = two.alice_message
    subject = f"Re: {original['Subject']}"
    reply = compose(CAROL, ALICE, subject, reply_to=original)
    qid = submit(two.second, CAROL, reply)
    two.expect(ALICE, subject)
    line = delivery(two.second, qid, ALICE)
    assert f"relay=mail.{FIRST}[{two.first.ip}]:25" in line, line
    assert verified_tls_to(two.second, f"mail.{FIRST}"), "no verified TLS connection to first"
    [raw] = fetch(two.first.ip, ALICE, subject)
    assert_authenticated(raw, f"mail.{FIRST}", SECOND, CAROL)
    got = email.message_from_bytes(raw)
    assert got["In-Reply-To"] == got["References"] == original["Message-ID"]

    # alice's client sees carol's reply under her own message (RFC 5256 REFERENCES).
    imap = imap_login(two.first.ip, ALICE)
    try:
        _, capabilities = imap.capability()  # as logged in: THREAD is offered only then
        assert b"THREAD=REFERENCES" in capabilities[0].split(), capabilities
        imap.select("INBOX")
        seq = {}
        for key, msg_id in (("mine", original["Message-ID"]), ("reply", reply["Message-ID"])):
            _, data = imap.search(None, "HEADER", "Message-ID", f'"{msg_id}"')
            [seq[key]] = data[0].decode().split()
        _, threads = imap.thread("REFERENCES", "UTF-8", "ALL")
    finally:
        imap.logout()
    assert f"({seq['mine']} {seq['reply']})" in threads[0].decode(), threads


# --------------------------------------------------------------------------- 2. and 3. down


def test_a_receiver_that_is_down_gets_the_message_once_it_is_back(two):
    subject = f"while second is down {time.time_ns()}"
    receiver(two.second, up=False)
    try:
        qid = submit(two.first, ALICE, compose(ALICE, CAROL, subject))
        two.expect(CAROL, subject)
        entry = wait_for(lambda: deferred(two.first, qid), f"{qid} deferred", timeout=30)
        reason = entry["recipients"][0]["delay_reason"]
        assert f"mail.{SECOND}[{two.second.ip}]:25" in reason and "refused" in reason, reason
        assert subject not in imap_subjects(two.second.ip, CAROL)
    finally:
        receiver(two.second, up=True)
    run(two.first, "postqueue", "-f")
    delivery(two.first, qid, CAROL)
    assert_each_once(imap_subjects(two.second.ip, CAROL), [subject])
    assert qid not in queue(two.first)


def test_the_sender_is_warned_then_the_message_bounces_both_signed(two):
    subject = f"never arrives {time.time_ns()}"
    receiver(two.second, up=False)
    try:
        qid = submit(two.first, ALICE, compose(ALICE, CAROL, subject))
        two.bounced.append(subject)
        arrival = wait_for(lambda: queue(two.first).get(qid), f"{qid} queued")["arrival_time"]

        def warned():
            # Retry now (Postfix's own backoff is minutes): each try checks the warning
            # and the lifetime, as Postfix's retries do.
            run(two.first, "postqueue", "-i", qid)
            return notices(two.first, ALICE, qid)

        [warning] = wait_for(warned, "the delay warning", timeout=WARN_AFTER + 30, every=2)
        warned_at = email.utils.parsedate_to_datetime(warning["Date"]).timestamp()
        assert dsn_action(warning) == "delayed"
        # (qmgr warns up to a second early: `event_time() >= warn_time - 1`)
        assert arrival + WARN_AFTER - 1 <= warned_at < arrival + LIFETIME
        assert qid in queue(two.first), "bounced before its lifetime"

        def bounced():
            run(two.first, "postqueue", "-i", qid, check=False)
            found = notices(two.first, ALICE, qid)
            return len(found) > 1 and found

        _, bounce = wait_for(bounced, "the bounce", timeout=LIFETIME + 30, every=2)
        bounced_at = email.utils.parsedate_to_datetime(bounce["Date"]).timestamp()
        assert dsn_action(bounce) == "failed"
        assert bounced_at >= arrival + LIFETIME, "bounced before its lifetime"
        assert qid not in queue(two.first)
    finally:
        receiver(two.second, up=True)
    for notice in (warning, bounce):
        assert notice["From"] == f"Mail Delivery System <MAILER-DAEMON@{FIRST}>"
        assert subject in notice.as_string()
        assert box_dkim(two.first, notice.as_bytes()) == FIRST.encode()
    assert len(notices(two.first, ALICE, qid)) == 2  # one warning, one bounce: no more


# --------------------------------------------------------------------------- 4. relay host


def use_relay(two: Two, relay: Smarthost, password: str) -> None:
    """`mailstack relay set` on second, its SPF naming the relay's, published; deploy."""
    site = two.second.site
    done = mailstack(site, "relay", "set", relay.address, relay.username, "--password-stdin",
                     input=password + "\n")
    assert done.returncode == 0, done.stderr
    if "spf_include" not in (site / "mailstack.yml").read_text():
        edit_config(site, (f"    username: {relay.username}\n",
                           f"    username: {relay.username}\n    spf_include: spf.relay.test\n"))
        publish_site(two.second)
        ttl_passed(two.first, SECOND)
    deployed = mailstack(site, "deploy")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr


def test_mail_goes_through_the_relay_authenticated(two, relay):
    relay.trust_on(two.second.name)
    use_relay(two, relay, relay.password)
    subject = f"through the relay {time.time_ns()}"
    qid = submit(two.second, CAROL, compose(CAROL, ALICE, subject))
    two.expect(ALICE, subject)
    line = delivery(two.second, qid, ALICE)
    assert f"relay=relay.test[{relay.host.ip}]:587" in line, line
    assert verified_tls_to(two.second, "relay.test"), "no verified TLS connection to the relay"
    # The relay's own record of who logged in (its realm appended).
    login = (f"client=mail.{SECOND}[{two.second.ip}], sasl_method=PLAIN, "
             f"sasl_username={relay.username}@relay.test")
    assert login in relay.log(), relay.log()
    [raw] = fetch(two.first.ip, ALICE, subject)
    assert "relay.test" in " ".join(email.message_from_bytes(raw).get_all("Received"))
    assert_authenticated(raw, f"mail.{FIRST}", SECOND, CAROL)  # SPF: include:spf.relay.test


def test_a_wrong_relay_password_waits_and_status_says_so(two, relay):
    use_relay(two, relay, "not-the-password")
    subject = f"relay refuses {time.time_ns()}"
    qid = submit(two.second, CAROL, compose(CAROL, ALICE, subject))
    two.expect(ALICE, subject)
    entry = wait_for(lambda: deferred(two.second, qid), f"{qid} deferred", timeout=30)
    reason = entry["recipients"][0]["delay_reason"]
    assert "SASL authentication failed" in reason and "535" in reason, reason
    status = mailstack(two.second.site, "status")
    # A warning (exit 1), and only because the box refuses the real DNS blocklists' zones
    # (they cannot answer their test entries here); the waiting mail is minutes old.
    assert status.returncode == 1, status.stdout + status.stderr
    verdict = status.stdout.splitlines()[-1].removeprefix("status: WARNING (").removesuffix(")")
    assert all(p.startswith("mail.second.test: blocklist ") for p in verdict.split("; ")), verdict
    said = reason.split(" said: ", 1)[1]
    assert (f"  relay: {relay.address} refuses the login ({said}); 1 message waits: run "
            f"`mailstack relay set {relay.address} {relay.username}` with the right password, "
            "then `mailstack deploy`") in status.stdout.splitlines(), status.stdout

    # The right password, deployed: the waiting message goes at once (no flush by hand).
    use_relay(two, relay, relay.password)
    delivery(two.second, qid, ALICE)
    assert_each_once(imap_subjects(two.first.ip, ALICE), [subject])
    assert "relay:" not in mailstack(two.second.site, "status").stdout


# --------------------------------------------------------------------------- 5. the count


def test_every_message_is_delivered_exactly_once_or_bounced(two):
    for host in (two.first, two.second):
        run(host, "postqueue", "-f")
    time.sleep(2)
    assert not queue(two.first) and not queue(two.second)
    for mailbox, subjects in two.sent.items():
        bed = two.first if mailbox.endswith(FIRST) else two.second
        inbox = imap_subjects(bed.ip, mailbox)
        assert_each_once(inbox, subjects)
        assert not set(two.bounced) & set(inbox)
    assert two.bounced and not set(two.bounced) & set(imap_subjects(two.second.ip, CAROL))
