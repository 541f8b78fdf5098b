"""The probes of `mailstack verify` that need no delivery: each returns (passed, detail) or
raises a network/protocol error (a failed check). Grouped by what they prove."""

from __future__ import annotations

import base64
import email.utils
import poplib
import smtplib
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailstack.render.context import MAIL_PORTS, POP3S_PORT
from mailstack.verify.clients import TIMEOUT, imaps, rcpt_verdict, smtp, tls_context
from mailstack.verify.managesieve import ManageSieve

Probe = Callable[[], tuple[bool, str]]


@dataclass(frozen=True)
class Target:
    """One host as verify sees it: where it is, and the verification mailbox's login."""

    host: str  # the inventory name
    address: str
    user: str
    password: str
    domain: str  # the site's primary domain
    dkim_keys: dict[str, dict[str, Any]]
    pop3: bool = False  # options.pop3: POP3 over TLS on 995
    hostname: str = ""  # the site's host name (nginx serves the groupware for it)
    groupware: bool = False  # options.groupware: webmail and ActiveSync on 443


# --- listening: every service answers, with TLS where it must ------------------------------

def banner(t: Target, port: int) -> tuple[bool, str]:
    with smtp(t.address, port) as s:
        return True, s.ehlo_resp.decode(errors="replace").splitlines()[0]


def implicit_tls(t: Target) -> tuple[bool, str]:
    with smtp(t.address, 465, tls="implicit") as s:
        version = s.sock.version()  # type: ignore[union-attr]
        return version in ("TLSv1.2", "TLSv1.3"), f"{version}, {s.sock.cipher()[0]}"  # type: ignore[union-attr]


def imaps_banner(t: Target) -> tuple[bool, str]:
    imap = imaps(t.address)
    try:
        return True, imap.welcome.decode(errors="replace")[:80]
    finally:
        imap.logout()


def no_plaintext_imap(t: Target) -> tuple[bool, str]:
    try:
        sock = socket.create_connection((t.address, 143), timeout=TIMEOUT)
    except OSError:
        return True, "port 143 closed (IMAP only over TLS on 993)"
    with sock:
        greeting = sock.recv(512).decode(errors="replace")
    ok = "LOGINDISABLED" in greeting or "STARTTLS" in greeting
    return ok, "port 143 open: " + greeting.strip()[:80]


def closed(t: Target, port: int, why: str) -> tuple[bool, str]:
    """Nothing answers on the port: a refused (or filtered) connection."""
    try:
        sock = socket.create_connection((t.address, port), timeout=TIMEOUT)
    except OSError as exc:
        return True, f"port {port} closed ({why}): {exc.strerror or exc}"
    with sock:
        sock.settimeout(TIMEOUT)
        try:
            greeting = sock.recv(512).decode(errors="replace").strip()
        except OSError:
            greeting = ""
    return False, f"port {port} answers: {greeting[:80]}"


def managesieve_starttls(t: Target) -> tuple[bool, str]:
    """ManageSieve offers STARTTLS and no SASL mechanism before it; AUTHENTICATE in clear
    text is refused (tried with a made-up password: no secret crosses in clear)."""
    with ManageSieve(t.address, MAIL_PORTS["sieve"]) as ms:
        if "STARTTLS" not in ms.capabilities:
            return False, "STARTTLS missing from the capabilities"
        if ms.capabilities.get("SASL"):
            return False, f"SASL {ms.capabilities['SASL']} offered in clear text"
        answer = ms.authenticate(t.user, uuid.uuid4().hex)
        # RFC 5804's code for "not without TLS": a NO for the password alone would not do.
        refused = answer.status == "NO" and "ENCRYPT-NEEDED" in answer.text.upper()
        return refused, f"AUTHENTICATE before STARTTLS: {answer.status} {answer.text[:80]}"


def pop3s_login(t: Target) -> tuple[bool, str]:
    pop = poplib.POP3_SSL(t.address, POP3S_PORT, context=tls_context(), timeout=TIMEOUT)
    try:
        pop.user(t.user)
        pop.pass_(t.password)
        count, _size = pop.stat()
        return True, f"{pop.sock.version()}, logged in, {count} message(s)"  # type: ignore[attr-defined]
    finally:
        try:
            pop.quit()
        except (OSError, poplib.error_proto):
            pop.close()


def starttls(t: Target, port: int) -> tuple[bool, str]:
    with smtp(t.address, port) as s:
        if not s.has_extn("starttls"):
            return False, "STARTTLS missing from EHLO"
        s.starttls(context=tls_context())
        return True, f"{s.sock.version()}"  # type: ignore[union-attr]


def listening(t: Target) -> list[tuple[str, Probe]]:
    pop3 = ([] if t.pop3 else
            [(f"POP3 over TLS not offered (port {POP3S_PORT}; options.pop3 off)",
              lambda: closed(t, POP3S_PORT, "options.pop3 is off"))])
    return [
        ("port 25 answers SMTP", lambda: banner(t, 25)),
        ("port 587 answers SMTP", lambda: banner(t, 587)),
        ("port 465 answers SMTP over TLS", lambda: implicit_tls(t)),
        ("port 993 answers IMAP over TLS", lambda: imaps_banner(t)),
        ("port 143 offers no plaintext login", lambda: no_plaintext_imap(t)),
        ("plaintext POP3 not offered (port 110)", lambda: closed(t, 110, "POP3 only over TLS")),
        *pop3,
        ("STARTTLS offered on 25", lambda: starttls(t, 25)),
        ("STARTTLS offered on 587", lambda: starttls(t, 587)),
    ]


# --- authentication: only over TLS, only on submission ports -------------------------------

def no_auth_before_tls(t: Target) -> tuple[bool, str]:
    with smtp(t.address, 587) as s:
        if s.has_extn("auth"):
            return False, f"AUTH {s.esmtp_features['auth']} offered in clear text"
        return True, "no AUTH before STARTTLS"


def auth_before_tls_refused(t: Target) -> tuple[bool, str]:
    with smtp(t.address, 587) as s:
        token = base64.b64encode(f"\0{t.user}\0{t.password}".encode()).decode()
        code, msg = s.docmd("AUTH", "PLAIN " + token)
        return code != 235, f"{code} {msg.decode(errors='replace')}"


def no_auth_on_25(t: Target) -> tuple[bool, str]:
    with smtp(t.address, 25, tls="starttls") as s:
        if s.has_extn("auth"):
            return False, "AUTH offered on port 25 (submission belongs on 587/465)"
        return True, "no AUTH on port 25, even after STARTTLS"


def wrong_password_refused(t: Target) -> tuple[bool, str]:
    with smtp(t.address, 587, tls="starttls") as s:
        try:
            s.login(t.user, t.password + "-wrong")
        except smtplib.SMTPAuthenticationError as exc:
            return True, f"{exc.smtp_code} {exc.smtp_error.decode(errors='replace')}"
        return False, "login succeeded with a wrong password"


def authentication(t: Target) -> list[tuple[str, Probe]]:
    return [
        ("AUTH not offered on 587 before TLS", lambda: no_auth_before_tls(t)),
        ("AUTH before TLS refused on 587", lambda: auth_before_tls_refused(t)),
        ("AUTH not offered on 25", lambda: no_auth_on_25(t)),
        (f"ManageSieve ({MAIL_PORTS['sieve']}) takes no AUTH before STARTTLS",
         lambda: managesieve_starttls(t)),
    ]


# --- logins: the verify mailbox's one-time password on the other mail protocols -----------

def managesieve_login(t: Target) -> tuple[bool, str]:
    """STARTTLS, then AUTHENTICATE PLAIN, then the user's scripts listed (read only)."""
    with ManageSieve(t.address, MAIL_PORTS["sieve"]) as ms:
        started = ms.starttls(tls_context())
        if not started.ok:
            return False, f"STARTTLS: {started.status} {started.text}"
        answer = ms.authenticate(t.user, t.password)
        if not answer.ok:
            return False, f"AUTHENTICATE: {answer.status} {answer.text}"
        listed = ms.command("LISTSCRIPTS")
        ms.logout()
        return listed.ok, f"{ms.tls_version}, logged in, {len(listed.lines)} script(s)"


def logins(t: Target) -> list[tuple[str, Probe]]:
    pop3 = ([(f"POP3S login on {POP3S_PORT}", lambda: pop3s_login(t))] if t.pop3 else [])
    return [("ManageSieve login over STARTTLS", lambda: managesieve_login(t)), *pop3]


# --- refusals: no relay, no unknown recipient, no forged sender ----------------------------

def refused_on_25(t: Target, rcpt: str) -> tuple[bool, str]:
    """The null sender: no sender-domain DNS check can then answer 4xx first and mask the
    verdict on the recipient."""
    with smtp(t.address, 25) as s:
        code, msg = rcpt_verdict(s, "", rcpt)
        return 500 <= code < 600, f"{code} {msg}"


def spoofed_sender_refused(t: Target) -> tuple[bool, str]:
    spoofed = f"ceo-{uuid.uuid4().hex[:6]}@{t.domain}"
    with smtp(t.address, 587, tls="starttls") as s:
        s.login(t.user, t.password)
        code, msg = rcpt_verdict(s, spoofed, t.user)
        return 500 <= code < 600, f"MAIL FROM {spoofed}: {code} {msg}"


def refusals(t: Target) -> list[tuple[str, Probe]]:
    relays = [
        ("relay to an outside domain refused", "someone@example.com"),
        ("relay via %-hack refused", f"someone%example.com@{t.domain}"),
        ("relay via !-path refused", f"example.com!someone@{t.domain}"),
        ("relay via quoted local part refused", f'"someone@example.com"@{t.domain}'),
    ]
    unknown = f"no-such-user-{uuid.uuid4().hex[:8]}@{t.domain}"
    return [
        *[(label, lambda r=rcpt: refused_on_25(t, r)) for label, rcpt in relays],
        ("unknown recipient refused at RCPT", lambda: refused_on_25(t, unknown)),
        ("mail from outside to the verify mailbox refused", lambda: refused_on_25(t, t.user)),
        ("sender not owned by the user refused", lambda: spoofed_sender_refused(t)),
    ]


# --- filtering: the spam filter answers ----------------------------------------------------

# The standard test string every spam filter refuses (rspamd: the reject action).
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def spam_refused(t: Target) -> tuple[bool, str]:
    """GTUBE from the verify mailbox to itself over 587: the spam filter must refuse it at the
    end of DATA (5xx). Safe on a production server: nothing is delivered, nothing leaves."""
    text = (f"From: {t.user}\r\nTo: {t.user}\r\nSubject: mailstack verify: spam filter\r\n"
            f"Date: {email.utils.formatdate()}\r\nMessage-ID: {email.utils.make_msgid()}\r\n"
            f"\r\n{GTUBE}\r\n")
    with smtp(t.address, 587, tls="starttls") as s:
        s.login(t.user, t.password)
        try:
            s.sendmail(t.user, [t.user], text)
        except smtplib.SMTPDataError as exc:
            answer = f"{exc.smtp_code} {exc.smtp_error.decode(errors='replace')}"
            return 500 <= exc.smtp_code < 600, answer
        return False, "GTUBE accepted: the spam filter did not refuse it"


def filtering(t: Target) -> list[tuple[str, Probe]]:
    return [("spam filter refuses GTUBE", lambda: spam_refused(t))]
