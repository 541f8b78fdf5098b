"""verify's push check: a client waiting in IMAP IDLE (RFC 2177) on the INBOX is told of new
mail as it arrives (`* N EXISTS`), which is what phones and desktop clients rely on."""

from __future__ import annotations

import imaplib
import time
from contextlib import suppress

from mailstack.verify.clients import imaps

# Delivery through Postfix, the spam filter and LMTP takes about a second; Dovecot tells
# an idle client within half a second of it. Past this the client is polling, not pushed
# (Dovecot's fallback when no change notification reaches it polls every 30 s).
PUSH_LIMIT = 10.0
TAG = b"V1"


class IdleWatch:
    """One IMAPS session in IDLE on the INBOX (imaplib has no IDLE before Python 3.14)."""

    def __init__(self, imap: imaplib.IMAP4_SSL) -> None:
        self.imap = imap

    @classmethod
    def start(cls, address: str, user: str, password: str) -> IdleWatch:
        imap = imaps(address)
        try:
            imap.login(user, password)
            imap.select("INBOX")
            imap.send(TAG + b" IDLE\r\n")
            line = imap.readline()
            if not line.startswith(b"+"):
                raise imaplib.IMAP4.error(f"IDLE refused: {line.decode(errors='replace').strip()}")
        except BaseException:
            with suppress(OSError, imaplib.IMAP4.error):
                imap.shutdown()
            raise
        return cls(imap)

    def wait_exists(self, since: float) -> tuple[bool, str]:
        """Waits for the server's EXISTS; since: when the submission server took the message
        (monotonic). An EXISTS that came meanwhile is read at once."""
        deadline = since + PUSH_LIMIT
        while (left := deadline - time.monotonic()) > 0:
            self.imap.sock.settimeout(left)
            try:
                line = self.imap.readline()
            except TimeoutError:
                break
            if not line:
                return False, "the server closed the connection while in IDLE"
            if line.rstrip().endswith(b" EXISTS"):
                return True, f"EXISTS {time.monotonic() - since:.1f} s after the submission was accepted"
        return False, (f"no EXISTS within {PUSH_LIMIT:.0f} s of the submission: clients "
                       "are not told of new mail (see Dovecot's log)")

    def close(self) -> None:
        with suppress(OSError, imaplib.IMAP4.error):
            self.imap.sock.settimeout(5)
            self.imap.send(b"DONE\r\n")
            while (line := self.imap.readline()) and not line.startswith(TAG + b" "):
                pass
            self.imap.logout()
        with suppress(OSError):
            self.imap.shutdown()
