"""`mailstack verify`'s DKIM check (mailstack/verify/dkim.py): messages signed for real with
dkimpy and the site's own kind of keys, verified against the records `mailstack dns`
publishes."""

from __future__ import annotations

from email.message import EmailMessage

import dkim
import pytest

from mailstack.render.dns import records
from mailstack.site.directory import Site
from mailstack.site.inventory import load_hosts
from mailstack.site.secrets import new_dkim_key
from mailstack.verify.dkim import check_signature, dkim_records

DOMAIN = "example.org"
SIGNED = [b"from", b"to", b"subject", b"date", b"message-id"]


@pytest.fixture(scope="module")
def site_key() -> dict[str, str]:
    return new_dkim_key()


@pytest.fixture(scope="module")
def keys(site_key) -> dict[str, dict[str, str]]:
    """The secrets' dkim dict: the site's key for its domain (and one for a second domain)."""
    return {DOMAIN: site_key, "example.net": new_dkim_key()}


def message(subject: str = "round trip", body: str = "Hello from the verify mailbox.\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = f"verify@{DOMAIN}"
    msg["To"] = f"alice@{DOMAIN}"
    msg["Subject"] = subject
    msg["Date"] = "Mon, 06 Jan 2025 10:00:00 +0000"
    msg["Message-ID"] = f"<test.1@{DOMAIN}>"
    msg.set_content(body)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def sign(raw: bytes, key: dict[str, str], domain: str = DOMAIN) -> bytes:
    """What OpenDKIM does on the server: prepend a DKIM-Signature made with the key."""
    return dkim.sign(raw, key["selector"].encode(), domain.encode(),
                     key["private_key"].encode(), include_headers=SIGNED) + raw


def test_a_message_signed_with_the_sites_key_verifies(keys, site_key):
    ok, detail = check_signature(sign(message(), site_key), keys)
    assert ok, detail
    assert detail.startswith("signature verifies with the site's key")
    assert "v=1;" in detail  # the start of the signature header, for the report


def test_each_domain_verifies_with_its_own_key(keys):
    raw = message()
    assert check_signature(sign(raw, keys["example.net"], "example.net"), keys)[0]
    # example.net's key does not sign for example.org
    assert not check_signature(sign(raw, keys["example.net"], DOMAIN), keys)[0]


def test_a_tampered_body_is_refused(keys, site_key):
    signed = sign(message(body="Pay 10 EUR.\n"), site_key)
    tampered = signed.replace(b"Pay 10 EUR.", b"Pay 99 EUR.")
    assert tampered != signed
    ok, detail = check_signature(tampered, keys)
    assert not ok
    assert detail.startswith("signature INVALID")


def test_a_tampered_signed_header_is_refused(keys, site_key):
    signed = sign(message(subject="invoice"), site_key)
    tampered = signed.replace(b"Subject: invoice", b"Subject: urgent invoice")
    assert tampered != signed
    ok, detail = check_signature(tampered, keys)
    assert not ok
    assert detail.startswith("signature INVALID")


def test_a_message_signed_with_another_key_is_refused(keys, site_key):
    stranger = new_dkim_key()
    assert stranger["selector"] == site_key["selector"]  # same selector and domain, other key
    ok, detail = check_signature(sign(message(), stranger), keys)
    assert not ok
    assert "INVALID" in detail


def test_a_signature_from_a_selector_the_site_does_not_publish_is_refused(keys, site_key):
    old = dict(site_key, selector="s1999")
    assert not check_signature(sign(message(), old), keys)[0]


def test_a_domain_without_a_site_key_is_refused(site_key):
    assert not check_signature(sign(message(), site_key), {"example.net": site_key})[0]


def test_a_message_without_a_signature_says_so(keys):
    assert check_signature(message(), keys) == (False, "no DKIM-Signature header")


def test_the_records_are_those_mailstack_dns_publishes(cli, site_dir):
    """The check looks keys up under the names and values `mailstack dns` tells the user to
    publish: a mismatch would pass verify and fail at every real receiver (or the reverse)."""
    assert cli("domain", "add", "example.net").exit_code == 0
    site = Site(site_dir)
    assert set(site.secrets.dkim) == {"example.org", "example.net"}
    published = {r.name: r.value.encode()
                 for r in records(site.config, site.secrets.dkim, load_hosts(site_dir))
                 if r.type == "TXT" and "._domainkey." in r.name}
    ours = dkim_records(site.secrets.dkim)
    assert ours == published
    assert set(ours) == {f"{k['selector']}._domainkey.{d}." for d, k in site.secrets.dkim.items()}
    assert all(v.startswith(b"v=DKIM1; k=rsa; p=") for v in ours.values())


def test_a_message_signed_with_the_site_secret_verifies_against_the_published_record(site_dir):
    site = Site(site_dir)
    key = site.secrets.dkim[DOMAIN]
    raw = sign(message(), key)
    assert check_signature(raw, site.secrets.dkim)[0]
    # and dkimpy itself, looking the key up in the published records, agrees
    published = {r.name: r.value.encode()
                 for r in records(site.config, site.secrets.dkim, load_hosts(site_dir))}
    assert dkim.verify(raw, dnsfunc=lambda name, timeout=5: published.get(
        name.decode() if isinstance(name, bytes) else name, b""))
