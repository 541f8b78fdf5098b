"""mailstack-acme, the shipped file run as a real process with real openssl: when the served
certificate is current (then the CA is never asked), the names it leaves out, its status, and
the challenge hook, which writes only what a CA's token may name. Issuing against a real CA
is tests/e2e/test_acme.py (pebble)."""

from __future__ import annotations

import datetime as dt
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from mailstack.host import acme

# Runs the shipped file with its CONF and UACME pointed elsewhere: UACME is a path that does
# not exist, so a test passes only if the CA is never asked.
RUN = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("mailstack_acme", sys.argv.pop(1))
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)
tool.CONF = sys.argv.pop(1)
tool.UACME = "/nonexistent/uacme"
sys.exit(tool.main())
"""


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(key, names, *, issuer_key=None, issuer="test CA", days=60) -> bytes:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(names[0]))
               .issuer_name(_name(issuer) if issuer_key else _name(names[0]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1))
               .not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                              critical=False))
    return builder.sign(issuer_key or key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def host(tmp_path):
    """A host's files: the site's key, a conf like the rendered acme.json (host name
    localhost, which resolves without a network)."""
    key = _key()
    key_file = tmp_path / "privkey.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    conf = {"directory": "https://acme.invalid/dir", "email": "postmaster@example.org",
            "confdir": str(tmp_path / "acme"), "webroot": str(tmp_path / "webroot"),
            "hostname": "localhost", "names": ["mta-sts.example.invalid"],
            "key_file": str(key_file), "cert_file": str(tmp_path / "fullchain.pem"),
            "renew_days": 30, "reload_units": []}
    (tmp_path / "acme.json").write_text(json.dumps(conf))
    return {"key": key, "conf": conf, "dir": tmp_path}


def run(host, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-c", RUN, acme.__file__,
                           str(host["dir"] / "acme.json"), *args],
                          capture_output=True, text=True, timeout=30, check=False)


def serve(host, pem: bytes) -> None:
    Path(host["conf"]["cert_file"]).write_bytes(pem)


def test_a_current_certificate_asks_nothing_of_the_ca(host):
    ca = _key()
    serve(host, _cert(host["key"], ["localhost"], issuer_key=ca))
    proc = run(host, "issue")
    assert proc.returncode == 0, proc.stderr
    # The web name does not resolve: left out, named, and it costs nothing.
    assert proc.stdout.strip() == "current: localhost; not yet in DNS: mta-sts.example.invalid"


@pytest.mark.parametrize("served, why", [
    ("self-signed", "the served certificate is self-signed"),
    ("other key", "the served certificate is not for the site's key"),
    ("other names", "does not cover localhost"),
    ("expiring", "expires in"),
    ("none", "no certificate is served"),
])
def test_a_certificate_that_is_not_current_goes_to_the_ca(host, served, why):
    ca = _key()
    pem = {"self-signed": lambda: _cert(host["key"], ["localhost"]),
           "other key": lambda: _cert(_key(), ["localhost"], issuer_key=ca),
           "other names": lambda: _cert(host["key"], ["mail.example.org"], issuer_key=ca),
           "expiring": lambda: _cert(host["key"], ["localhost"], issuer_key=ca, days=10),
           "none": lambda: None}[served]()
    if pem:
        serve(host, pem)
    before = Path(host["conf"]["cert_file"]).read_bytes() if pem else None
    proc = run(host, "issue")
    # The CA was asked (and, here, is a program that does not exist): a failure naming why
    # a certificate was due, the served one untouched.
    assert proc.returncode == 1
    assert proc.stderr.startswith("mailstack-acme: a certificate is due (") and why in proc.stderr
    assert "cannot run /nonexistent/uacme" in proc.stderr and "Traceback" not in proc.stderr
    if pem:
        assert Path(host["conf"]["cert_file"]).read_bytes() == before


def test_a_host_name_that_does_not_resolve_is_named(host):
    conf = {**host["conf"], "hostname": "mail.example.invalid"}
    (host["dir"] / "acme.json").write_text(json.dumps(conf))
    proc = run(host, "issue")
    assert proc.returncode == 1
    assert "mail.example.invalid does not resolve: publish its A record" in proc.stderr


def test_status_describes_the_served_certificate(host):
    serve(host, _cert(host["key"], ["localhost", "mta-sts.example.invalid"]))
    proc = run(host, "status")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["self_signed"] is True
    assert info["names"] == ["localhost", "mta-sts.example.invalid"]
    assert 58 <= info["days_left"] <= 60


def test_the_hook_answers_http01_in_the_webroot_and_cleans_up(host):
    challenge = Path(host["conf"]["webroot"]) / ".well-known" / "acme-challenge"
    challenge.mkdir(parents=True)
    assert run(host, "begin", "http-01", "localhost", "tok-EN_1", "tok-EN_1.thumb").returncode == 0
    answer = challenge / "tok-EN_1"
    assert answer.read_text() == "tok-EN_1.thumb"
    assert stat.S_IMODE(answer.stat().st_mode) == 0o644  # nginx reads it
    assert run(host, "done", "http-01", "localhost", "tok-EN_1", "tok-EN_1.thumb").returncode == 0
    assert not answer.exists()


@pytest.mark.parametrize("kind, token", [("http-01", "../../etc/passwd"), ("http-01", "a/b"),
                                         ("http-01", ""), ("dns-01", "token")])
def test_the_hook_declines_what_it_must_not_write(host, kind, token):
    challenge = Path(host["conf"]["webroot"]) / ".well-known" / "acme-challenge"
    challenge.mkdir(parents=True)
    assert run(host, "begin", kind, "localhost", token, "auth").returncode == 1
    assert list(challenge.iterdir()) == []
