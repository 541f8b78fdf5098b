"""A lost or damaged secrets file is never silently replaced: a new storage passphrase would
lock the mail away for good after the next reboot, a new DKIM key would no longer match DNS.
Only `init` and explicit commands generate secrets; everything else stops and says how to
restore the file."""

from __future__ import annotations

import pytest
from conftest import PASSWORD

from mailstack.site.directory import Site
from mailstack.site.secrets import ACCOUNTS_FILE, DKIM_FILE, SECRETS_DIR, SITE_FILE


def _files(site):
    return {p: p.read_bytes() for p in (site / SECRETS_DIR).iterdir()}


@pytest.mark.parametrize("name,held", [(SITE_FILE, "storage passphrase"), (DKIM_FILE, "DKIM"),
                                       (ACCOUNTS_FILE, "password hashes")])
@pytest.mark.parametrize("command", [["render"], ["dns"], ["user", "list"], ["deploy"],
                                     ["domain", "add", "example.net"]])
def test_a_missing_secrets_file_stops_every_command(cli, name, held, command):
    (cli.site / SECRETS_DIR / name).unlink()
    before = _files(cli.site)
    result = cli(*command)
    assert result.exit_code == 1, result.output
    assert f"{SECRETS_DIR}/{name}" in result.output and held in result.output
    assert "git" in result.output and "checkout" in result.output
    assert _files(cli.site) == before  # nothing made up, nothing written
    assert not (cli.site / "build").exists()


def test_a_domain_declared_by_hand_gets_no_key_made_up(cli):
    path = cli.site / "mailstack.yml"
    path.write_text(path.read_text().replace("  - example.org\n", "  - example.org\n  - example.net\n"))
    before = _files(cli.site)
    for command in (["render"], ["dns"]):
        result = cli(*command)
        assert result.exit_code == 1, result.output
        assert "no DKIM key for example.net" in result.output
        assert "mailstack domain add example.net" in result.output
    assert _files(cli.site) == before


def _rewrite(site_dir, name, change):
    site = Site(site_dir)
    data = site.vault.read(site_dir / SECRETS_DIR / name)
    change(data)
    site.vault.write(site_dir / SECRETS_DIR / name, data)


@pytest.mark.parametrize("change,named", [
    (lambda d: d.pop("storage_passphrase"), "storage_passphrase is missing"),
    (lambda d: d["mariadb"].pop("postfix_password"), "mariadb.postfix_password is missing"),
    (lambda d: d.update(storage_passphrase=42), "storage_passphrase is missing or empty"),
])
def test_a_damaged_site_secrets_file_is_named(cli, change, named):
    _rewrite(cli.site, SITE_FILE, change)
    result = cli("render")
    assert result.exit_code == 1 and named in result.output, result.output


def test_a_garbage_dkim_key_is_named(cli):
    _rewrite(cli.site, DKIM_FILE, lambda d: d["example.org"].update(private_key="garbage"))
    result = cli("dns")
    assert result.exit_code == 1
    assert "example.org: the private key is not a PEM key" in result.output


def test_a_non_hash_in_accounts_is_named(cli):
    cli("user", "add", "alice@example.org", "--password-stdin", input=PASSWORD + "\n")
    _rewrite(cli.site, ACCOUNTS_FILE, lambda d: d.update({"alice@example.org": "plaintext"}))
    result = cli("render")
    assert result.exit_code == 1
    assert "mailstack user passwd alice@example.org" in result.output
