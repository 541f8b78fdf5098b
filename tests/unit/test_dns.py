"""`mailstack dns`: the records a site needs, in zone and JSON form."""

from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives import serialization

from mailstack.site.secrets import Secrets
from mailstack.site.vault import Vault


def test_zone_lists_every_record_with_split_dkim(cli):
    cli("domain", "add", "example.net")
    result = cli("dns")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "mail.example.org. 3600 IN A 203.0.113.7" in " ".join(out.split())
    for domain in ("example.org", "example.net"):
        assert f"{domain}." in out
        assert f'{domain}. 3600 IN TXT "v=spf1 mx -all"' in " ".join(out.split())
        assert f"_dmarc.{domain}." in out
    dkim_line = next(line for line in out.splitlines() if "_domainkey.example.org." in line)
    chunks = dkim_line.split('"')[1::2]
    assert len(chunks) == 2 and all(len(c) <= 255 for c in chunks)
    assert "PTR mail.example.org." in out and "7.113.0.203.in-addr.arpa." in out


def test_json_records_and_the_dkim_key_matches_the_secret(cli):
    result = cli("dns", "--format", "json")
    assert result.exit_code == 0, result.output
    recs = json.loads(result.output)
    assert all({"name", "type", "value", "ttl"} <= set(r) for r in recs)
    assert all(r["name"].endswith(".") for r in recs)
    by_type = {(r["type"], r["name"]): r["value"] for r in recs}
    assert by_type[("MX", "example.org.")] == "10 mail.example.org."
    assert by_type[("A", "mail.example.org.")] == "203.0.113.7"
    dkim = next(r for r in recs if "_domainkey" in r["name"])
    p = dkim["value"].split("p=")[1]
    secrets = Secrets.load(cli.site, Vault(cli.site / ".vault-password"))
    key = serialization.load_pem_private_key(
        secrets.dkim["example.org"]["private_key"].encode(), None)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    assert base64.b64decode(p) == der
    assert dkim["name"] == f"{secrets.dkim['example.org']['selector']}._domainkey.example.org."


def test_unknown_format_is_refused(cli):
    result = cli("dns", "--format", "xml")
    assert result.exit_code == 1
    assert "choose zone or json" in result.output


def test_spf_names_the_relay_host_that_sends_the_mail(cli):
    assert cli("relay", "set", "[email-smtp.eu-west-1.amazonaws.com]:587", "AKIAEXAMPLE",
               "--password-stdin", input="relay-secret-pw\n").exit_code == 0
    zone = cli("dns").output
    assert '"v=spf1 mx ~all"' in zone and "options.relay.spf_include" in zone
    path = cli.site / "mailstack.yml"
    path.write_text(path.read_text().replace("    username: AKIAEXAMPLE",
                                             "    username: AKIAEXAMPLE\n    spf_include: amazonses.com"))
    assert '"v=spf1 mx include:amazonses.com -all"' in cli("dns").output
