"""`mailstack verify`: prove from outside, with real protocol clients, that each host
receives, refuses, stores, serves and signs mail as it should.

Only the site's own hosts are contacted. Relay probes stop at RCPT and never send DATA, so
even a misconfigured (open) server is never made to send mail elsewhere.
"""

from __future__ import annotations

import http.client
import imaplib
import poplib
import smtplib
import ssl

from mailstack.dnsquery import Server
from mailstack.render.context import mta_sts_policy, verify_address
from mailstack.site.directory import Site
from mailstack.site.inventory import InventoryHost, select_hosts
from mailstack.site.tls import site_key, spki_sha256
from mailstack.verify import certificate, probes
from mailstack.verify.host import host_checks, one_time_password
from mailstack.verify.managesieve import ManageSieveError
from mailstack.verify.probes import Probe, Target
from mailstack.verify.published import dns_checks
from mailstack.verify.report import Check
from mailstack.verify.roundtrip import round_trip
from mailstack.verify.webapps import groupware


class Recorder:
    """Runs probes against one host and keeps their outcome; a network or protocol error is
    a failed check with the error as its detail."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.results: list[Check] = []

    def record(self, name: str, passed: bool, detail: str) -> bool:
        self.results.append(Check(self.host, name, passed, detail))
        return passed

    def attempt(self, name: str, probe: Probe) -> bool:
        try:
            passed, detail = probe()
        except (OSError, smtplib.SMTPException, imaplib.IMAP4.error, ssl.SSLError,
                http.client.HTTPException, poplib.error_proto, ManageSieveError) as exc:
            passed, detail = False, f"{type(exc).__name__}: {exc}"
        return self.record(name, passed, detail)


def target(site: Site, host: InventoryHost, password: str) -> Target:
    cfg = site.config
    return Target(host=host.name, address=host.address, user=verify_address(cfg),
                  password=password, domain=cfg.primary_domain, dkim_keys=site.secrets.dkim,
                  pop3=cfg.options.pop3, hostname=cfg.hostname,
                  groupware=cfg.options.groupware)


def cert_target(site: Site, host: InventoryHost) -> certificate.CertTarget:
    cfg = site.config
    return certificate.CertTarget(
        address=host.address, hostname=cfg.hostname, mode=cfg.options.tls.certificate,
        key_spki_sha256=spki_sha256(site_key(site.secrets)), domains=tuple(sorted(cfg.domains)),
        mta_sts_policy=mta_sts_policy(cfg)["text"])


def probe_host(t: Target, c: certificate.CertTarget, rec: Recorder) -> None:
    for name, probe in [*probes.listening(t), *certificate.certificate(c),
                        *probes.authentication(t), *probes.logins(t), *probes.refusals(t),
                        *probes.filtering(t), *groupware(t)]:
        rec.attempt(name, probe)
    round_trip(t, rec)
    # Last: a failed login makes Dovecot delay this client's next logins (auth penalty).
    rec.attempt("wrong password refused", lambda: probes.wrong_password_refused(t))


def verify(site: Site, only_host: str | None = None, *, dns: bool = False,
           resolver: Server | None = None) -> list[Check]:
    """Per host: the checks from the host itself (over SSH), then the probes from here with
    a one-time password for the verify mailbox; with dns, the site's DNS checks at the end
    (asked of resolver; None: this machine's)."""
    results: list[Check] = []
    for host in select_hosts(site.root, site.inventory, only_host):
        rec = Recorder(host.name)
        host_checks(site, host, rec)
        with one_time_password(site, host, rec) as password:
            probe_host(target(site, host, password), cert_target(site, host), rec)
        results.extend(rec.results)
    if dns:
        results.extend(dns_checks(site, resolver))
    return results
