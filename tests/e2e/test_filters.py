"""Filters, vacation, quotas and POP3 on one real host, with real clients (issue 12, section 4).

A stack-image host with NET_ADMIN (its own firewall and bans, as on a KVM VPS) and the
internet in a box on one test network. The box publishes the site's records and two outside
domains, both served by the box's outside host: outside.test (its SPF allows the outside
host; DMARC p=none) and junk.test (its SPF does not, DMARC p=quarantine: rspamd files its
mail into Junk). The outside host sends mail to the site over SMTP (Python's smtplib there,
announcing SIZE as MTAs do) and is the MX of both domains: Postfix's smtp-sink keeps every
message the site sends them, so every vacation reply, forward and bounce is counted.

- ManageSieve (4190): STARTTLS only, the mailbox's login; a filter uploaded with a real
  ManageSieve client (mailstack/verify/managesieve.py, speaking RFC 5804 over a socket) files
  one sender's mail into a folder, the rest stays in INBOX, spam still goes to Junk first;
  the script lives only in the encrypted store.
- Vacation: one reply (DKIM-signed, from <>) per sender and period; none to lists, bounces,
  auto-submitted or bulk mail, spam, or mail that does not name the user.
- Quotas at RCPT: a mailbox filled past its quota refuses with 552 5.2.2 at RCPT, nothing
  bounces; warnings at 80 % and 95 % arrive (from postmaster@, DKIM-signed); an alias to an
  outside address is not affected, an alias's copy for the full mailbox waits in the queue;
  with Dovecot stopped the answer is 451, and while the store is locked mail is accepted
  and sealed; once there is room every message is delivered exactly once.
- POP3 (options.pop3 on): 995 with TLS only, RETR; 110 closed; the firewall opens 995.
- `mailstack verify` passes every check (ManageSieve and POP3S logins among them); a second
  deploy changes nothing.

Tests run in file order and build on each other (one deployed host). `-s` shows the timings.
"""

from __future__ import annotations

import base64
import email
import email.utils
import json
import poplib
import re
import secrets
import socket
import time
from dataclasses import dataclass, field

import pytest
import testbed
from testbed.internet import Record, sender_domain

from mailstack.render.context import MAIL_PORTS, POP3S_PORT
from mailstack.site.directory import Site
from mailstack.verify.dkim import check_signature
from mailstack.verify.managesieve import ManageSieve

from .helpers import PASSWORD, BoxedHost, host_in_a_box, imap_login, mailstack, tls_context

pytestmark = pytest.mark.testbed
DOMAIN = "filters.test"
ALICE = f"alice@{DOMAIN}"  # filters and vacation
CAROL = f"carol@{DOMAIN}"  # the quota
CAROL_ALIAS = f"carol.forward@{DOMAIN}"  # -> carol
AWAY_ALIAS = f"away@{DOMAIN}"  # -> an outside address
OUTSIDE = "outside.test"
FORWARD_TARGET = f"someone@{OUTSIDE}"
QUOTA = 100 * 1024
SIEVE_PORT = MAIL_PORTS["sieve"]
SINK_DIR = "/var/tmp/sink"

# Run on the outside host: one SMTP transaction to the site's port 25 with the message on
# stdin, SIZE announced (unless --no-size), every answer printed as JSON. DATA only when a
# recipient was accepted.
SEND = r"""
import json, smtplib, sys
args = sys.argv[1:]
size = "--no-size" not in args
host, sender, *rcpts = [a for a in args if a != "--no-size"]
msg = sys.stdin.buffer.read()
out = {"rcpt": {}, "data": None}
with smtplib.SMTP(host, 25, local_hostname="mx.outside.test", timeout=60) as s:
    s.ehlo()
    code, text = s.mail(sender, [f"SIZE={len(msg)}"] if size else [])
    out["mail"] = [code, text.decode()]
    accepted = []
    for rcpt in rcpts:
        code, text = s.rcpt(rcpt)
        out["rcpt"][rcpt] = [code, text.decode()]
        if code // 100 == 2:
            accepted.append(rcpt)
    if accepted:
        code, text = s.data(msg)
        out["data"] = [code, text.decode()]
    else:
        s.rset()
print(json.dumps(out))
"""
# Run on the outside host: every message the sink kept, as base64 JSON.
SUNK = r"""
import base64, json, os, sys
d = sys.argv[1]
print(json.dumps([base64.b64encode(open(os.path.join(d, n), "rb").read()).decode()
                  for n in sorted(os.listdir(d))]))
"""


def tag() -> str:
    return secrets.token_hex(4)


def text_message(subject: str, *, sender: str, to: str, headers: str = "", body: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: {email.utils.formatdate()}\r\nMessage-ID: {email.utils.make_msgid()}\r\n"
            f"{headers}\r\n{body or 'Hello.'}\r\n").encode()


@dataclass
class Bed(BoxedHost):
    timings: dict[str, float] = field(default_factory=dict)

    def send(self, message: bytes, *, sender: str, rcpts: list[str], size: bool = True) -> dict:
        """One SMTP transaction from the outside host; every answer."""
        cmd = ["python3", "-c", SEND, self.ip, sender, *rcpts, *([] if size else ["--no-size"])]
        proc = testbed.exec_in(self.outside, cmd, input=message.decode())
        return json.loads(proc.stdout)

    def deliver(self, message: bytes, *, sender: str, rcpt: str) -> None:
        """Sent from outside and accepted (250 at RCPT and DATA)."""
        answers = self.send(message, sender=sender, rcpts=[rcpt])
        assert answers["rcpt"][rcpt][0] == 250 and answers["data"][0] == 250, answers

    def sunk_raw(self) -> list[bytes]:
        """Every message the outside domains' MX received, as received (smtp-sink's
        X-Mail-Args and X-Rcpt-Args headers ahead of it carry the envelope)."""
        out = testbed.exec_in(self.outside, ["python3", "-c", SUNK, SINK_DIR]).stdout
        return [base64.b64decode(m) for m in json.loads(out)]

    def sunk(self) -> list[email.message.Message]:
        return [email.message_from_bytes(raw) for raw in self.sunk_raw()]

    def queue(self) -> list[dict]:
        return [json.loads(line) for line in self.run("postqueue", "-j").stdout.splitlines()]

    def wait_for_empty_queue(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while (queue := self.queue()) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert not queue, queue

    def quota_kib(self, user: str) -> int:
        """STORAGE used, in KiB (Dovecot's count quota, as IMAP GETQUOTAROOT reports it)."""
        imap = imap_login(self.ip, user)
        try:
            _, data = imap.getquotaroot("INBOX")
        finally:
            imap.logout()
        return int(re.search(rb"STORAGE (\d+) \d+", data[1][0]).group(1))


def raw_folder(ip: str, user: str, name: str = "INBOX") -> list[bytes]:
    """Every message in a folder, fetched whole over IMAPS, as stored."""
    imap = imap_login(ip, user)
    try:
        typ, _ = imap.select(f'"{name}"', readonly=True)
        if typ != "OK":
            return []
        _, data = imap.search(None, "ALL")
        return [imap.fetch(n, "(BODY.PEEK[])")[1][0][1] for n in data[0].split()]
    finally:
        imap.logout()


def folder(ip: str, user: str, name: str = "INBOX") -> list[email.message.Message]:
    return [email.message_from_bytes(raw) for raw in raw_folder(ip, user, name)]


def subjects(ip: str, user: str, name: str = "INBOX") -> list[str]:
    return [str(m["Subject"]) for m in folder(ip, user, name)]


def wait_for(ip: str, user: str, subject: str, name: str = "INBOX", timeout: float = 30) -> int:
    """Wait until a message with this subject is in the folder; how many there are."""
    deadline = time.monotonic() + timeout
    while True:
        found = subjects(ip, user, name).count(subject)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def sieve_session(ip: str, user: str = ALICE) -> ManageSieve:
    """A logged-in ManageSieve session: STARTTLS, then AUTHENTICATE PLAIN."""
    ms = ManageSieve(ip, SIEVE_PORT)
    assert ms.starttls(tls_context()).ok
    answer = ms.authenticate(user, PASSWORD)
    assert answer.ok, answer
    return ms


def put_active(ip: str, name: str, script: str) -> None:
    with sieve_session(ip) as ms:
        put = ms.command("PUTSCRIPT", name, script.encode())
        assert put.ok, put
        assert ms.command("SETACTIVE", name).ok
        listed = ms.command("LISTSCRIPTS")
        assert f'"{name}" ACTIVE'.encode() in b"".join(listed.lines), listed
        ms.logout()


def setup_box(bed: BoxedHost) -> None:
    """Before the deploy: the outside domains in the box's DNS, the sink as their MX, the
    quota user and the aliases."""
    outside_ip = bed.internet.sender.host.ip  # type: ignore[union-attr]
    records = mailstack(bed.site, "dns", "--format", "json")
    assert records.returncode == 0, records.stderr
    bed.internet.publish(testbed.site_records(records.stdout.replace("203.0.113.7", bed.ip)))
    bed.internet.publish(sender_domain(OUTSIDE, outside_ip, dmarc="v=DMARC1; p=none"))
    # A bounce's From is the reporting host: its SPF, for DMARC.
    bed.internet.publish([Record(f"mx.{OUTSIDE}", "TXT", f"v=spf1 ip4:{outside_ip} -all")])
    bed.internet.publish([r for r in sender_domain("junk.test", outside_ip,
                                                   spf="v=spf1 ip4:192.0.2.1 -all",
                                                   dmarc="v=DMARC1; p=quarantine")
                          if r.type != "PTR"])
    testbed.exec_in(bed.outside, ["bash", "-ec",
                    f"install -d -o nobody -g nogroup {SINK_DIR} && systemd-run --quiet "
                    f"--unit=smtp-sink smtp-sink -u nobody -d '{SINK_DIR}/%H%M%S.' 0.0.0.0:25 64 "
                    "&& until ss -ltn | grep -q ':25 '; do sleep 0.1; done"])
    for args in (("user", "add", CAROL, "--quota", str(QUOTA), "--password-stdin"),
                 ("alias", "add", CAROL_ALIAS, CAROL),
                 ("alias", "add", AWAY_ALIAS, FORWARD_TARGET)):
        done = mailstack(bed.site, *args, input=PASSWORD + "\n")
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    edits = (("    greylist_score: 4\n", "    greylist_score: null\n"),
             # The box's blocklist (verify asks each list for its test entry).
             ("    threshold: 3\n", "    threshold: 3\n    lists: [{zone: bl.test, weight: 3, "
                                  "answers: 127.0.0.2}]\n"),
             ("  pop3: false\n", "  pop3: true\n"))
    started = time.monotonic()
    with host_in_a_box("filters", tmp_path_factory.mktemp("filters") / "site", DOMAIN, [ALICE],
                       edits=edits, cap_add=("NET_ADMIN",), before_deploy=setup_box) as host:
        bed = Bed(**vars(host))
        bed.timings["host, box and cold deploy"] = time.monotonic() - started
        yield bed
        bed.timings["module"] = time.monotonic() - started
        print("\n[filters] " + ", ".join(f"{k} {v:.1f} s" for k, v in bed.timings.items()))


# --- the ports ------------------------------------------------------------------------------


def test_the_firewall_opens_managesieve_and_pop3s_and_plain_pop3_is_closed(bed):
    ruleset = bed.run("nft", "list", "table", "inet", "mailstack").stdout
    ports = re.search(r"tcp dport \{ ([0-9, ]+) \} accept", ruleset)
    assert ports, ruleset
    assert [int(p) for p in ports.group(1).split(",")] == [22, 25, 80, 443, 465, 587, 993, 995,
                                                           4190]
    with pytest.raises(OSError):
        socket.create_connection((bed.ip, 110), timeout=5).close()


# --- ManageSieve and filters ----------------------------------------------------------------


def failures(bed: Bed) -> int:
    """fail2ban's count of failed logins in its Dovecot jail."""
    status = bed.run("fail2ban-client", "status", "dovecot").stdout
    return int(re.search(r"Total failed:\s+(\d+)", status).group(1))


def test_managesieve_takes_the_mailbox_login_only_after_starttls(bed):
    with ManageSieve(bed.ip, SIEVE_PORT) as ms:
        assert "STARTTLS" in ms.capabilities and ms.capabilities["SASL"] == ""
        refused = ms.authenticate(ALICE, PASSWORD)
        assert refused.status == "NO" and "ENCRYPT-NEEDED" in refused.text, refused
    with ManageSieve(bed.ip, SIEVE_PORT) as ms:
        assert ms.starttls(tls_context()).ok and ms.tls_version in ("TLSv1.2", "TLSv1.3")
        assert "PLAIN" in ms.capabilities["SASL"].split()
        assert {"fileinto", "vacation", "mailbox"} <= set(ms.capabilities["SIEVE"].split())
        # The global scripts' extensions are not the users'; no reject (backscatter).
        assert not {"vnd.dovecot.pipe", "reject", "ereject"} & set(ms.capabilities["SIEVE"].split())
        # A failed login counts toward a ban, as IMAP's do.
        before = failures(bed)
        assert ms.authenticate(ALICE, PASSWORD + "-wrong").status == "NO"
        deadline = time.monotonic() + 15
        while failures(bed) == before and time.monotonic() < deadline:
            time.sleep(0.3)
        assert failures(bed) == before + 1
    with sieve_session(bed.ip) as ms:
        assert ms.command("LISTSCRIPTS").ok
        broken = ms.command("PUTSCRIPT", "broken", b'require ["no-such-extension"];\r\n')
        assert broken.status == "NO" and "no-such-extension" in broken.text, broken
        ms.logout()


FILTER = """\
# {token}
require ["fileinto", "mailbox"];
if address :is "from" ["news@outside.test", "news@junk.test"] {{
    fileinto :create "Newsletters";
    stop;
}}
"""


def test_a_filter_files_one_senders_mail_and_the_rest_stays_in_the_inbox(bed):
    token = f"filter-script-{tag()}"
    put_active(bed.ip, "filters", FILTER.format(token=token))
    # The script is on the encrypted store only: readable through the mount, nowhere else.
    home = f"/var/mail/vhosts/{DOMAIN}/alice"
    assert bed.run("grep", "-rlF", token, home).stdout.strip() == f"{home}/sieve/filters.sieve"
    clear = bed.run("grep", "-rlsF", token, "/var/mail/vhosts.crypt", "/etc", "/var/lib", "/var/tmp",
                    "/tmp", "/root", "/var/spool", check=False).stdout
    assert clear == "", f"the script in clear text outside the store: {clear}"

    news, other = f"news {tag()}", f"letter {tag()}"
    bed.deliver(text_message(news, sender=f"news@{OUTSIDE}", to=ALICE),
                sender=f"news@{OUTSIDE}", rcpt=ALICE)
    bed.deliver(text_message(other, sender=f"friend@{OUTSIDE}", to=ALICE),
                sender=f"friend@{OUTSIDE}", rcpt=ALICE)
    assert wait_for(bed.ip, ALICE, news, "Newsletters") == 1
    assert wait_for(bed.ip, ALICE, other) == 1
    bed.wait_for_empty_queue()
    assert news not in subjects(bed.ip, ALICE)
    assert other not in subjects(bed.ip, ALICE, "Newsletters")


def test_spam_goes_to_junk_before_the_users_filter_sees_it(bed):
    """The global spam-to-junk script runs before the user's (sieve_before) and stops: mail
    the filter would have filed, but rspamd marked as spam, is in Junk."""
    spam = f"spam news {tag()}"
    bed.deliver(text_message(spam, sender="news@junk.test", to=ALICE),
                sender="news@junk.test", rcpt=ALICE)
    assert wait_for(bed.ip, ALICE, spam, "Junk") == 1
    [junked] = [m for m in folder(bed.ip, ALICE, "Junk") if m["Subject"] == spam]
    assert junked["X-Spam"] == "Yes"
    assert spam not in subjects(bed.ip, ALICE, "Newsletters") + subjects(bed.ip, ALICE)


# --- vacation -------------------------------------------------------------------------------

VACATION = FILTER.replace('["fileinto", "mailbox"]', '["fileinto", "mailbox", "vacation"]') + """\
vacation :days 1 :subject "Out of office" "I am away until Monday.";
"""


def replies(bed: Bed) -> dict[str, list[email.message.Message]]:
    """The vacation replies at the sink, by their envelope recipient."""
    out: dict[str, list[email.message.Message]] = {}
    for m in bed.sunk():
        if m["Subject"] == "Out of office":
            rcpt = re.match(r"<([^>]*)>", m["X-Rcpt-Args"]).group(1)
            out.setdefault(rcpt, []).append(m)
    return out


def test_vacation_answers_a_sender_once_and_never_lists_bounces_robots_or_spam(bed):
    put_active(bed.ip, "vacation", VACATION.format(token=tag()))
    friend, again = f"friend@{OUTSIDE}", f"vacation {tag()}"
    first = f"first {tag()}"
    sent = [(first, friend, friend, ""), (again, friend, friend, "")]
    # Each for one reason only. subject: (envelope sender, From:, extra headers, To:)
    o = OUTSIDE
    quiet = {
        f"list {tag()}": (f"list@{o}", f"list@{o}", f"List-Id: <talk.{o}>\r\n", ALICE),
        f"bounce {tag()}": ("", f"MAILER-DAEMON@mx.{o}", "", ALICE),
        f"daemon {tag()}": (f"MAILER-DAEMON@{o}", f"MAILER-DAEMON@{o}", "", ALICE),
        f"robot {tag()}": (f"robot@{o}", f"robot@{o}", "Auto-Submitted: auto-generated\r\n", ALICE),
        f"bulk {tag()}": (f"bulk@{o}", f"bulk@{o}", "Precedence: bulk\r\n", ALICE),
        f"blind copy {tag()}": (f"bcc@{o}", f"bcc@{o}", "", f"other@{o}"),
    }
    for subject, envelope, _sender, _ in sent:
        bed.deliver(text_message(subject, sender=envelope, to=ALICE), sender=envelope, rcpt=ALICE)
    for subject, (envelope, sender, headers, to) in quiet.items():
        bed.deliver(text_message(subject, sender=sender, to=to, headers=headers),
                    sender=envelope, rcpt=ALICE)
    spam = f"spam {tag()}"
    bed.deliver(text_message(spam, sender="ceo@junk.test", to=ALICE), sender="ceo@junk.test",
                rcpt=ALICE)
    # Last, a new sender: once its reply is at the sink and the queue is empty, every reply
    # the messages above caused has been sent.
    control = f"control@{OUTSIDE}"
    bed.deliver(text_message(f"control {tag()}", sender=control, to=ALICE), sender=control,
                rcpt=ALICE)
    deadline = time.monotonic() + 30
    while control not in replies(bed) and time.monotonic() < deadline:
        time.sleep(0.3)
    bed.wait_for_empty_queue()

    found = replies(bed)
    assert sorted(found) == [control, friend], {k: len(v) for k, v in found.items()}
    assert len(found[friend]) == 1 and len(found[control]) == 1
    # Every message was delivered, once, where it belongs.
    inbox = subjects(bed.ip, ALICE)
    for subject in [first, again, *quiet]:
        assert inbox.count(subject) == 1, subject
    assert wait_for(bed.ip, ALICE, spam, "Junk") == 1 and spam not in inbox

    reply = found[friend][0]
    assert reply["X-Mail-Args"].split()[0] == "<>", "a vacation reply is sent from <>"
    assert reply["From"] == f"<{ALICE}>" and reply["Auto-Submitted"].startswith("auto-replied")
    assert "I am away until Monday." in reply.get_payload(decode=True).decode()
    [raw] = [r for r in bed.sunk_raw() if b"Subject: Out of office" in r and friend.encode() in r]
    ok, detail = check_signature(raw, Site(bed.site).secrets.dkim)
    assert ok and f"d={DOMAIN}" in detail, detail


# --- POP3 -----------------------------------------------------------------------------------


def test_pop3s_logs_in_and_retrieves_a_message(bed):
    inbox = subjects(bed.ip, ALICE)
    pop = poplib.POP3_SSL(bed.ip, POP3S_PORT, context=tls_context(), timeout=20)
    try:
        assert pop.sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[attr-defined]
        pop.user(ALICE)
        pop.pass_(PASSWORD)
        count, _ = pop.stat()
        assert count == len(inbox) > 0
        _, lines, _ = pop.retr(1)
        assert str(email.message_from_bytes(b"\r\n".join(lines))["Subject"]) == inbox[0]
    finally:
        pop.quit()


# --- quotas ---------------------------------------------------------------------------------


def padded(subject: str, size: int, *, to: str = CAROL) -> bytes:
    """A message from outside.test of about `size` bytes."""
    head = text_message(subject, sender=f"friend@{OUTSIDE}", to=to)
    lines = max(0, size - len(head)) // 72
    return head + ("x" * 70 + "\r\n").encode() * lines


def rcpt_answer(bed: Bed, rcpt: str, size: int, *, announce: bool = True) -> tuple[int, str]:
    """The answer to RCPT for a message of this size (MAIL FROM with SIZE=); no DATA unless
    accepted, in which case the message is delivered."""
    answers = bed.send(padded(f"probe {tag()}", size, to=rcpt), sender=f"friend@{OUTSIDE}",
                       rcpts=[rcpt], size=announce)
    code, text = answers["rcpt"][rcpt]
    return code, text


@pytest.fixture(scope="module")
def full(bed):
    """Carol's mailbox filled past its quota from outside, one message at a time (none in
    flight while RCPT is judged): the subjects delivered, in order."""
    delivered = []

    def deliver(size: int) -> None:
        subject = f"fill {len(delivered)} {tag()}"
        bed.deliver(padded(subject, size), sender=f"friend@{OUTSIDE}", rcpt=CAROL)
        assert wait_for(bed.ip, CAROL, subject) == 1
        delivered.append(subject)

    started = time.monotonic()
    deliver(1000)
    # What Postfix and rspamd add (Received, Authentication-Results, ...), as stored.
    overhead = bed.quota_kib(CAROL) * 1024 - 1000

    def to_percent(percent: float) -> None:
        deliver(int(QUOTA * percent / 100) - bed.quota_kib(CAROL) * 1024 - overhead)

    to_percent(87)  # past 80 %: a warning
    assert wait_for(bed.ip, CAROL, "Your mailbox is 80 % full") == 1
    to_percent(97.5)  # past 95 %, still under the quota: a warning, and room for it
    assert wait_for(bed.ip, CAROL, "Your mailbox is 95 % full") == 1
    # Under the quota, a message may take it past by up to 10 % (quota_grace): the last one.
    used = bed.quota_kib(CAROL) * 1024
    assert used < QUOTA, used
    deliver(QUOTA + QUOTA // 20 - used - overhead)
    assert bed.quota_kib(CAROL) * 1024 > QUOTA
    bed.timings["filling the quota"] = time.monotonic() - started
    return delivered


def test_a_full_mailbox_is_refused_at_rcpt_and_nothing_bounces(bed, full):
    for size, announce in ((500, True), (50_000, True), (500, False)):
        code, text = rcpt_answer(bed, CAROL, size, announce=announce)
        assert (code, text.split()[0]) == (552, "5.2.2"), (size, announce, code, text)
        assert "Mailbox is full" in text
    # Every message accepted was delivered, once; nothing waits, nothing bounced.
    inbox = subjects(bed.ip, CAROL)
    for subject in full:
        assert inbox.count(subject) == 1, subject
    bed.wait_for_empty_queue()
    assert not [m for m in bed.sunk() if m["X-Mail-Args"].split()[0] == "<>"
                and m["Subject"] != "Out of office"], "a bounce reached the sender"


def test_the_warnings_come_from_postmaster_signed(bed, full):
    keys = Site(bed.site).secrets.dkim
    warnings = [raw for raw in raw_folder(bed.ip, CAROL) if b"% full" in raw.split(b"\r\n\r\n")[0]]
    parsed = [email.message_from_bytes(raw) for raw in warnings]
    assert sorted(str(m["Subject"]) for m in parsed) == ["Your mailbox is 80 % full",
                                                          "Your mailbox is 95 % full"]
    for raw, m in zip(warnings, parsed, strict=True):
        assert m["From"] == f"Postmaster <postmaster@{DOMAIN}>"
        assert m["Auto-Submitted"] == "auto-generated"
        assert m["Return-Path"] == "<>"
        ok, detail = check_signature(raw, keys)
        assert ok and f"d={DOMAIN}" in detail, detail


def test_a_message_larger_than_the_whole_quota_is_told_so(bed, full):
    imap = imap_login(bed.ip, CAROL)  # room again for the test, under the quota
    try:
        imap.select("INBOX")
        _, data = imap.search(None, "ALL")
        imap.store(data[0].split()[-1], "+FLAGS", "\\Deleted")
        imap.expunge()
    finally:
        imap.logout()
    assert bed.quota_kib(CAROL) * 1024 < QUOTA
    code, text = rcpt_answer(bed, CAROL, 2 * QUOTA)
    assert (code, text.split()[0]) == (552, "5.2.3"), text
    full.pop()


def test_aliases_are_not_refused_by_the_quota_check(bed, full):
    """An alias is checked by its own address, which has no quota: one to an outside address
    delivers there; the copy one makes for the full mailbox waits in the queue (4xx from
    Dovecot), it never bounces."""
    fill = QUOTA + QUOTA // 20 - bed.quota_kib(CAROL) * 1024
    bed.deliver(padded(f"refill {tag()}", fill), sender=f"friend@{OUTSIDE}", rcpt=CAROL)
    deadline = time.monotonic() + 30
    while bed.quota_kib(CAROL) * 1024 <= QUOTA and time.monotonic() < deadline:
        time.sleep(0.3)
    assert rcpt_answer(bed, CAROL, 500)[0] == 552

    away = f"forwarded {tag()}"
    bed.deliver(padded(away, 500, to=AWAY_ALIAS), sender=f"friend@{OUTSIDE}", rcpt=AWAY_ALIAS)
    waits = f"for the full mailbox {tag()}"
    bed.deliver(padded(waits, 500, to=CAROL_ALIAS), sender=f"friend@{OUTSIDE}", rcpt=CAROL_ALIAS)
    deadline = time.monotonic() + 30
    while away not in [m["Subject"] for m in bed.sunk()] and time.monotonic() < deadline:
        time.sleep(0.3)
    [forwarded] = [m for m in bed.sunk() if m["Subject"] == away]
    assert f"<{FORWARD_TARGET}>" in forwarded["X-Rcpt-Args"]
    deadline = time.monotonic() + 30
    while not (queue := bed.queue()) and time.monotonic() < deadline:
        time.sleep(0.3)
    [held] = queue
    assert held["queue_name"] == "deferred"
    [rcpt] = held["recipients"]
    assert rcpt["address"] == CAROL and "4.2.2" in rcpt["delay_reason"], held


def free_room(bed: Bed, count: int) -> None:
    """Carol deletes her oldest messages over IMAP."""
    imap = imap_login(bed.ip, CAROL)
    try:
        imap.select("INBOX")
        _, data = imap.search(None, "ALL")
        for n in data[0].split()[:count]:
            imap.store(n, "+FLAGS", "\\Deleted")
        imap.expunge()
    finally:
        imap.logout()


def test_with_dovecot_stopped_the_answer_is_try_again_later(bed, full):
    bed.run("systemctl", "stop", "dovecot")
    try:
        code, text = rcpt_answer(bed, CAROL, 500)
        assert (code, text.split()[0]) == (451, "4.3.5"), text
        # A mailbox without a quota is not asked about: accepted, and it waits in the queue.
        waiting = f"while dovecot was stopped {tag()}"
        bed.deliver(text_message(waiting, sender=f"friend@{OUTSIDE}", to=ALICE),
                    sender=f"friend@{OUTSIDE}", rcpt=ALICE)
    finally:
        bed.run("systemctl", "start", "dovecot")
    bed.run("postqueue", "-f")
    assert wait_for(bed.ip, ALICE, waiting) == 1


def test_while_locked_mail_for_a_full_mailbox_is_sealed_and_delivered_once_there_is_room(bed, full):
    locked = mailstack(bed.site, "lock")
    assert locked.returncode == 0, locked.stdout + locked.stderr
    sealed = f"sent while locked {tag()}"
    try:
        answers = bed.send(padded(sealed, 500), sender=f"friend@{OUTSIDE}", rcpts=[CAROL])
        assert answers["rcpt"][CAROL][0] == 250 and answers["data"][0] == 250, answers
        assert "; sealed 2;" in mailstack(bed.site, "status").stdout  # with the alias's copy
    finally:
        unlocked = mailstack(bed.site, "unlock")
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    # Still full: both wait in the queue (4xx at delivery), neither bounced.
    deadline = time.monotonic() + 30
    while len(bed.queue()) < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert sorted(q["recipients"][0]["address"] for q in bed.queue()) == [CAROL, CAROL]
    free_room(bed, 3)
    bed.run("postqueue", "-f")
    bed.wait_for_empty_queue()
    inbox = subjects(bed.ip, CAROL)
    assert inbox.count(sealed) == 1
    assert sum(s.startswith("for the full mailbox") for s in inbox) == 1
    assert not [m for m in bed.sunk() if m["X-Mail-Args"].split()[0] == "<>"
                and m["Subject"] != "Out of office"], "a bounce reached the sender"


# --- the whole -------------------------------------------------------------------------------


def test_verify_passes_with_the_managesieve_and_pop3s_logins(bed):
    result = mailstack(bed.site, "verify", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    failed = {n: c["detail"] for n, c in checks.items() if not c["passed"]}
    assert not failed and result.returncode == 0, failed
    for name in ("ManageSieve (4190) takes no AUTH before STARTTLS",
                 "ManageSieve login over STARTTLS", "POP3S login on 995",
                 "plaintext POP3 not offered (port 110)"):
        assert name in checks, sorted(checks)


def test_second_deploy_changes_nothing(bed):
    result = mailstack(bed.site, "deploy")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no changes: the hosts already match the site" in result.stdout, result.stdout
