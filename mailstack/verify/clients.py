"""The protocol clients `mailstack verify` probes with: SMTP (plain, STARTTLS, implicit TLS)
and IMAPS, with bounded timeouts."""

from __future__ import annotations

import imaplib
import smtplib
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

TIMEOUT = 10.0
HELO_NAME = "verify.mailstack.invalid"


def tls_context() -> ssl.SSLContext:
    """TLS 1.2 or newer. The certificate may be self-signed until ACME: what is verified here
    is the server's behaviour, not the PKI."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@contextmanager
def smtp(address: str, port: int, *, tls: str = "none") -> Iterator[smtplib.SMTP]:
    """An SMTP session after EHLO; tls is none, starttls (then EHLO again) or implicit."""
    if tls == "implicit":
        conn: smtplib.SMTP = smtplib.SMTP_SSL(address, port, timeout=TIMEOUT,
                                              local_hostname=HELO_NAME, context=tls_context())
    else:
        conn = smtplib.SMTP(address, port, timeout=TIMEOUT, local_hostname=HELO_NAME)
    try:
        conn.ehlo()
        if tls == "starttls":
            conn.starttls(context=tls_context())
            conn.ehlo()
        yield conn
    finally:
        try:
            conn.quit()
        except (OSError, smtplib.SMTPException):
            conn.close()


def imaps(address: str) -> imaplib.IMAP4_SSL:
    return imaplib.IMAP4_SSL(address, 993, ssl_context=tls_context(), timeout=TIMEOUT)


def rcpt_verdict(s: smtplib.SMTP, sender: str, rcpt: str) -> tuple[int, str]:
    """MAIL + RCPT, then RSET: the server's verdict on a recipient, never DATA, so nothing is
    ever queued (even a misconfigured open relay sends nothing anywhere)."""
    code, msg = s.docmd("MAIL", f"FROM:<{sender}>")
    if code >= 400:
        s.rset()
        return code, f"MAIL FROM refused: {msg.decode(errors='replace')}"
    code, msg = s.docmd("RCPT", f"TO:<{rcpt}>")  # raw: smtplib would unquote "a@b"@c
    s.rset()
    return code, msg.decode(errors="replace")
