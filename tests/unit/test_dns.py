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


def _records(cli) -> list[dict]:
    result = cli("dns", "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _by_name(recs: list[dict], type: str) -> dict[str, str]:
    return {r["name"]: r["value"] for r in recs if r["type"] == type}


def test_every_domain_gets_mta_sts_tls_rpt_web_names_and_srv_records(cli):
    from mailstack.render.context import mta_sts_policy, web_names
    from mailstack.site.directory import Site

    assert cli("domain", "add", "example.net").exit_code == 0
    recs = _records(cli)
    cfg = Site(cli.site).config
    txt = _by_name(recs, "TXT")
    for d in ("example.org", "example.net"):
        assert txt[f"_mta-sts.{d}."] == f"v=STSv1; id={mta_sts_policy(cfg)['id']}"
        assert txt[f"_smtp._tls.{d}."] == "v=TLSRPTv1; rua=mailto:postmaster@example.org"
    # The web names the server certifies and serves, each a CNAME to the host name.
    cnames = _by_name(recs, "CNAME")
    assert set(cnames) == {f"{n}." for n in web_names(cfg)}
    assert set(cnames.values()) == {"mail.example.org."}
    # RFC 6186/8314: what is offered, and "0 0 0 ." for what is not.
    srv = _by_name(recs, "SRV")
    assert srv["_submissions._tcp.example.net."] == "0 1 465 mail.example.org."
    assert srv["_submission._tcp.example.net."] == "0 1 587 mail.example.org."
    assert srv["_imaps._tcp.example.net."] == "0 1 993 mail.example.org."
    for service in ("_imap._tcp", "_pop3._tcp", "_pop3s._tcp"):
        assert srv[f"{service}.example.org."] == "0 0 0 ."
    assert len(srv) == 12


def test_with_pop3_the_srv_record_names_pop3s_and_plain_pop3_stays_not_offered(cli):
    path = cli.site / "mailstack.yml"
    path.write_text(path.read_text().replace("  pop3: false", "  pop3: true"))
    srv = _by_name(_records(cli), "SRV")
    assert srv["_pop3s._tcp.example.org."] == "0 1 995 mail.example.org."
    assert srv["_pop3._tcp.example.org."] == "0 0 0 ."
    assert srv["_imap._tcp.example.org."] == "0 0 0 ."


def test_with_the_groupware_dav_clients_find_sogo_over_https_only(cli):
    """RFC 6764: SRV and a TXT path for CalDAV and CardDAV over HTTPS; the plain ones are
    "not offered". Without the option there are none."""
    assert not [r for r in _records(cli) if "dav" in r["name"]]
    path = cli.site / "mailstack.yml"
    path.write_text(path.read_text().replace("  groupware: false", "  groupware: true"))
    records = _records(cli)
    srv, txt = _by_name(records, "SRV"), _by_name(records, "TXT")
    for service in ("_caldavs._tcp", "_carddavs._tcp"):
        assert srv[f"{service}.example.org."] == "0 1 443 mail.example.org."
        assert txt[f"{service}.example.org."] == "path=/SOGo/dav/"
    for service in ("_caldav._tcp", "_carddav._tcp"):
        assert srv[f"{service}.example.org."] == "0 0 0 ."


def test_tlsa_names_the_vault_key_and_a_site_without_one_gets_a_note(cli):
    from mailstack.site.tls import tlsa_311

    secrets = Secrets.load(cli.site, Vault(cli.site / ".vault-password"))
    tlsa = _by_name(_records(cli), "TLSA")
    assert tlsa == {"_25._tcp.mail.example.org.": tlsa_311(secrets.site["tls_key"])}
    # A site made before the key lived in the vault: the other records, and a note.
    secrets.site.pop("tls_key")
    secrets.save()
    zone = cli("dns")
    assert zone.exit_code == 0, zone.output
    assert " IN TLSA " not in " ".join(zone.stdout.split())
    assert "; no TLSA record for _25._tcp.mail.example.org: the vault has no TLS key" in zone.stdout
    assert "mailstack tls new-key" in zone.stderr
    assert "TLSA" not in {r["type"] for r in _records(cli)}


def test_dmarc_reports_go_to_admin_email_with_the_consent_rfc_7489_asks(cli):
    path = cli.site / "mailstack.yml"
    assert _by_name(_records(cli), "TXT")["_dmarc.example.org."] == (
        "v=DMARC1; p=quarantine; adkim=r; aspf=r; rua=mailto:postmaster@example.org")
    # Reports about example.net go to example.org: one of ours, so its consent is printed.
    assert cli("domain", "add", "example.net").exit_code == 0
    txt = _by_name(_records(cli), "TXT")
    assert txt["_dmarc.example.net."].endswith("rua=mailto:postmaster@example.org")
    assert txt["example.net._report._dmarc.example.org."] == "v=DMARC1"
    assert "example.org._report._dmarc.example.org." not in txt
    # An admin outside the site: the other domain must consent, which we can only say.
    path.write_text(path.read_text().replace("admin_email: postmaster@example.org",
                                             "admin_email: ops@elsewhere.example"))
    recs = _records(cli)
    dmarc = next(r for r in recs if r["name"] == "_dmarc.example.org.")
    assert dmarc["value"].endswith("rua=mailto:ops@elsewhere.example")
    assert "RFC 7489 7.1" in dmarc["note"]
    assert 'example.org._report._dmarc.elsewhere.example. "v=DMARC1"' in dmarc["note"]
    assert not [r for r in recs if "_report._dmarc" in r["name"]]


def test_the_output_is_the_same_every_time(cli):
    assert cli("domain", "add", "example.net").exit_code == 0
    first, second = cli("dns").output, cli("dns").output
    assert first == second
    names = [r["name"] for r in _records(cli)]
    assert names[:2] == ["mail.example.org.", "_25._tcp.mail.example.org."]
    assert names.index("example.org.") < names.index("example.net.")
    assert names[-1].endswith(".in-addr.arpa.")  # the PTR comes last


def test_a_host_name_that_is_a_web_name_gets_no_cname_loop(tmp_path, runner):
    from mailstack.cli import app
    from mailstack.site.directory import InitOptions, init_site

    site = init_site(tmp_path / "s", InitOptions("example.org", "autoconfig.example.org",
                                                   "203.0.113.7"))
    recs = json.loads(runner.invoke(app, ["--site", str(site), "dns", "--format", "json"]).output)
    assert "autoconfig.example.org." not in _by_name(recs, "CNAME")
    assert _by_name(recs, "A") == {"autoconfig.example.org.": "203.0.113.7"}
