"""The TSIG key `mailstack dns push` signs with: options.dns_update (strictly validated) and its
secret in the vault, set by `mailstack dns key set`, never in mailstack.yml, never printed."""

from __future__ import annotations

import base64

import pytest
import yaml

from mailstack.site.directory import Site
from mailstack.site.dns_key import SECRET
from mailstack.site.secrets import SITE_FILE, Secrets
from mailstack.site.vault import Vault

KEY = base64.b64encode(bytes(range(32))).decode()


def options(site) -> dict:
    return yaml.safe_load((site / "mailstack.yml").read_text())["options"]


def vault_secrets(site) -> Secrets:
    return Secrets.load(site, Vault(site / ".vault-password"))


def test_a_new_site_publishes_by_hand(cli):
    assert options(cli.site)["dns_update"] is None
    assert "dns_update: null" in (cli.site / "mailstack.yml").read_text()


def test_key_set_keeps_name_and_server_in_the_config_and_the_secret_in_the_vault(cli):
    result = cli("dns", "key", "set", "Update.Example.org.", "--algorithm", "hmac-sha512",
                 "--server", "ns1.example.org:5353", input=KEY + "\n")
    assert result.exit_code == 0, result.output
    assert KEY not in result.output
    assert options(cli.site)["dns_update"] == {
        "key_name": "update.example.org", "algorithm": "hmac-sha512",
        "server": "ns1.example.org:5353"}
    assert vault_secrets(cli.site).site[SECRET] == KEY
    for path in cli.site.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    # Set again (a rotated secret): the server stays, the secret is replaced.
    other = base64.b64encode(bytes(range(1, 33))).decode()
    result = cli("dns", "key", "set", "update.example.org", input=other + "\n")
    assert result.exit_code == 0 and "replaced" in result.output
    assert options(cli.site)["dns_update"]["server"] == "ns1.example.org:5353"
    assert options(cli.site)["dns_update"]["algorithm"] == "hmac-sha256"
    assert vault_secrets(cli.site).site[SECRET] == other
    # Clear: null again, the secret out of the vault; the comment above it stays.
    assert cli("dns", "key", "clear").exit_code == 0
    assert options(cli.site)["dns_update"] is None
    assert SECRET not in vault_secrets(cli.site).site
    text = (cli.site / "mailstack.yml").read_text()
    assert text.index("# `mailstack dns push` publishes") < text.index("dns_update: null")
    assert "no DNS update key is set" in cli("dns", "key", "clear").output


@pytest.mark.parametrize(("args", "secret", "message"), [
    (["k"], "not base64!\n", "is not a base64 TSIG secret"),
    (["k"], base64.b64encode(b"short").decode() + "\n", "is 5 bytes long"),
    (["k"], "\n", "standard input was empty"),
    (["bad key"], KEY, "NAME 'bad key': must be a TSIG key name"),
    (["-k"], KEY, "NAME '-k': must be a TSIG key name"),
    (["k", "--algorithm", "hmac-md5"], KEY, "--algorithm 'hmac-md5': must be one of "
                                           "hmac-sha256, hmac-sha384, hmac-sha512"),
    (["k", "--server", "ns1.example.org:99999"], KEY, "--server 'ns1.example.org:99999': has "
                                                      "port 99999"),
    (["k", "--server", "ns1.example.org\nallow-update"], KEY, "--server"),
])
def test_key_set_refuses_what_it_cannot_use_and_changes_nothing(cli, args, secret, message):
    before = (cli.site / "mailstack.yml").read_bytes(), (cli.site / "secrets" / SITE_FILE).read_bytes()
    result = cli("dns", "key", "set", "--", *args, input=secret) if args[0] == "-k" else \
        cli("dns", "key", "set", *args, input=secret)
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    after = (cli.site / "mailstack.yml").read_bytes(), (cli.site / "secrets" / SITE_FILE).read_bytes()
    assert before == after


@pytest.mark.parametrize(("block", "expected"), [
    ("{key_name: 'a b'}", "options.dns_update.key_name (line"),
    ("{key_name: k, algorithm: hmac-sha1}", "options.dns_update.algorithm (line"),
    ("{key_name: k, server: '192.0.2.1:0'}", "options.dns_update.server (line"),
    ("{key_name: k, server: \"ns.example.org\\nx\"}", "options.dns_update.server (line"),
    ("{key_name: k, zones: [-example.org]}", "options.dns_update.zones[0] (line"),
    ("{key_name: k, secret: abc}", "unknown key 'secret'"),
    ("{algorithm: hmac-sha256}", "options.dns_update.key_name (line"),
])
def test_dns_update_is_validated_field_by_field(cli, block, expected):
    path = cli.site / "mailstack.yml"
    path.write_text(path.read_text().replace("dns_update: null", f"dns_update: {block}"))
    result = cli("dns")
    assert result.exit_code == 2
    assert expected in result.output, result.output


def test_a_damaged_secret_in_the_vault_is_named(cli):
    secrets = vault_secrets(cli.site)
    secrets.site[SECRET] = "garbage!"
    secrets.save()
    result = cli("dns")
    assert result.exit_code == 1
    assert f"{SECRET} is not a base64 TSIG secret" in result.output
    assert "mailstack dns key set" in result.output


def test_push_without_a_key_says_how_to_set_one(cli):
    result = cli("dns", "push")
    assert result.exit_code == 1
    assert "options.dns_update is not set" in result.output
    assert "mailstack dns key set NAME" in result.output
    # The key named in mailstack.yml by hand, its secret never given: named too.
    path = cli.site / "mailstack.yml"
    path.write_text(path.read_text().replace("dns_update: null", "dns_update: {key_name: k}"))
    result = cli("dns", "push")
    assert result.exit_code == 1
    assert "the vault has no secret for the TSIG key k" in result.output


def test_push_refuses_a_host_without_an_address(tmp_path, runner):
    from mailstack.cli import app
    from mailstack.site.directory import InitOptions, init_site

    site = init_site(tmp_path / "s", InitOptions("example.org", "mail.example.org",
                                                   "vps.provider.example"))
    assert runner.invoke(app, ["--site", str(site), "dns", "key", "set", "k"],
                         input=KEY).exit_code == 0
    result = runner.invoke(app, ["--site", str(site), "dns", "push"])
    assert result.exit_code == 1
    assert "the inventory gives the host no IP address" in result.output
    assert "mail.example.org. A <IPv4 of vps.provider.example>" in result.output
    assert Site(site).config.options.dns_update.key_name == "k"
