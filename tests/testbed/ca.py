"""A throwaway certificate authority for the test bed: certificates for the box's servers
(pebble's API, a receiving MX, an MTA-STS policy host) that a host trusts only once told to
(`trust_on`), as hosts trust a real CA through the system store."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from testbed import exec_in

# Where update-ca-certificates takes local CAs from (a .crt below this directory).
LOCAL_CA_DIR = "/usr/local/share/ca-certificates"
LIFETIME = dt.timedelta(days=30)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@dataclass
class TestCA:
    """A root (ECDSA P-256, a new one per instance) that issues server certificates."""

    __test__ = False  # not a pytest test class
    name: str
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()),
                                            repr=False)
    cert: x509.Certificate = field(init=False, repr=False)

    def __post_init__(self) -> None:
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.name)])
        self.cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256()))

    @property
    def pem(self) -> str:
        return pem(self.cert)

    def issue(self, names: Sequence[str]) -> tuple[str, str]:
        """(certificate, private key) in PEM for a server with these DNS names."""
        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + LIFETIME)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256()))
        return pem(cert), key_pem(key)

    def trust_on(self, host: str, file_name: str) -> None:
        """Make a host trust this CA."""
        trust_ca(host, file_name, self.pem)


def trust_ca(host: str, file_name: str, pem_text: str) -> None:
    """Put a CA into a host's system store (OpenSSL's default paths and
    /etc/ssl/certs/ca-certificates.crt), as a real CA is there."""
    exec_in(host, ["sh", "-c", f"cat > {LOCAL_CA_DIR}/{file_name}.crt"], input=pem_text)
    exec_in(host, ["update-ca-certificates"])
