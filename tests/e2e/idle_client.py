"""An IMAP IDLE client (RFC 2177) over implicit TLS, as a mail app keeps one open per folder
it watches: imaplib for LOGIN and SELECT, then IDLE spoken on the same connection (imaplib
has no IDLE before Python 3.14). Used by tests/e2e/test_push.py and bench/idle.py."""

from __future__ import annotations

import imaplib
import re
import time
from dataclasses import dataclass

from .helpers import PASSWORD, tls_context

EXISTS = re.compile(rb"\* (\d+) EXISTS\r\n")


@dataclass(frozen=True)
class Exists:
    """An untagged `* N EXISTS`, and when it arrived (time.time(), this machine's clock,
    which the test hosts share: they are containers on its kernel)."""

    count: int
    at: float


class IdleClient:
    """One connection, logged in, a folder selected, in IDLE until done()."""

    def __init__(self, ip: str, user: str, folder: str = "INBOX", *, timeout: float = 30):
        self.timeout = timeout
        self.imap = imaplib.IMAP4_SSL(ip, 993, ssl_context=tls_context(), timeout=timeout)
        self.imap.login(user, PASSWORD)
        typ, data = self.imap.select(folder)
        if typ != "OK":
            raise AssertionError(f"SELECT {folder}: {data}")
        self.exists = int(data[0])
        self.tag = b""

    def idle(self) -> None:
        """Send IDLE and wait for the server's continuation (`+ idling`)."""
        self.tag = self.imap._new_tag()  # imaplib's own tag sequence, so later commands go on
        self.imap.send(self.tag + b" IDLE\r\n")
        line = self.imap.readline()
        if not line.startswith(b"+"):
            raise AssertionError(f"IDLE refused: {line!r}")

    def wait_exists(self, timeout: float) -> Exists | None:
        """The next `* N EXISTS` with N above what is known, or None after timeout seconds.
        Other untagged lines (`* OK Still here`, RECENT, FETCH) are skipped."""
        deadline = time.monotonic() + timeout
        sock = self.imap.socket()
        try:
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    line = self.imap.readline()
                except TimeoutError:
                    return None
                if not line:
                    raise AssertionError("the server closed the connection while idle")
                if (m := EXISTS.fullmatch(line)) and int(m.group(1)) > self.exists:
                    self.exists = int(m.group(1))
                    return Exists(self.exists, time.time())
            return None
        finally:
            sock.settimeout(self.timeout)

    def done(self) -> None:
        """End IDLE: DONE, then the IDLE command's tagged OK."""
        self.imap.send(b"DONE\r\n")
        while not (line := self.imap.readline()).startswith(self.tag + b" "):
            if not line:
                raise AssertionError("the server closed the connection after DONE")
        if not line.startswith(self.tag + b" OK"):
            raise AssertionError(f"IDLE ended with {line!r}")

    def close(self) -> None:
        try:
            self.imap.logout()
        except (OSError, imaplib.IMAP4.error):
            self.imap.shutdown()
