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
   MTA-STS policy is served over it in mode enforce;
3. a deploy after that changes nothing;
4. a renewal (forced) is served on every port with no human step, with the same key.
"""

from __future__ import annotations

import socket
import ssl
import urllib.request
from dataclasses import dataclass

import pytest
import testbed
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from testbed.acme import AcmeCA

from mailstack.site.directory import Site

from .helpers import BoxedHost, host_in_a_box, mailstack, send, wait_for_subjects

pytestmark = pytest.mark.testbed
DOMAIN = "cert.test"
HOSTNAME = f"mail.{DOMAIN}"
ALICE = f"alice@{DOMAIN}"
TOOL = "/usr/local/sbin/mailstack-acme"
# Every port that presents the certificate, and how a client gets to TLS on it.
PORTS = {25: "smtp", 587: "smtp", 465: "tls", 993: "tls", 443: "tls"}


@dataclass
class Bed(BoxedHost):
    ca: AcmeCA | None = None

    def deploy(self):
        return mailstack(self.site, "deploy")


def _smtp_reply(stream) -> str:
    lines = []
    while True:
        line = stream.readline().decode()
        if not line:
            raise ConnectionError("the server closed the connection: " + "".join(lines))
        lines.append(line)
        if line[3:4] != "-":
            return "".join(lines)


def served_certificate(ip: str, port: int, ctx: ssl.SSLContext,
                       server_name: str = HOSTNAME) -> x509.Certificate:
    """The certificate a port presents to a client that checks it with ctx (SNI and name
    check: server_name); STARTTLS first on the SMTP ports."""
    sock = socket.create_connection((ip, port), timeout=15)
    try:
        if PORTS[port] == "smtp":
            stream = sock.makefile("rb")
            assert _smtp_reply(stream).startswith("220")
            sock.sendall(b"EHLO client.test\r\n")
            assert "STARTTLS" in _smtp_reply(stream)
            sock.sendall(b"STARTTLS\r\n")
            assert _smtp_reply(stream).startswith("220")
        with ctx.wrap_socket(sock, server_hostname=server_name) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    finally:
        sock.close()


def unchecked() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def trusting(root_pem: str) -> ssl.SSLContext:
    """A client that trusts only the CA's root, and checks the name."""
    return ssl.create_default_context(cadata=root_pem)


def spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


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
def site_key_spki(bed) -> bytes:
    pem = Site(bed.site).secrets.site["tls_key"]
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


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
    served = {port: served_certificate(bed.ip, port, ctx) for port in PORTS}
    assert len({c.serial_number for c in served.values()}) == 1, "every port serves the same"
    cert = served[25]
    assert spki(cert) == site_key_spki  # the vault's key: the TLSA record stays valid
    assert names(cert) == {HOSTNAME, f"mta-sts.{DOMAIN}", f"autoconfig.{DOMAIN}"}
    # The MTA-STS policy, fetched as a sender does: HTTPS to mta-sts.DOMAIN, verified.
    policy_ctx = trusting(bed.ca.issuing_root())
    served_certificate(bed.ip, 443, policy_ctx, server_name=f"mta-sts.{DOMAIN}")
    request = urllib.request.Request(f"https://{bed.ip}/.well-known/mta-sts.txt",
                                     headers={"Host": f"mta-sts.{DOMAIN}"})
    policy_ctx.check_hostname = False  # urllib sends the address as SNI; the chain is checked
    with urllib.request.urlopen(request, context=policy_ctx, timeout=10) as resp:
        policy = resp.read().decode()
    assert f"mx: {HOSTNAME}\n" in policy and "mode: enforce\n" in policy


def test_a_deploy_after_that_changes_nothing(bed):
    again = bed.deploy()
    assert again.returncode == 0, again.stdout + again.stderr
    assert "no changes" in again.stdout, again.stdout
    assert "warning:" not in again.stderr, again.stderr


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
    for port in PORTS:
        cert = served_certificate(bed.ip, port, ctx)
        assert cert.serial_number != before, f"port {port} still serves the old certificate"
        assert spki(cert) == site_key_spki, port
