"""What the end-to-end tests share: the real CLI as a subprocess, and real SMTP/IMAP
clients talking to the deployed host."""

from __future__ import annotations

import email
import email.utils
import imaplib
import os
import smtplib
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

PASSWORD = "correct horse battery staple"


def mailstack(site: Path | None, *args: str, input: str | None = None,
              timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """`mailstack [--site SITE] ARGS…` exactly as a user runs it (no ANSIBLE_* from us)."""
    cmd = [sys.executable, "-m", "mailstack", *(["--site", str(site)] if site else []), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)


def tls_context() -> ssl.SSLContext:
    """The test hosts have self-signed certificates."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def imap_login(ip: str, user: str) -> imaplib.IMAP4_SSL:
    imap = imaplib.IMAP4_SSL(ip, 993, ssl_context=tls_context(), timeout=10)
    imap.login(user, PASSWORD)
    return imap


def imap_subjects(ip: str, user: str) -> list[str]:
    """The subject of every message in the user's INBOX, read over IMAPS (duplicates kept).
    Each message is fetched whole: one the server cannot read back from its store fails
    here (its headers alone may come from Dovecot's cache)."""
    imap = imap_login(ip, user)
    try:
        imap.select("INBOX")
        _, data = imap.search(None, "ALL")
        subjects = []
        for num in data[0].split():
            _, fetched = imap.fetch(num, "(BODY.PEEK[])")
            subjects.append(str(email.message_from_bytes(fetched[0][1])["Subject"]))
        return subjects
    finally:
        imap.logout()


def message(subject: str, rcpt: str, sender: str = "<>") -> str:
    """A well-formed message (the headers the spam filter expects of a real MTA's mail)."""
    return (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
            f"Date: {email.utils.formatdate()}\r\nMessage-ID: {email.utils.make_msgid()}\r\n"
            f"\r\nbody of {subject}\r\n")


def send(ip: str, rcpt: str, subjects: list[str]) -> None:
    """One message per subject from the outside, over port 25 (each accepted with 250)."""
    with smtplib.SMTP(ip, 25, timeout=20, local_hostname="client.test") as smtp:
        for subject in subjects:
            smtp.sendmail("", [rcpt], message(subject, rcpt))


def wait_for_subjects(ip: str, user: str, subjects: list[str], timeout: float = 30) -> list[str]:
    """Wait until every subject is in the INBOX; return the INBOX's subjects."""
    deadline = time.monotonic() + timeout
    while True:
        inbox = imap_subjects(ip, user)
        if all(s in inbox for s in subjects):
            return inbox
        if time.monotonic() > deadline:
            pytest.fail(f"never arrived: {sorted(set(subjects) - set(inbox))}")
        time.sleep(0.5)


def assert_each_once(inbox: list[str], subjects: list[str]) -> None:
    """Every subject exactly once: none lost, none delivered twice."""
    counts = {s: inbox.count(s) for s in subjects}
    assert all(n == 1 for n in counts.values()), {s: n for s, n in counts.items() if n != 1}
