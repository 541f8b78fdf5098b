"""Trusted certificates by ACME, on a real host against a real CA in the box (pebble).

One host, its site left at options.tls.certificate: acme with the box's CA as directory.
The box publishes the records `mailstack dns` prints, among them the CNAMEs of mta-sts. and
autoconfig. to the host name, but not autodiscover.'s: a name not in DNS yet must not cost
the certificate. The story, in order:

1. the CA is down at the first deploy: the deploy succeeds with a warning, every port serves
   the self-signed stand-in for the site's key, and mail is received;
2. the CA is back, the next deploy gets a certificate: SMTP on 25 and 587 (STARTTLS), 465,
   IMAP on 993 and HTTPS on 443 present a chain that verifies against the CA's root for the
   host name, with the site's key (the TLSA record `mailstack dns` prints stays valid); the
   MTA-STS policy is served over it in mode enforce, so are Thunderbird's autoconfig and
   Outlook's autodiscover (POST); port 80 only redirects;
3. a deploy after that changes nothing;
4. a renewal (forced) is served on every port with no human step, with the same key.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pytest
import testbed
from cryptography import x509
from testbed.acme import AcmeCA

from mailstack.site.directory import Site
from mailstack.site.tls import spki_sha256 as key_spki_sha256
from mailstack.verify.certificate import TLS_PORTS, served, spki_sha256, tls_socket, unchecked

from .helpers import BoxedHost, host_in_a_box, mailstack, send, wait_for_subjects

pytestmark = pytest.mark.testbed
DOMAIN = "cert.test"
HOSTNAME = f"mail.{DOMAIN}"
ALICE = f"alice@{DOMAIN}"
TOOL = "/usr/local/sbin/mailstack-acme"
# Every port that presents the certificate.
PORTS = tuple(TLS_PORTS)
AUTODISCOVER_REQUEST = (
    b'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/'
    b'exchange/autodiscover/outlook/requestschema/2006"><Request><EMailAddress>'
    + ALICE.encode() + b'</EMailAddress><AcceptableResponseSchema>http://schemas.microsoft.com/'
    b'exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema></Request>'
    b'</Autodiscover>')


@dataclass
class Bed(BoxedHost):
    ca: AcmeCA | None = None

    def deploy(self):
        return mailstack(self.site, "deploy")


def served_certificate(ip: str, port: int, ctx: ssl.SSLContext,
                       server_name: str = HOSTNAME) -> x509.Certificate:
    """The certificate a port presents to a client that checks it with ctx (SNI and name
    check: server_name); STARTTLS first on the SMTP ports (verify's own client)."""
    return served(ip, port, server_name, ctx)


def https(ip: str, name: str, path: str, ctx: ssl.SSLContext,
          body: bytes | None = None) -> tuple[int, bytes]:
    """A request to name (SNI, Host and the certificate's name) at ip, as a client that
    resolved name to ip does; POST with a body."""
    conn = http.client.HTTPSConnection(name, context=ctx, timeout=15)
    conn.sock = tls_socket(ip, 443, name, ctx)
    try:
        conn.request("POST" if body is not None else "GET", path, body=body,
                     headers={"Content-Type": "text/xml"} if body is not None else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def trusting(root_pem: str) -> ssl.SSLContext:
    """A client that trusts only the CA's root, and checks the name."""
    return ssl.create_default_context(cadata=root_pem)


def spki(cert: x509.Certificate) -> str:
    return spki_sha256(cert)


def names(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return set(ext.value.get_values_for_type(x509.DNSName))


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    holder: dict[str, AcmeCA] = {}

    def before_deploy(host: BoxedHost) -> None:
        records = mailstack(host.site, "dns", "--format", "json")
        assert records.returncode == 0, records.stderr
        # Their mta-sts. and autoconfig. CNAMEs to the host; autodiscover. stays out.
        host.internet.publish([r for r in testbed.site_records(records.stdout)
                               if not r.name.startswith("autodiscover.")])
        # The CA's API is trusted like a real CA's, but the CA is down for now.
        holder["ca"] = AcmeCA(host.internet).start(running=False)
        holder["ca"].trust_on(host.name)

    site = tmp_path_factory.mktemp("acme") / "site"
    edits = [("certificate: self-signed", "certificate: acme"),
             ("acme_directory: https://acme-v02.api.letsencrypt.org/directory",
              "acme_directory: https://acme.test:14000/dir"),
             # The test's client is not an MTA that retries.
             ("    greylist_score: 4\n", "    greylist_score: null\n")]
    with host_in_a_box("acme", site, DOMAIN, [ALICE], edits=edits,
                       before_deploy=before_deploy) as host:
        yield Bed(**vars(host), ca=holder["ca"])


@pytest.fixture(scope="module")
def site_key_spki(bed) -> str:
    """What the TLSA record names: the SHA-256 of the vault's key."""
    return key_spki_sha256(Site(bed.site).secrets.site["tls_key"])


def test_a_ca_that_cannot_be_reached_leaves_the_self_signed_certificate(bed, site_key_spki):
    assert "warning:" in bed.deployed.stderr and "no certificate from the CA yet" in bed.deployed.stderr, \
        bed.deployed.stderr
    assert "acme.test" in bed.deployed.stderr  # the cause names the CA
    for port in PORTS:
        cert = served_certificate(bed.ip, port, unchecked())
        assert cert.issuer == cert.subject, port  # the stand-in
        assert spki(cert) == site_key_spki, port
    # The server still receives mail.
    send(bed.ip, ALICE, ["while the CA is down"])
    wait_for_subjects(bed.ip, ALICE, ["while the CA is down"])


def test_the_next_deploy_gets_a_trusted_certificate_for_every_port(bed, site_key_spki):
    bed.ca.resume()
    deployed = bed.deploy()
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "no certificate from the CA yet" not in deployed.stderr
    ctx = trusting(bed.ca.issuing_root())
    presented = {port: served_certificate(bed.ip, port, ctx) for port in PORTS}
    assert len({c.serial_number for c in presented.values()}) == 1, "every port serves the same"
    cert = presented[25]
    assert spki(cert) == site_key_spki  # the vault's key: the TLSA record stays valid
    assert names(cert) == {HOSTNAME, f"mta-sts.{DOMAIN}", f"autoconfig.{DOMAIN}"}
    # The MTA-STS policy, fetched as a sender does: HTTPS to mta-sts.DOMAIN, verified.
    status, policy = https(bed.ip, f"mta-sts.{DOMAIN}", "/.well-known/mta-sts.txt", ctx)
    assert status == 200
    assert f"mx: {HOSTNAME}\n".encode() in policy and b"mode: enforce\n" in policy
    # Thunderbird's autoconfig, over the same trusted certificate.
    status, body = https(bed.ip, f"autoconfig.{DOMAIN}",
                         f"/mail/config-v1.1.xml?emailaddress={ALICE}", ctx)
    assert status == 200
    assert ET.fromstring(body).find("emailProvider/incomingServer/hostname").text == HOSTNAME
    # Outlook POSTs its request (autodiscover. is not in DNS here: the name is not checked).
    loose = trusting(bed.ca.issuing_root())
    loose.check_hostname = False
    status, body = https(bed.ip, f"autodiscover.{DOMAIN}", "/autodiscover/autodiscover.xml",
                         loose, body=AUTODISCOVER_REQUEST)
    assert status == 200 and HOSTNAME.encode() in body and b"<Type>IMAP</Type>" in body
    # Nothing but redirects and challenges on port 80.
    plain = http.client.HTTPConnection(bed.ip, 80, timeout=10)
    plain.request("GET", "/mail/config-v1.1.xml", headers={"Host": f"autoconfig.{DOMAIN}"})
    resp = plain.getresponse()
    assert resp.status == 301
    assert resp.getheader("Location") == f"https://autoconfig.{DOMAIN}/mail/config-v1.1.xml"


def test_verify_finds_the_certificate_trusted_and_the_policy_served(bed, tmp_path, monkeypatch):
    # The controller trusts pebble's root as a machine trusts Let's Encrypt's.
    roots = tmp_path / "roots.pem"
    roots.write_text(bed.ca.issuing_root())
    monkeypatch.setenv("SSL_CERT_FILE", str(roots))
    # DNS as the box serves it: `dns check` as verify's checks too.
    result = mailstack(bed.site, "verify", "--json", "--resolver", bed.internet.resolver_ip)
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    dns = [c for c in checks.values() if c["host"] == "dns"]
    assert [c["name"] for c in dns] == [
        "DNS records published as printed", "reverse DNS (PTR) names the host",
        f"TLSA _25._tcp.{HOSTNAME}. matches the key on port 25",
        f"MTA-STS policy of {DOMAIN} covers its MX"]
    assert all(c["passed"] for c in dns), json.dumps(dns, indent=2)
    # The name the box leaves out is named, and is no failure (not required).
    assert checks["DNS records published as printed"]["detail"].endswith(
        f"not required, not as printed: CNAME autodiscover.{DOMAIN}.")
    # (This host has no fail2ban and the box no real blocklists: those checks are others'.)
    ours = [c for name, c in checks.items() if "certificate" in name or "TLSA" in name
            or "MTA-STS" in name or name.startswith(("port ", "STARTTLS"))]
    assert len(ours) >= 9 and all(c["passed"] for c in ours), json.dumps(ours, indent=2)
    assert checks["certificate trusted, with time left"]["detail"].startswith(
        f"trusted for {HOSTNAME} on every port")
    assert checks[f"MTA-STS policy of {DOMAIN} served"]["detail"] == f"mode enforce, mx {HOSTNAME}"
    assert "every port presents the site's key (TLSA)" in checks
    # A client that trusts nothing of the kind: the check fails and says why.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "none.pem"))
    (tmp_path / "none.pem").write_text("")
    result = mailstack(bed.site, "verify", "--json")
    assert result.returncode != 0
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    assert not checks["certificate trusted, with time left"]["passed"]
    assert "not trusted for" in checks["certificate trusted, with time left"]["detail"]


def test_a_deploy_after_that_changes_nothing(bed):
    again = bed.deploy()
    assert again.returncode == 0, again.stdout + again.stderr
    assert "no changes" in again.stdout, again.stdout
    # No certificate warning (the CA issues now). What the container itself lacks (the
    # firewall, bans, the kernel's inotify limits of the machine) is said on every deploy.
    about_acme = [line for line in again.stderr.splitlines() if line.startswith("warning:")
                  and "CAP_NET_ADMIN" not in line and "fs.inotify" not in line]
    assert not about_acme, again.stderr


def test_a_renewal_is_served_on_every_port_without_a_human(bed, site_key_spki):
    ctx = trusting(bed.ca.issuing_root())
    before = served_certificate(bed.ip, 25, ctx).serial_number
    # The timer's service runs `mailstack-acme issue`: nothing is due, so nothing changes.
    timer = testbed.exec_in(bed.name, ["systemctl", "is-active", "mailstack-acme.timer"], check=False)
    assert timer.stdout.strip() == "active"
    testbed.exec_in(bed.name, ["systemctl", "start", "mailstack-acme.service"])
    assert served_certificate(bed.ip, 25, ctx).serial_number == before
    # A forced renewal: the same program, told the certificate is due.
    renewed = testbed.exec_in(bed.name, [TOOL, "issue", "--force"])
    assert renewed.stdout.startswith("issued"), renewed.stdout
    # Each daemon's reload finishes on its own time (new processes take the new files).
    for port in PORTS:
        deadline = time.monotonic() + 30
        while (cert := served_certificate(bed.ip, port, ctx)).serial_number == before:
            assert time.monotonic() < deadline, f"port {port} still serves the old certificate"
            time.sleep(0.5)
        assert spki(cert) == site_key_spki, port
