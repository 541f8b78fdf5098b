"""`mailstack verify`: prove from outside, with real protocol clients, that each host
receives, refuses, stores, serves and signs mail as it should.

Only the site's own hosts are contacted. Relay probes stop at RCPT and never send DATA, so
even a misconfigured (open) server is never made to send mail elsewhere.
"""

from __future__ import annotations

import base64
import imaplib
import json
import smtplib
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from .inventory import InventoryHost, select_hosts
from .render import verify_address
from .secrets import dkim_public_key
from .site import Site

TIMEOUT = 10.0
DELIVERY_WAIT = 60.0


@dataclass(frozen=True)
class Check:
    host: str
    name: str
    passed: bool
    detail: str


def _tls() -> ssl.SSLContext:
    # The certificate may be self-signed until ACME: verify the server, not the PKI.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Prober:
    def __init__(self, site: Site, host: InventoryHost) -> None:
        self.site = site
        self.host = host
        self.cfg = site.config
        self.addr = host.address
        self.user = verify_address(self.cfg)
        self.password = site.secrets.site["verify_password"]
        self.results: list[Check] = []

    def record(self, name: str, passed: bool, detail: str) -> bool:
        self.results.append(Check(self.host.name, name, passed, detail))
        return passed

    def attempt(self, name: str, fn: Callable[[], tuple[bool, str]]) -> bool:
        try:
            passed, detail = fn()
        except (OSError, smtplib.SMTPException, imaplib.IMAP4.error, ssl.SSLError) as exc:
            passed, detail = False, f"{type(exc).__name__}: {exc}"
        return self.record(name, passed, detail)

    @contextmanager
    def smtp(self, port: int, *, tls: str = "none") -> Iterator[smtplib.SMTP]:
        """tls: none | starttls | implicit."""
        if tls == "implicit":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(self.addr, port, timeout=TIMEOUT,
                                                  local_hostname="verify.mailstack.invalid",
                                                  context=_tls())
        else:
            conn = smtplib.SMTP(self.addr, port, timeout=TIMEOUT,
                                local_hostname="verify.mailstack.invalid")
        try:
            conn.ehlo()
            if tls == "starttls":
                conn.starttls(context=_tls())
                conn.ehlo()
            yield conn
        finally:
            try:
                conn.quit()
            except (OSError, smtplib.SMTPException):
                conn.close()

    # --- the checks ------------------------------------------------------------------------

    def run(self) -> list[Check]:
        for port in (25, 587):
            self.attempt(f"port {port} answers SMTP", lambda p=port: self._banner(p))
        self.attempt("port 465 answers SMTP over TLS", self._implicit_tls)
        self.attempt("port 993 answers IMAP over TLS", self._imaps_banner)
        self.attempt("port 143 offers no plaintext login", self._imap_plain)
        for port in (25, 587):
            self.attempt(f"STARTTLS offered on {port}", lambda p=port: self._starttls(p))
        self.attempt("AUTH not offered on 587 before TLS", self._no_auth_before_tls)
        self.attempt("AUTH before TLS refused on 587", self._auth_before_tls_refused)
        self.attempt("AUTH not offered on 25", self._no_auth_on_25)
        for label, rcpt in (
            ("relay to an outside domain refused", "someone@example.com"),
            ("relay via %-hack refused", f"someone%example.com@{self.cfg.primary_domain}"),
            ("relay via !-path refused", f"example.com!someone@{self.cfg.primary_domain}"),
            ("relay via quoted local part refused",
             f'"someone@example.com"@{self.cfg.primary_domain}'),
        ):
            self.attempt(label, lambda r=rcpt: self._relay_refused(r))
        self.attempt("unknown recipient refused at RCPT", self._unknown_recipient)
        self.attempt("sender not owned by the user refused", self._spoofed_sender)
        self._round_trip()
        # Last: a failed login makes Dovecot delay this client's next logins (auth penalty).
        self.attempt("wrong password refused", self._wrong_password)
        return self.results

    def _banner(self, port: int) -> tuple[bool, str]:
        with self.smtp(port) as s:
            return True, s.ehlo_resp.decode(errors="replace").splitlines()[0]

    def _implicit_tls(self) -> tuple[bool, str]:
        with self.smtp(465, tls="implicit") as s:
            version = s.sock.version()  # type: ignore[union-attr]
            return version in ("TLSv1.2", "TLSv1.3"), f"{version}, {s.sock.cipher()[0]}"  # type: ignore[union-attr]

    def _imaps_banner(self) -> tuple[bool, str]:
        imap = imaplib.IMAP4_SSL(self.addr, 993, ssl_context=_tls(), timeout=TIMEOUT)
        try:
            return True, imap.welcome.decode(errors="replace")[:80]
        finally:
            imap.logout()

    def _imap_plain(self) -> tuple[bool, str]:
        try:
            sock = socket.create_connection((self.addr, 143), timeout=TIMEOUT)
        except OSError:
            return True, "port 143 closed (IMAP only over TLS on 993)"
        with sock:
            banner = sock.recv(512).decode(errors="replace")
        ok = "LOGINDISABLED" in banner or "STARTTLS" in banner
        return ok, "port 143 open: " + banner.strip()[:80]

    def _starttls(self, port: int) -> tuple[bool, str]:
        with self.smtp(port) as s:
            if not s.has_extn("starttls"):
                return False, "STARTTLS missing from EHLO"
            s.starttls(context=_tls())
            return True, f"{s.sock.version()}"  # type: ignore[union-attr]

    def _no_auth_before_tls(self) -> tuple[bool, str]:
        with self.smtp(587) as s:
            if s.has_extn("auth"):
                return False, f"AUTH {s.esmtp_features['auth']} offered in clear text"
            return True, "no AUTH before STARTTLS"

    def _auth_before_tls_refused(self) -> tuple[bool, str]:
        with self.smtp(587) as s:
            token = base64.b64encode(f"\0{self.user}\0{self.password}".encode()).decode()
            code, msg = s.docmd("AUTH", "PLAIN " + token)
            return code != 235, f"{code} {msg.decode(errors='replace')}"

    def _no_auth_on_25(self) -> tuple[bool, str]:
        with self.smtp(25, tls="starttls") as s:
            if s.has_extn("auth"):
                return False, "AUTH offered on port 25 (submission belongs on 587/465)"
            return True, "no AUTH on port 25, even after STARTTLS"

    def _wrong_password(self) -> tuple[bool, str]:
        with self.smtp(587, tls="starttls") as s:
            try:
                s.login(self.user, self.password + "-wrong")
            except smtplib.SMTPAuthenticationError as exc:
                return True, f"{exc.smtp_code} {exc.smtp_error.decode(errors='replace')}"
            return False, "login succeeded with a wrong password"

    def _rcpt(self, s: smtplib.SMTP, sender: str, rcpt: str) -> tuple[int, str]:
        """MAIL + RCPT, then RSET. Probes use the null sender: no sender-domain DNS check
        can then answer 4xx first and mask the verdict on the recipient."""
        code, msg = s.docmd("MAIL", f"FROM:<{sender}>")
        if code >= 400:
            s.rset()
            return code, f"MAIL FROM refused: {msg.decode(errors='replace')}"
        code, msg = s.docmd("RCPT", f"TO:<{rcpt}>")  # raw: smtplib would unquote "a@b"@c
        s.rset()  # never DATA: nothing is ever queued
        return code, msg.decode(errors="replace")

    def _relay_refused(self, rcpt: str) -> tuple[bool, str]:
        with self.smtp(25) as s:
            code, msg = self._rcpt(s, "", rcpt)
            return 500 <= code < 600, f"{code} {msg}"

    def _unknown_recipient(self) -> tuple[bool, str]:
        rcpt = f"no-such-user-{uuid.uuid4().hex[:8]}@{self.cfg.primary_domain}"
        with self.smtp(25) as s:
            code, msg = self._rcpt(s, "", rcpt)
            return 500 <= code < 600, f"{code} {msg}"

    def _spoofed_sender(self) -> tuple[bool, str]:
        spoofed = f"ceo-{uuid.uuid4().hex[:6]}@{self.cfg.primary_domain}"
        with self.smtp(587, tls="starttls") as s:
            s.login(self.user, self.password)
            code, msg = self._rcpt(s, spoofed, self.user)
            return 500 <= code < 600, f"MAIL FROM {spoofed}: {code} {msg}"

    # --- round trip: submit on 587 and 465, read back over IMAPS, verify DKIM ---------------

    def _message(self, token: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.user
        msg["To"] = self.user
        msg["Subject"] = f"mailstack verify {token}"
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain=self.cfg.primary_domain)
        msg.set_content(f"Round trip check {token}.\nIf you can read this, delete it.\n")
        return msg

    def _submit(self, port: int, token: str) -> tuple[bool, str]:
        tls = "starttls" if port == 587 else "implicit"
        with self.smtp(port, tls=tls) as s:
            s.login(self.user, self.password)
            refused = s.send_message(self._message(token))
            return not refused, f"accepted for delivery ({tls})"

    def _round_trip(self) -> None:
        tokens = {587: uuid.uuid4().hex, 465: uuid.uuid4().hex}
        submitted = {p: self.attempt(f"submission on {p} (AUTH as {self.user})",
                                     lambda p=p: self._submit(p, tokens[p])) for p in tokens}
        try:
            imap = imaplib.IMAP4_SSL(self.addr, 993, ssl_context=_tls(), timeout=TIMEOUT)
        except (OSError, ssl.SSLError) as exc:
            self.record("IMAPS login", False, str(exc))
            return
        try:
            imap.login(self.user, self.password)
            self.record("IMAPS login", True, f"as {self.user}")
            for port, token in tokens.items():
                if not submitted[port]:
                    continue
                raw = self._wait_for(imap, token)
                if raw is None:
                    self.record(f"message from {port} delivered to IMAP", False,
                                f"not in INBOX after {DELIVERY_WAIT:.0f} s (see the mail log)")
                    continue
                self.record(f"message from {port} delivered to IMAP", True, "found in INBOX")
                self.attempt(f"message from {port} DKIM-signed and valid",
                             lambda raw=raw: self._dkim(raw))
            imap.expunge()
        except imaplib.IMAP4.error as exc:
            self.record("IMAPS login", False, str(exc))
        finally:
            with suppress(OSError, imaplib.IMAP4.error):
                imap.logout()

    def _wait_for(self, imap: imaplib.IMAP4_SSL, token: str) -> bytes | None:
        deadline = time.monotonic() + DELIVERY_WAIT
        while time.monotonic() < deadline:
            imap.select("INBOX")
            _, data = imap.search(None, "SUBJECT", f'"{token}"')
            ids = data[0].split() if data and data[0] else []
            if ids:
                _, fetched = imap.fetch(ids[0], "(BODY.PEEK[])")
                raw = fetched[0][1] if fetched and isinstance(fetched[0], tuple) else None
                for msg_id in ids:
                    imap.store(msg_id, "+FLAGS", "\\Deleted")
                return raw
            time.sleep(0.5)
        return None

    def _dkim(self, raw: bytes) -> tuple[bool, str]:
        import dkim

        keys = {}
        for domain, key in self.site.secrets.dkim.items():
            name = f"{key['selector']}._domainkey.{domain}."
            keys[name] = f"v=DKIM1; k=rsa; p={dkim_public_key(key['private_key'])}".encode()

        def dnsfunc(name, timeout=5):  # the site's own key, not the public DNS
            return keys.get(name.decode() if isinstance(name, bytes) else name, b"")

        if b"DKIM-Signature:" not in raw and b"dkim-signature:" not in raw.lower():
            return False, "no DKIM-Signature header"
        ok = dkim.verify(raw, dnsfunc=dnsfunc)
        sig = raw.lower().split(b"dkim-signature:", 1)[1].split(b"\n", 1)[0]
        return ok, ("signature verifies with the site's key" if ok else "signature INVALID") + \
            f" ({sig.decode(errors='replace').strip()[:60]})"


def verify(site: Site, only_host: str | None = None) -> list[Check]:
    results: list[Check] = []
    for host in select_hosts(site.root, site.inventory, only_host):
        results.extend(Prober(site, host).run())
    return results


def table(results: list[Check]) -> str:
    width = max(len(r.name) for r in results)
    lines = []
    for r in results:
        mark = "ok  " if r.passed else "FAIL"
        lines.append(f"{mark}  {r.host}  {r.name:<{width}}  {r.detail}")
    failed = sum(not r.passed for r in results)
    lines.append(f"{failed} of {len(results)} checks FAILED" if failed
                 else f"all {len(results)} checks passed")
    return "\n".join(lines)


def as_json(results: list[Check]) -> str:
    return json.dumps([asdict(r) for r in results], indent=2)
