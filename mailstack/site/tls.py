"""The server's TLS key (and, with options.tls.certificate: files, its certificate), kept in
the vault like the DKIM keys.

One key for the site, made on the controller: `mailstack dns` prints the DANE TLSA record
(`3 1 1`, the SHA-256 of the public key) before the first deploy, every renewal and every
host (a rebuilt VPS, a second MX) presents the same key, so that record stays valid.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailstack.errors import ConfigError, MailstackError
from mailstack.site.directory import Site, edits_site

KEY = "tls_key"
CERTIFICATE = "tls_certificate"  # the chain, leaf first (options.tls.certificate: files)
RSA_BITS = 2048  # what every client and CA takes; TLSA and DKIM are the same size
MAX_IMPORT_BYTES = 256 * 1024


def new_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _public_der(private_pem: str) -> bytes:
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def spki_sha256(private_pem: str) -> str:
    """SHA-256 of the key's SubjectPublicKeyInfo, in hex."""
    return hashlib.sha256(_public_der(private_pem)).hexdigest()


def tlsa_311(private_pem: str) -> str:
    """The DANE-EE TLSA data `3 1 1 <sha256 of the SubjectPublicKeyInfo>`: it names the key,
    not the certificate, so renewals with the same key keep it valid."""
    return "3 1 1 " + spki_sha256(private_pem)


def key_problem(value: object) -> str | None:
    if not isinstance(value, str):
        return "is not a PEM private key"
    try:
        _public_der(value)
    except (ValueError, TypeError):
        return "is not a PEM private key"
    return None


def chain_problem(chain: object, private_pem: str) -> str | None:
    """Why a certificate chain cannot be served with this key (None: it can)."""
    if not isinstance(chain, str):
        return "is not a PEM certificate chain"
    try:
        certs = x509.load_pem_x509_certificates(chain.encode())
    except ValueError:
        return "is not a PEM certificate chain"
    leaf = certs[0].public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    if leaf != _public_der(private_pem):
        return "does not belong to the key (its first certificate must be the server's)"
    return None


def site_key(secrets: Any) -> str:
    """The site's TLS key (PEM) from its decrypted secrets."""
    key = secrets.site.get(KEY)
    if not key:
        raise ConfigError(
            "secrets/site.yml has no TLS key (a site made before mailstack kept the server's "
            "key in the vault): make one with `mailstack tls new-key`, then deploy and publish "
            "the new TLSA record (`mailstack dns`)")
    return str(key)


def _names(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(n).lower() for n in ext.value.get_values_for_type(x509.DNSName)]


def _read(path: Path, what: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MailstackError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    if len(data) > MAX_IMPORT_BYTES:
        raise MailstackError(f"{path}: too large for a {what}")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise MailstackError(f"{path}: the {what} must be PEM text") from None


@edits_site
def import_files(site: Site, cert_path: Path, key_path: Path) -> list[str]:
    """Take a certificate chain and its key into the vault (options.tls.certificate: files
    serves them). Refused unless they belong together and name the host. Returns warnings."""
    chain, key = _read(cert_path, "certificate chain"), _read(key_path, "private key")
    if key_problem(key):
        raise MailstackError(f"{key_path}: not an unencrypted PEM private key")
    if p := chain_problem(chain, key):
        raise MailstackError(f"{cert_path}: {p}; nothing was imported")
    leaf = x509.load_pem_x509_certificates(chain.encode())[0]
    hostname = site.config.hostname
    if hostname not in _names(leaf):
        raise MailstackError(f"{cert_path}: the certificate does not name {hostname} "
                             f"(it names {', '.join(_names(leaf)) or 'nothing'}); nothing was "
                             "imported")
    warnings = []
    days = (leaf.not_valid_after_utc - _dt.datetime.now(_dt.UTC)).days
    if days < 14:
        warnings.append(f"the certificate expires in {days} days")
    if site.secrets.site.get(KEY) and site.secrets.site[KEY] != key:
        warnings.append("the key changed: publish the new TLSA record (`mailstack dns`) "
                        "before senders that check DANE see the new key")
    site.secrets.site.update({KEY: key, CERTIFICATE: chain})
    site.commit(config=False)
    return warnings


@edits_site
def make_new_key(site: Site, *, replace: bool) -> str:
    """A new TLS key in the vault (a site made before keys lived there, or a rotation).
    Returns its TLSA data."""
    if site.secrets.site.get(KEY) and not replace:
        raise MailstackError(
            "this site already has a TLS key; a new one invalidates the published TLSA "
            "record until DNS has the new one. Pass --replace if that is what you want")
    key = new_key()
    site.secrets.site[KEY] = key
    site.secrets.site.pop(CERTIFICATE, None)  # an imported certificate is for the old key
    site.commit(config=False)
    return tlsa_311(key)
