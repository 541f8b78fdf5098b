"""`mailstack dns push` and `mailstack dns check` against the internet in a box, as a user runs
them: Knot is the primary of site.test (on port 53 of ns.test, as the zone's NS and SOA
records say) and takes updates signed with the box's TSIG key; unbound is the resolver; a
stand-in for the mail host (Postfix with STARTTLS on port 25, presenting the site's key
as a deployed host does: tests/e2e/test_acme.py proves that part) is at the site's address.

One box and one site for the module; the tests run in order, each leaving the zone as
`mailstack dns` prints it.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

import testbed
from mailstack.site.directory import Site
from testbed import Internet, Record
from testbed.internet import internet_image, write_file

pytestmark = pytest.mark.testbed

DOMAIN = "site.test"
HOSTNAME = f"mail.{DOMAIN}"
RECORDS = 17  # what `mailstack dns` prints for one domain and one IPv4 host, the PTR aside


def mailstack(site: Path | None, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mailstack", *(["--site", str(site)] if site else []), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MAILSTACK_"))}
    return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=120,
                          env=env, check=False)


@pytest.fixture(scope="module")
def box(network: str, tools) -> Iterator[Internet]:
    with Internet(network, prefix=tools.unique_name("mailstack-inet-dns"), dynamic=(DOMAIN,)) as box:
        yield box


@pytest.fixture(scope="module")
def mail_host(box: Internet, network: str, tools) -> Iterator[testbed.Host]:
    name = tools.unique_name("mailstack-dns-mail")
    try:
        yield testbed.start_host(name, internet_image(), hostname=HOSTNAME, network=network)
    finally:
        testbed.remove_host(name)


@pytest.fixture(scope="module")
def site(box: Internet, mail_host: testbed.Host, tmp_path_factory) -> Path:
    """A site for the mail host, with the box's TSIG key; the provider's PTR for its
    address; Postfix on the host presenting the site's key."""
    site = tmp_path_factory.mktemp("dns") / "site"
    init = mailstack(None, "init", str(site), "--domain", DOMAIN, "--hostname", HOSTNAME,
                     "--host", mail_host.ip)
    assert init.returncode == 0, init.stderr
    key = mailstack(site, "dns", "key", "set", box.tsig.name, "--algorithm", box.tsig.algorithm,
                    input=box.tsig.secret + "\n")
    assert key.returncode == 0, key.stderr
    box.publish([Record(ipaddress.ip_address(mail_host.ip).reverse_pointer, "PTR", f"{HOSTNAME}.")])
    serve_key(mail_host, Site(site).secrets.site["tls_key"])
    return site


def serve_key(host: testbed.Host, key_pem: str) -> None:
    """Postfix on port 25 with STARTTLS and a certificate for this key."""
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTNAME)])
    now = _dt.datetime.now(_dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + _dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    write_file(host.name, "/etc/postfix/tls-key.pem", key_pem)
    write_file(host.name, "/etc/postfix/tls-cert.pem",
               cert.public_bytes(serialization.Encoding.PEM).decode())
    write_file(host.name, "/etc/postfix/main.cf", "\n".join([
        f"myhostname = {HOSTNAME}", "mydestination =", "inet_interfaces = all",
        "inet_protocols = ipv4", "compatibility_level = 3.6", "smtpd_tls_security_level = may",
        "smtpd_tls_cert_file = /etc/postfix/tls-cert.pem",
        "smtpd_tls_key_file = /etc/postfix/tls-key.pem", ""]))
    testbed.exec_in(host.name, ["systemctl", "restart", "postfix"])
    testbed.wait_for_port(host.ip, 25, 15)


def check(site: Path, box: Internet, *args: str) -> subprocess.CompletedProcess[str]:
    return mailstack(site, "dns", "check", "--resolver", box.resolver_ip, *args)


def check_json(site: Path, box: Internet) -> tuple[int, dict]:
    result = check(site, box, "--json")
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def push(site: Path, box: Internet) -> subprocess.CompletedProcess[str]:
    """`mailstack dns push`, then the resolver forgets what it cached (as if every TTL had
    passed: the tests do not wait an hour)."""
    result = mailstack(site, "dns", "push", "--resolver", box.resolver_ip)
    box.flush()
    return result


def statuses(data: dict) -> dict[tuple[str, str], str]:
    return {(r["name"], r["type"]): r["status"] for r in data["records"]}


def test_push_publishes_every_record_and_check_finds_them_all_ok(site: Path, box: Internet) -> None:
    code, before = check_json(site, box)
    assert code == 1 and before["ok"] is False
    assert set(statuses(before).values()) == {"missing"}
    pushed = push(site, box)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.strip() == (f"{DOMAIN}.: {RECORDS} records published on ns.test. "
                                     f"({box.ns_ip})")
    code, after = check_json(site, box)
    assert code == 0, after
    assert set(statuses(after).values()) == {"ok"} and len(after["records"]) == RECORDS
    assert after["zones"] == {f"{DOMAIN}.": [{"name": "ns.test.", "addresses": [box.ns_ip]}]}
    # Asked of Knot directly (found through the NS record) and of the resolver.
    assert all([s["source"] for s in r["sources"]] == [f"ns.test. ({box.ns_ip})",
                                                       f"resolver {box.resolver_ip}:53"]
               for r in after["records"])
    assert after["warnings"] == []  # the PTR is the host name, port 25 presents the site's key
    records = json.loads(mailstack(site, "dns", "--format", "json").stdout)
    sts = next(r["value"] for r in records if r["name"] == f"_mta-sts.{DOMAIN}.")
    assert box.dig(f"_mta-sts.{DOMAIN}", "TXT", server=box.ns_ip) == [sts]
    assert box.dig(f"_imap._tcp.{DOMAIN}", "SRV") == ["0 0 0 ."]


def test_a_tampered_record_is_different_with_both_values(site: Path, box: Internet) -> None:
    box.publish([Record(DOMAIN, "TXT", "v=spf1 a -all"),
                 Record(DOMAIN, "TXT", "google-site-verification=kept")])
    result = check(site, box)
    assert result.returncode == 0, result.stdout  # a different SPF is a policy: reported
    lines = result.stdout.splitlines()
    at = lines.index(next(line for line in lines if line.startswith("different TXT   site.test.")))
    assert lines[at + 1].split() == ["expected:", '"v=spf1', "mx", '-all"']
    assert lines[at + 2].split() == ["found:", '"v=spf1', "a", '-all"']
    assert f"{RECORDS} records: {RECORDS - 1} ok, 1 different" in result.stdout
    # A push puts ours back and leaves the other TXT record alone.
    assert push(site, box).returncode == 0
    assert sorted(box.dig(DOMAIN, "TXT")) == ["google-site-verification=kept", "v=spf1 mx -all"]
    code, data = check_json(site, box)
    assert code == 0 and set(statuses(data).values()) == {"ok"}


def test_a_removed_required_record_is_missing_and_fails(site: Path, box: Internet) -> None:
    box.withdraw(f"_dmarc.{DOMAIN}", "TXT")
    code, data = check_json(site, box)
    assert code == 1 and data["ok"] is False
    dmarc = next(r for r in data["records"] if r["name"] == f"_dmarc.{DOMAIN}.")
    assert (dmarc["status"], dmarc["required"], dmarc["found"]) == ("missing", True, [])
    assert [s["status"] for s in dmarc["sources"]] == ["missing", "missing"]
    assert push(site, box).returncode == 0
    code, data = check_json(site, box)
    assert code == 0, data


def test_a_wrong_tsig_secret_is_refused_and_changes_nothing(site: Path, box: Internet) -> None:
    box.withdraw(f"_dmarc.{DOMAIN}", "TXT")
    serial = box.serial(DOMAIN)
    wrong = mailstack(site, "dns", "key", "set", box.tsig.name, input="QUJD" * 11 + "\n")
    assert wrong.returncode == 0, wrong.stderr
    try:
        result = push(site, box)
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f"error: {DOMAIN}.: ns.test. ({box.ns_ip}) port 53 refused the update: the signature "
            f"with key {box.tsig.name.rstrip('.')} is wrong (BADSIG): the secret in the vault is "
            "not the server's; nothing was changed in that zone; set the key again with "
            f"`mailstack dns key set {box.tsig.name.rstrip('.')} --algorithm hmac-sha256` (the "
            "secret on standard input)")
        assert box.serial(DOMAIN) == serial
        assert box.dig(f"_dmarc.{DOMAIN}", "TXT", server=box.ns_ip) == []
    finally:
        right = mailstack(site, "dns", "key", "set", box.tsig.name, input=box.tsig.secret + "\n")
        assert right.returncode == 0, right.stderr
    assert push(site, box).returncode == 0
    assert box.serial(DOMAIN) > serial


def test_a_host_that_presents_another_key_than_the_tlsa_record_is_a_warning(
        site: Path, box: Internet, mail_host: testbed.Host) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    serve_key(mail_host, other)
    code, data = check_json(site, box)
    assert code == 0 and set(statuses(data).values()) == {"ok"}
    published = next(r["expected"] for r in data["records"] if r["type"] == "TLSA")
    [mismatch, not_vault] = data["warnings"]
    assert mismatch.startswith(f"port 25 of {mail_host.ip} presents a key no published TLSA "
                               "record matches")
    assert f"published: {published}" in mismatch
    assert "run `mailstack deploy`" in not_vault
