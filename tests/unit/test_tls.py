"""The server's TLS key in the vault, `mailstack tls new-key|import`, and what options.tls
renders: the ACME client's files only with acme, an imported chain only with files, the
MTA-STS policy's mode by whether clients can trust the certificate."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from mailstack.errors import ConfigError
from mailstack.render.renderer import render_site
from mailstack.site.directory import Site
from mailstack.site.secrets import SECRETS_DIR, SITE_FILE
from mailstack.site.tls import CERTIFICATE, KEY, tlsa_311

HOST = "mail.example.org"


def _pem_key(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _certificate(key: rsa.RSAPrivateKey, *names: str, days: int = 90) -> str:
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _files(tmp_path: Path, key: rsa.RSAPrivateKey, chain: str) -> tuple[Path, Path]:
    cert_file, key_file = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    cert_file.write_text(chain)
    key_file.write_text(_pem_key(key))
    return cert_file, key_file


def _set_certificate(site: Path, mode: str) -> None:
    config = site / "mailstack.yml"
    config.write_text(config.read_text().replace("    certificate: acme\n",
                                                 f"    certificate: {mode}\n"))


def _rendered(site: Path) -> dict[str, str]:
    (host_files,) = render_site(Site(site)).values()
    return {str(f.path): f.content for f in host_files}


def _vault_bytes(site: Path) -> bytes:
    return (site / SECRETS_DIR / SITE_FILE).read_bytes()


def test_tlsa_is_the_sha256_of_the_public_key_as_openssl_computes_it(cli):
    pem = Site(cli.site).secrets.site[KEY]
    der = subprocess.run(["openssl", "pkey", "-pubout", "-outform", "DER"], input=pem.encode(),
                         capture_output=True, check=True).stdout
    assert tlsa_311(pem) == "3 1 1 " + hashlib.sha256(der).hexdigest()


def test_new_key_replaces_only_when_told(cli):
    before = Site(cli.site).secrets.site
    refused = cli("tls", "new-key")
    assert refused.exit_code != 0 and "--replace" in refused.output
    assert Site(cli.site).secrets.site == before
    made = cli("tls", "new-key", "--replace")
    assert made.exit_code == 0, made.output
    after = Site(cli.site).secrets.site
    assert after[KEY] != before[KEY]
    assert tlsa_311(after[KEY]) in made.output
    assert {k: v for k, v in after.items() if k != KEY} == {k: v for k, v in before.items() if k != KEY}


def test_a_site_without_a_key_names_the_command_that_makes_one(cli):
    site = Site(cli.site)
    data = site.vault.read(cli.site / SECRETS_DIR / SITE_FILE)
    del data[KEY]
    site.vault.write(cli.site / SECRETS_DIR / SITE_FILE, data)
    with pytest.raises(ConfigError, match="mailstack tls new-key"):
        render_site(Site(cli.site))
    assert cli("tls", "new-key").exit_code == 0
    assert _rendered(cli.site)["etc/mailstack/tls/privkey.pem"] == Site(cli.site).secrets.site[KEY]


def test_an_imported_certificate_is_served_with_its_key(cli, tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    chain = _certificate(key, HOST, "mta-sts.example.org")
    imported = cli("tls", "import", *map(str, _files(tmp_path, key, chain)))
    assert imported.exit_code == 0, imported.output
    assert "the key changed" in imported.output  # the TLSA record must follow
    assert Site(cli.site).secrets.site[CERTIFICATE] == chain
    _set_certificate(cli.site, "files")
    files = _rendered(cli.site)
    assert files["etc/mailstack/tls/fullchain.pem"] == chain
    assert files["etc/mailstack/tls/privkey.pem"] == _pem_key(key)
    assert not any(p.startswith(("etc/mailstack/acme", "usr/local/sbin/mailstack-acme"))
                   for p in files)


@pytest.mark.parametrize("problem", ["other key", "other name", "not pem", "expired soon"])
def test_an_import_that_cannot_be_served_changes_nothing(cli, tmp_path, problem):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    chain = {"other key": _certificate(other, HOST), "other name": _certificate(key, "mail.example.net"),
             "not pem": "hello\n", "expired soon": _certificate(key, HOST, days=3)}[problem]
    before = _vault_bytes(cli.site)
    result = cli("tls", "import", *map(str, _files(tmp_path, key, chain)))
    if problem == "expired soon":  # served, with a warning
        assert result.exit_code == 0 and "expires in" in result.output
        return
    assert result.exit_code != 0
    assert {"other key": "does not belong to the key", "other name": f"does not name {HOST}",
            "not pem": "not a PEM certificate chain"}[problem] in result.output
    assert "nothing was imported" in result.output or problem == "not pem"
    assert _vault_bytes(cli.site) == before


def test_files_without_an_import_names_the_command(cli):
    _set_certificate(cli.site, "files")
    with pytest.raises(ConfigError, match="mailstack tls import"):
        render_site(Site(cli.site))


def test_acme_renders_its_client_and_a_policy_in_enforce_mode(cli):
    files = _rendered(cli.site)
    conf = json.loads(files["etc/mailstack/acme.json"])
    assert conf["hostname"] == HOST
    assert conf["names"] == ["mta-sts.example.org", "autoconfig.example.org",
                             "autodiscover.example.org"]
    assert conf["directory"] == "https://acme-v02.api.letsencrypt.org/directory"
    assert conf["email"] == "postmaster@example.org"
    assert "usr/local/sbin/mailstack-acme" in files
    assert "etc/systemd/system/mailstack-acme.timer" in files
    assert "etc/mailstack/tls/fullchain.pem" not in files  # made on the host
    assert "mode: enforce\n" in files["var/www/mailstack/mta-sts.txt"]


def test_self_signed_renders_no_acme_client_and_a_testing_policy(cli):
    enforce = _rendered(cli.site)["etc/nginx/conf.d/mailstack.conf"]
    _set_certificate(cli.site, "self-signed")
    files = _rendered(cli.site)
    assert not [p for p in files if "acme" in p.split("/")[-1]]
    assert files["var/www/mailstack/mta-sts.txt"] == (
        f"version: STSv1\nmode: testing\nmx: {HOST}\nmax_age: 86400\n")
    # The policy id (in nginx's comment and the TXT record) changes with the policy.
    assert files["etc/nginx/conf.d/mailstack.conf"] != enforce
