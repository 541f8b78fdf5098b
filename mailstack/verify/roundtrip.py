"""The round trip of `mailstack verify`: the verification mailbox submits a message on 587
and on 465 while a second session waits in IMAP IDLE, reads each back over IMAPS, checks
its DKIM signature and that search finds it, and deletes it."""

from __future__ import annotations

import email
import email.policy
import imaplib
import ssl
import time
import uuid
from contextlib import suppress
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING

from mailstack.verify.clients import HELO_NAME, imaps, smtp
from mailstack.verify.dkim import check_signature
from mailstack.verify.probes import Target
from mailstack.verify.push import IdleWatch

if TYPE_CHECKING:
    from mailstack.verify.run import Recorder

DELIVERY_WAIT = 60.0


def search_word(token: str) -> str:
    """A word in the message's body alone: SEARCH BODY for it must find the message."""
    return f"verify{token[:12]}"


def message(t: Target, token: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = t.user
    msg["To"] = t.user
    msg["Subject"] = f"mailstack verify {token}"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=t.domain)
    msg.set_content(f"Round trip check {token}.\nSearch word: {search_word(token)}.\n"
                    "If you can read this, delete it.\n")
    return msg


def submit(t: Target, port: int, token: str) -> tuple[bool, str]:
    tls = "starttls" if port == 587 else "implicit"
    with smtp(t.address, port, tls=tls) as s:
        s.login(t.user, t.password)
        refused = s.send_message(message(t, token))
        return not refused, f"accepted for delivery ({tls})"


def hides_client(raw: bytes) -> tuple[bool, str]:
    """Submitted mail must not carry a Received header naming the user's computer (our HELO
    name stands in for it) or address: the submission cleanup drops it."""
    headers = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    if HELO_NAME.encode() in headers:
        return False, f"a Received header names the client ({HELO_NAME})"
    return True, "no Received header of the submitting client"


def take_message(imap: imaplib.IMAP4_SSL, token: str) -> bytes | None:
    """The message whose subject carries token, marked deleted; None if not (yet) there.
    SEARCH SUBJECT is answered by the full-text index, which matches words and may find more
    than asked (README, "Full-text search"), so each candidate's subject is checked before it is taken."""
    imap.select("INBOX")
    _, data = imap.search(None, "SUBJECT", f'"{token}"')
    taken = None
    for msg_id in data[0].split() if data and data[0] else []:
        _, fetched = imap.fetch(msg_id, "(BODY.PEEK[])")
        raw = fetched[0][1] if fetched and isinstance(fetched[0], tuple) else b""
        if token in str(email.message_from_bytes(raw, policy=email.policy.default)["Subject"]):
            imap.store(msg_id, "+FLAGS", "\\Deleted")
            taken = taken or raw
    return taken


def found_by_search(imap: imaplib.IMAP4_SSL, token: str) -> tuple[bool, str]:
    """The full-text index (Dovecot FTS, fts_enforced: no scan behind it) finds the
    message by a word of its body."""
    word = search_word(token)
    imap.select("INBOX")
    typ, data = imap.search(None, "BODY", f'"{word}"')
    found = data[0].split() if typ == "OK" and data and data[0] else []
    if typ != "OK":
        return False, f"SEARCH BODY refused: {data}"
    return len(found) == 1, f"SEARCH BODY {word} found {len(found)} message(s)"


def wait_for(imap: imaplib.IMAP4_SSL, token: str) -> bytes | None:
    deadline = time.monotonic() + DELIVERY_WAIT
    while time.monotonic() < deadline:
        raw = take_message(imap, token)
        if raw is not None:
            return raw
        time.sleep(0.5)
    return None


def start_idle(t: Target, rec: Recorder) -> IdleWatch | None:
    try:
        return IdleWatch.start(t.address, t.user, t.password)
    except (OSError, ssl.SSLError, imaplib.IMAP4.error) as exc:
        rec.record("IMAP IDLE tells of new mail (push)", False, f"{type(exc).__name__}: {exc}")
        return None


def round_trip(t: Target, rec: Recorder) -> None:
    tokens = {587: uuid.uuid4().hex, 465: uuid.uuid4().hex}
    idle = start_idle(t, rec)
    try:
        first = rec.attempt(f"submission on 587 (AUTH as {t.user})",
                            lambda: submit(t, 587, tokens[587]))
        handed_over = time.monotonic()  # the server's 250 for the message
        if idle is not None and first:
            rec.attempt("IMAP IDLE tells of new mail (push)",
                        lambda: idle.wait_exists(handed_over))
    finally:
        if idle is not None:
            idle.close()
    submitted = {587: first, 465: rec.attempt(f"submission on 465 (AUTH as {t.user})",
                                              lambda: submit(t, 465, tokens[465]))}
    try:
        imap = imaps(t.address)
    except (OSError, ssl.SSLError) as exc:
        rec.record("IMAPS login", False, str(exc))
        return
    try:
        imap.login(t.user, t.password)
        rec.record("IMAPS login", True, f"as {t.user}")
        imap.select("INBOX")
        for port, token in tokens.items():
            if not submitted[port]:
                continue
            raw = wait_for(imap, token)
            if raw is None:
                rec.record(f"message from {port} delivered to IMAP", False,
                           f"not in INBOX after {DELIVERY_WAIT:.0f} s (see the mail log)")
                continue
            rec.record(f"message from {port} delivered to IMAP", True, "found in INBOX")
            rec.attempt(f"message from {port} does not reveal the sender's computer",
                        lambda raw=raw: hides_client(raw))
            rec.attempt(f"message from {port} DKIM-signed and valid",
                        lambda raw=raw: check_signature(raw, t.dkim_keys))
            rec.attempt(f"message from {port} found by full-text search",
                        lambda token=token: found_by_search(imap, token))
        imap.expunge()
    except imaplib.IMAP4.error as exc:
        rec.record("IMAPS login", False, str(exc))
    finally:
        with suppress(OSError, imaplib.IMAP4.error):
            imap.logout()
