"""Outbound TLS verified where the recipient asks for it: DANE and MTA-STS, on a real host
sending to a receiving MX in the internet in a box.

One deployed host for the module (the site out.test, with options.resolver.trust_anchors set
to the box's signed zone dane.test. and dnssec false: the box answers nothing from the root,
so the host validates below that anchor only). One receiving MX (the box's outside host:
Postfix with STARTTLS and a certificate from a test CA the mail host trusts, plus the
MTA-STS policies over HTTPS) stands behind every recipient domain:

- ok.dane.test: a signed TLSA 3 1 1 record of the MX's key: delivered, "Verified TLS";
- bad.dane.test: a signed TLSA record of another key: deferred, nothing reaches the MX;
- sts-ok.test (unsigned): MTA-STS enforce, the certificate names its MX: "Verified TLS";
- sts-bad.test (unsigned): MTA-STS enforce, the certificate does not name its MX: deferred.

The MX offers STARTTLS to anybody, so without DANE or MTA-STS both bad domains would get the
message over unverified TLS: their deferrals are the policies at work. Every message sent is
counted: delivered exactly once, or still in the queue.
"""

from __future__ import annotations

import hashlib
import json
import re
import smtplib
import time
from dataclasses import dataclass

import pytest
import testbed
from testbed import Record
from testbed.ca import TestCA
from testbed.receiver import Receiver, mta_sts_policy

from .helpers import PASSWORD, BoxedHost, edit_config, host_in_a_box, mailstack, message, tls_context

pytestmark = pytest.mark.testbed
DOMAIN = "out.test"
ALICE = f"alice@{DOMAIN}"
SIGNED = "dane.test."
DANE_OK, DANE_BAD = "ok.dane.test", "bad.dane.test"
STS_OK, STS_BAD = "sts-ok.test", "sts-bad.test"
TIMEOUT = 60  # for one delivery attempt (a policy fetch, a handshake)


def mx(domain: str) -> str:
    return f"mx.{domain}"


@dataclass
class Bed(BoxedHost):
    receiver: Receiver | None = None

    def run(self, *cmd: str) -> str:
        return testbed.exec_in(self.name, list(cmd)).stdout

    def queue(self) -> dict[str, dict]:
        """Postfix's queue on the mail host: {queue id: postqueue -j's entry}."""
        return {e["queue_id"]: e for e in map(json.loads, self.run("postqueue", "-j").splitlines())}

    def smtp_log(self) -> str:
        """What Postfix's SMTP client logged (outbound deliveries)."""
        return self.run("journalctl", "-t", "postfix/smtp", "--no-pager", "-o", "cat")

    def mx(self) -> Receiver:
        assert self.receiver is not None
        return self.receiver


def submit(bed: Bed, rcpt: str, subject: str) -> str:
    """Alice sends on 587 (STARTTLS, AUTH); the queue id Postfix answered with."""
    with smtplib.SMTP(bed.ip, 587, timeout=30, local_hostname="client.test") as smtp:
        smtp.starttls(context=tls_context())
        smtp.login(ALICE, PASSWORD)
        smtp.mail(ALICE)
        code, reply = smtp.rcpt(rcpt)
        assert code == 250, reply
        code, reply = smtp.data(message(subject, rcpt, ALICE).encode())
        assert code == 250, reply
    return re.search(r"queued as (\w+)", reply.decode()).group(1)  # type: ignore[union-attr]


def wait_for(what: str, check, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.5)
    return found


def delivered_once(bed: Bed, queue_id: str, subject: str) -> str:
    """Wait until the MX has the message; assert it has it once and the queue is rid of it.
    The SMTP client's log line of the delivery."""
    wait_for(f"{subject!r} at the MX", lambda: subject in bed.mx().subjects())
    assert bed.mx().subjects().count(subject) == 1
    sent = wait_for(f"{queue_id} logged as sent", lambda: [
        line for line in bed.smtp_log().splitlines() if line.startswith(f"{queue_id}: ")
        and "status=sent" in line])
    assert queue_id not in bed.queue()
    return sent[0]


def deferred(bed: Bed, queue_id: str, subject: str) -> str:
    """Wait until the message was tried and deferred; assert nothing of it reached the MX or
    was logged as sent. Its recipient's delay reason."""
    entry = wait_for(f"{queue_id} deferred", lambda: (e := bed.queue().get(queue_id)) and
                     e["queue_name"] == "deferred" and e)
    assert subject not in bed.mx().subjects()
    assert not [line for line in bed.smtp_log().splitlines()
                if line.startswith(f"{queue_id}: ") and "status=sent" in line]
    [recipient] = entry["recipients"]
    return recipient["delay_reason"]


def verified_to(bed: Bed, host: str) -> list[str]:
    return [line for line in bed.smtp_log().splitlines()
            if line.startswith(f"Verified TLS connection established to {host}[")]


def verification_failures(bed: Bed, host: str) -> list[str]:
    """Why the SMTP client did not trust a host's certificate (one line per attempt)."""
    return [line.split(":25: ", 1)[1] for line in bed.smtp_log().splitlines()
            if line.startswith(f"server certificate verification failed for {host}[")]


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    holder: dict[str, Receiver] = {}

    def before_deploy(host: BoxedHost) -> None:
        internet = host.internet
        assert internet.sender is not None
        ca = TestCA("mailstack test bed receiver CA")
        # The certificate names sts-ok.test's MX and both policy hosts, not sts-bad.test's
        # MX (nor the DANE domains' MX names: only their TLSA records can vouch for them).
        receiver = Receiver(internet.sender.host, ca, [mx(STS_OK), f"mta-sts.{STS_OK}",
                                                       f"mta-sts.{STS_BAD}"],
                            [DANE_OK, DANE_BAD, STS_OK, STS_BAD]).start()
        receiver.serve_policies({f"mta-sts.{d}": mta_sts_policy(mx(d)) for d in (STS_OK, STS_BAD)})
        ip = internet.sender.host.ip
        another_key = "3 1 1 " + hashlib.sha256(b"not the receiver's key").hexdigest()
        records = []
        for domain, tlsa in ((DANE_OK, receiver.tlsa()), (DANE_BAD, another_key)):
            records += [Record(domain, "MX", f"10 {mx(domain)}."), Record(mx(domain), "A", ip),
                        Record(f"_25._tcp.{mx(domain)}", "TLSA", tlsa)]
        for domain in (STS_OK, STS_BAD):
            records += [Record(domain, "MX", f"10 {mx(domain)}."), Record(mx(domain), "A", ip),
                        Record(f"_mta-sts.{domain}", "TXT", "v=STSv1; id=1"),
                        Record(f"mta-sts.{domain}", "A", ip)]
        internet.publish(records)
        ca.trust_on(host.name, "mailstack-testbed-receiver")
        edit_config(host.site, ("    trust_anchors: []\n",
                                f"    trust_anchors: {json.dumps(internet.trust_anchors())}\n"))
        holder["receiver"] = receiver

    site = tmp_path_factory.mktemp("outbound-tls") / "site"
    # The test's client is not an MTA that retries.
    edits = [("    greylist_score: 4\n", "    greylist_score: null\n")]
    with host_in_a_box("outtls", site, DOMAIN, [ALICE], edits=edits, before_deploy=before_deploy,
                       signed=(SIGNED,)) as host:
        yield Bed(**vars(host), receiver=holder["receiver"])


# Every message the tests send: {subject: (queue id, delivered?)}, counted at the end.
SENT: dict[str, tuple[str, bool]] = {}


def test_the_host_validates_below_the_sites_anchor_without_the_roots(bed: Bed) -> None:
    [anchor] = bed.internet.trust_anchors()
    fields, digest = anchor.rsplit(" ", 1)  # the site's form: the digest in upper case
    conf = bed.run("cat", "/etc/unbound/unbound.conf.d/mailstack.conf")
    assert f'    trust-anchor: "{fields} {digest.upper()}"\n' in conf
    assert 'module-config: "iterator"' not in conf
    root = bed.run("cat", "/etc/unbound/unbound.conf.d/root-auto-trust-anchor-file.conf")
    assert "auto-trust-anchor-file" not in root
    assert "unbound-checkconf: no errors" in bed.run("unbound-checkconf")
    # Postfix's own TLS client in DANE mode, through the host's resolver: the TLSA record
    # counts only as DNSSEC-validated, and it matches the key the MX presents.
    finger = bed.run("posttls-finger", "-c", "-l", "dane", DANE_OK)
    tlsa = bed.mx().tlsa().upper()
    assert f":25: Matched DANE EE certificate at depth 0: {tlsa}\n" in finger, finger
    assert f"Verified TLS connection established to {mx(DANE_OK)}[" in finger, finger


def test_a_matching_tlsa_record_gets_verified_tls_and_one_delivery(bed: Bed) -> None:
    subject = "DANE, matching TLSA"
    queue_id = submit(bed, f"carol@{DANE_OK}", subject)
    SENT[subject] = (queue_id, True)
    delivered_once(bed, queue_id, subject)
    assert verified_to(bed, mx(DANE_OK))


def test_a_tlsa_record_that_does_not_match_keeps_the_message_in_the_queue(bed: Bed) -> None:
    subject = "DANE, another key's TLSA"
    queue_id = submit(bed, f"carol@{DANE_BAD}", subject)
    SENT[subject] = (queue_id, False)
    assert deferred(bed, queue_id, subject) == "Server certificate not verified"
    assert verification_failures(bed, mx(DANE_BAD)) == ["num=65:no matching DANE TLSA records"]
    assert not verified_to(bed, mx(DANE_BAD))


def test_an_mta_sts_domain_gets_verified_tls_to_the_mx_its_policy_names(bed: Bed) -> None:
    subject = "MTA-STS, good certificate"
    queue_id = submit(bed, f"carol@{STS_OK}", subject)
    SENT[subject] = (queue_id, True)
    delivered_once(bed, queue_id, subject)
    assert verified_to(bed, mx(STS_OK))


def test_an_mta_sts_domain_whose_mx_has_a_bad_certificate_keeps_the_message_in_the_queue(
        bed: Bed) -> None:
    subject = "MTA-STS, certificate without the MX's name"
    queue_id = submit(bed, f"carol@{STS_BAD}", subject)
    SENT[subject] = (queue_id, False)
    assert deferred(bed, queue_id, subject) == "Server certificate not verified"
    assert verification_failures(bed, mx(STS_BAD)) == ["num=62:hostname mismatch"]
    assert not verified_to(bed, mx(STS_BAD))


def test_every_message_is_delivered_once_or_still_queued(bed: Bed) -> None:
    assert len(SENT) == 4, "every sending test ran"
    at_mx, queue = bed.mx().subjects(), bed.queue()
    assert sorted(at_mx) == sorted(s for s, (_, delivered) in SENT.items() if delivered)
    assert sorted(queue) == sorted(q for q, delivered in SENT.values() if not delivered)


def test_a_second_deploy_changes_nothing(bed: Bed) -> None:
    again = mailstack(bed.site, "deploy")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "no changes" in again.stdout, again.stdout
