"""The probes of `mailstack verify` about the certificate and what rests on it: every port
presents the site's key (so the TLSA record `mailstack dns` prints matches), a chain clients
trust for the host name with time left (unless the site chose self-signed), and each
domain's MTA-STS policy served over it, naming this host as MX."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mailstack.verify.clients import TIMEOUT

Probe = Callable[[], tuple[bool, str]]
# Fewer days left than this: the renewal (twice a day, from 30 days before) is not working.
MIN_DAYS_LEFT = 14
# Every port that presents the certificate, and how a client gets to TLS on it.
TLS_PORTS = {25: "starttls", 587: "starttls", 465: "implicit", 993: "implicit", 443: "implicit"}


@dataclass(frozen=True)
class CertTarget:
    address: str
    hostname: str
    mode: str  # options.tls.certificate
    key_spki_sha256: str  # of the site's key (the vault's): what the TLSA record names
    domains: tuple[str, ...]
    mta_sts_policy: str  # what each mta-sts.DOMAIN must serve


def trusting() -> ssl.SSLContext:
    """The system's CAs (SSL_CERT_FILE if set), the name checked: what a mail client does."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def unchecked() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def _reply(stream) -> str:
    lines = []
    while line := stream.readline(4096).decode(errors="replace"):
        lines.append(line)
        if line[3:4] != "-":
            break
    return "".join(lines)


def _expect(port: int, reply: str, code: str) -> str:
    if not reply.startswith(code):
        raise ssl.SSLError(f"port {port}: {reply.strip() or 'no reply'} (wanted {code})")
    return reply


def tls_socket(address: str, port: int, server_name: str, ctx: ssl.SSLContext,
               timeout: float = TIMEOUT) -> ssl.SSLSocket:
    """A TLS connection to address:port as a client that resolved server_name there (SNI
    and the name check), after STARTTLS on the SMTP ports."""
    sock = socket.create_connection((address, port), timeout=timeout)
    try:
        if TLS_PORTS.get(port) == "starttls":
            stream = sock.makefile("rb")
            _expect(port, _reply(stream), "220")
            sock.sendall(b"EHLO verify.mailstack.invalid\r\n")
            if "STARTTLS" not in _expect(port, _reply(stream), "250").upper():
                raise ssl.SSLError(f"port {port}: STARTTLS is not offered")
            sock.sendall(b"STARTTLS\r\n")
            _expect(port, _reply(stream), "220")
        return ctx.wrap_socket(sock, server_hostname=server_name)
    except BaseException:
        sock.close()
        raise


def served(address: str, port: int, server_name: str, ctx: ssl.SSLContext,
           timeout: float = TIMEOUT) -> x509.Certificate:
    """The certificate port presents to a client that checks it with ctx."""
    with tls_socket(address, port, server_name, ctx, timeout) as tls:
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError(f"port {port}: no certificate presented")
    return x509.load_der_x509_certificate(der)


def spki_sha256(cert: x509.Certificate) -> str:
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def site_key_everywhere(t: CertTarget) -> tuple[bool, str]:
    wrong = [str(port) for port in TLS_PORTS
             if spki_sha256(served(t.address, port, t.hostname, unchecked())) != t.key_spki_sha256]
    if wrong:
        return False, (f"port {', '.join(wrong)} present another key than the site's: the "
                       "TLSA record (`mailstack dns`) does not match there")
    ports = ", ".join(map(str, TLS_PORTS))
    return True, f"ports {ports}: the site's key (TLSA 3 1 1 {t.key_spki_sha256[:16]}…)"


def trusted(t: CertTarget) -> tuple[bool, str]:
    if t.mode == "self-signed":
        cert = served(t.address, 25, t.hostname, unchecked())
        return True, ("self-signed (options.tls.certificate: self-signed): clients warn; "
                      f"{_days_left(cert)} days left")
    days = []
    for port in TLS_PORTS:
        try:
            cert = served(t.address, port, t.hostname, trusting())
        except ssl.SSLCertVerificationError as exc:
            return False, (f"port {port}: not trusted for {t.hostname}: {exc.verify_message}"
                           + (" (the CA has not issued it yet? see the deploy's warnings)"
                              if t.mode == "acme" else ""))
        days.append(_days_left(cert))
    left = min(days)
    if left < MIN_DAYS_LEFT:
        return False, f"trusted, but expires in {left} days: renewal is failing"
    return True, f"trusted for {t.hostname} on every port, {left} days left"


def _days_left(cert: x509.Certificate) -> int:
    return (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).days


def mta_sts(t: CertTarget, domain: str) -> tuple[bool, str]:
    name = f"mta-sts.{domain}"
    ctx = unchecked() if t.mode == "self-signed" else trusting()
    conn = http.client.HTTPSConnection(name, context=ctx, timeout=TIMEOUT)
    conn.sock = tls_socket(t.address, 443, name, ctx)
    try:
        conn.request("GET", "/.well-known/mta-sts.txt")
        resp = conn.getresponse()
        body = resp.read(65536).decode(errors="replace")
    finally:
        conn.close()
    if resp.status != 200:
        return False, f"https://{name}/.well-known/mta-sts.txt: HTTP {resp.status}"
    if body != t.mta_sts_policy:
        return False, f"https://{name}/.well-known/mta-sts.txt is not the site's policy: {body[:120]!r}"
    mode = next((line.split(":", 1)[1].strip() for line in body.splitlines()
                 if line.startswith("mode:")), "?")
    return True, f"mode {mode}, mx {t.hostname}"


def certificate(t: CertTarget) -> list[tuple[str, Probe]]:
    return [
        ("every port presents the site's key (TLSA)", lambda: site_key_everywhere(t)),
        ("certificate trusted, with time left", lambda: trusted(t)),
        *[(f"MTA-STS policy of {d} served", lambda d=d: mta_sts(t, d)) for d in t.domains],
    ]
