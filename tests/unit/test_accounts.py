"""Day-2 account commands through the real CLI: users, aliases, domains, relay."""

from __future__ import annotations

from conftest import PASSWORD, all_site_bytes

from mailstack.site.passwords import verify_password
from mailstack.site.secrets import Secrets
from mailstack.site.vault import Vault


def secrets_of(site):
    return Secrets.load(site, Vault(site / ".vault-password"))


def add_user(cli, address, password=PASSWORD):
    return cli("user", "add", address, "--password-stdin", input=password + "\n")


def test_user_add_stores_only_a_dovecot_argon2id_hash(cli):
    result = add_user(cli, "Alice@Example.org")
    assert result.exit_code == 0, result.output
    assert "added user alice@example.org" in result.output
    stored = secrets_of(cli.site).accounts["alice@example.org"]
    assert stored.startswith("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$")
    assert verify_password(stored, PASSWORD)
    assert not verify_password(stored, PASSWORD + "x")
    assert PASSWORD.encode() not in all_site_bytes(cli.site)
    assert "address: alice@example.org" in (cli.site / "mailstack.yml").read_text()


def test_a_domains_first_user_becomes_its_postmaster(cli):
    result = add_user(cli, "alice@example.org")
    assert "and the alias postmaster@example.org -> alice@example.org" in result.output
    assert "postmaster@example.org -> alice@example.org" in cli("alias", "list").output
    result = add_user(cli, "bob@example.org")
    assert "postmaster" not in result.output  # the first one only
    result = cli("alias", "remove", "postmaster@example.org")
    assert result.exit_code == 0
    result = cli("deploy")  # refused before any SSH: the postmaster would bounce
    assert result.exit_code == 1
    assert "postmaster@example.org: add a user" in result.output


def test_a_new_domains_postmaster_reads_the_sites_postmaster_mail(cli):
    result = cli("domain", "add", "example.net")
    assert "its first user becomes postmaster@example.net" in result.output
    assert cli("domain", "remove", "example.net").exit_code == 0
    add_user(cli, "alice@example.org")
    result = cli("domain", "add", "example.net")
    assert "the alias postmaster@example.net -> postmaster@example.org" in result.output
    assert "postmaster@example.net -> postmaster@example.org" in cli("alias", "list").output


def test_user_list_shows_users_and_their_aliases(cli):
    add_user(cli, "alice@example.org")
    cli("alias", "add", "postmaster@example.org", "alice@example.org")
    result = cli("user", "list")
    assert result.exit_code == 0
    assert "alice@example.org" in result.output
    assert "postmaster@example.org" in result.output


def test_duplicate_user_is_refused_and_nothing_changes(cli):
    add_user(cli, "alice@example.org")
    before = (cli.site / "secrets/accounts.yml").read_bytes()
    result = add_user(cli, "alice@example.org", "another password")
    assert result.exit_code == 1
    assert "user alice@example.org already exists" in result.output
    assert "mailstack user passwd alice@example.org" in result.output
    assert (cli.site / "secrets/accounts.yml").read_bytes() == before


def test_invalid_address_is_refused(cli):
    for bad, reason in (("alice", "exactly one @"), ("a%b@example.org", "routing"),
                        ('"a b"@example.org', "routing or quoting"), ("x@-bad.org", "label")):
        result = add_user(cli, bad)
        assert result.exit_code == 1, bad
        assert reason in result.output, result.output
        assert "Traceback" not in result.output


def test_user_in_undeclared_domain_is_refused(cli):
    result = add_user(cli, "bob@example.net")
    assert result.exit_code == 1
    assert "domain 'example.net' of bob@example.net is not declared" in result.output
    assert "mailstack domain add example.net" in result.output


def test_weak_password_is_refused(cli):
    result = add_user(cli, "alice@example.org", "short")
    assert result.exit_code == 1
    assert "too short: use at least 8 characters" in result.output
    result = add_user(cli, "alice@example.org", "alice@example.org")
    assert result.exit_code == 1
    assert "must not be the address itself" in result.output


def test_password_prompt_needs_a_terminal(cli):
    result = cli("user", "add", "alice@example.org")
    assert result.exit_code == 1
    assert "--password-stdin" in result.output


def test_user_passwd_changes_the_hash(cli):
    add_user(cli, "alice@example.org")
    old = secrets_of(cli.site).accounts["alice@example.org"]
    result = cli("user", "passwd", "alice@example.org", "--password-stdin",
                 input="a brand new password\n")
    assert result.exit_code == 0, result.output
    new = secrets_of(cli.site).accounts["alice@example.org"]
    assert new != old and verify_password(new, "a brand new password")
    result = cli("user", "passwd", "ghost@example.org", "--password-stdin", input="whatever1\n")
    assert result.exit_code == 1
    assert "user ghost@example.org does not exist" in result.output


def test_user_remove_refused_while_aliases_point_to_it(cli):
    add_user(cli, "alice@example.org")
    cli("alias", "add", "postmaster@example.org", "alice@example.org")
    result = cli("user", "remove", "alice@example.org")
    assert result.exit_code == 1
    assert "aliases still deliver to it (postmaster@example.org)" in result.output
    assert cli("alias", "remove", "postmaster@example.org").exit_code == 0
    result = cli("user", "remove", "alice@example.org")
    assert result.exit_code == 0, result.output
    assert "alice@example.org" not in secrets_of(cli.site).accounts
    assert "alice@example.org" not in (cli.site / "mailstack.yml").read_text().split(
        "aliases:")[0].split("users:")[1]
    assert cli("user", "remove", "alice@example.org").exit_code == 1


def test_alias_rules(cli):
    add_user(cli, "alice@example.org")
    assert cli("alias", "add", "team@example.org", "alice@example.org",
               "friend@elsewhere.com").exit_code == 0
    result = cli("alias", "add", "team@example.org", "alice@example.org")
    assert result.exit_code == 1 and "already exists" in result.output
    result = cli("alias", "add", "a@example.org", "ghost@example.org")
    assert result.exit_code == 1
    assert "'ghost@example.org', which is neither a mailbox nor an alias" in result.output
    result = cli("alias", "add", "alice@example.org", "team@example.org")
    assert result.exit_code == 1 and "is a mailbox" in result.output
    assert cli("alias", "add", "a@example.org", "team@example.org").exit_code == 0
    result = cli("alias", "add", "team@example.org", "a@example.org")
    assert result.exit_code == 1
    assert "alias loop" in result.output
    result = cli("alias", "add", "x@example.org", "x@example.org")
    assert result.exit_code == 1 and "cannot point to itself" in result.output
    result = cli("alias", "add", "x@other.org", "alice@example.org")
    assert result.exit_code == 1 and "not declared" in result.output
    listing = cli("alias", "list").output
    assert "team@example.org -> alice@example.org, friend@elsewhere.com" in listing
    assert cli("alias", "remove", "team@example.org", "friend@elsewhere.com").exit_code == 0
    assert "team@example.org -> alice@example.org\n" in cli("alias", "list").output
    result = cli("alias", "remove", "nope@example.org")
    assert result.exit_code == 1 and "does not exist" in result.output


def test_domain_add_generates_a_key_once_and_remove_is_guarded(cli):
    assert cli("domain", "add", "Example.NET").exit_code == 0
    key = secrets_of(cli.site).dkim["example.net"]
    result = cli("domain", "add", "example.net")
    assert result.exit_code == 1 and "already declared" in result.output
    add_user(cli, "bob@example.net")
    result = cli("domain", "remove", "example.net")
    assert result.exit_code == 1
    assert "still has users or aliases (bob@example.net, postmaster@example.net)" in result.output
    assert cli("alias", "remove", "postmaster@example.net").exit_code == 0
    assert cli("user", "remove", "bob@example.net").exit_code == 0
    assert cli("domain", "remove", "example.net").exit_code == 0
    # Re-adding keeps the old key: no DNS change needed.
    assert cli("domain", "add", "example.net").exit_code == 0
    assert secrets_of(cli.site).dkim["example.net"] == key
    listing = cli("domain", "list").output
    assert "example.org" in listing and "example.net" in listing
    result = cli("domain", "add", "bad_domain.org")
    assert result.exit_code == 1 and "invalid label" in result.output


def test_last_domain_cannot_be_removed(cli):
    result = cli("domain", "remove", "example.org")
    assert result.exit_code == 1
    assert "needs at least one domain" in result.output


def test_relay_password_goes_to_the_vault(cli):
    result = cli("relay", "set", "[smtp.relay.test]:587", "AKIAEXAMPLE", "--password-stdin",
                 input="relay-secret-123\n")
    assert result.exit_code == 0, result.output
    assert secrets_of(cli.site).site["relay_password"] == "relay-secret-123"
    assert b"relay-secret-123" not in all_site_bytes(cli.site)
    assert "host: '[smtp.relay.test]:587'" in (cli.site / "mailstack.yml").read_text()
    assert cli("relay", "clear").exit_code == 0
    assert secrets_of(cli.site).site["relay_password"] is None


def test_relay_set_again_keeps_the_relays_other_settings(cli):
    """A new password (what `mailstack status` asks for when the relay refuses the login)
    changes the login, not the SPF include the DNS records were published with."""
    assert cli("relay", "set", "[smtp.relay.test]:587", "first", "--password-stdin",
               input="old-secret\n").exit_code == 0
    config = cli.site / "mailstack.yml"
    config.write_text(config.read_text().replace(
        "    username: first\n", "    username: first\n    spf_include: spf.relay.test  # theirs\n"))
    result = cli("relay", "set", "[smtp.relay.test]:2587", "second", "--password-stdin",
                 input="new-secret\n")
    assert result.exit_code == 0, result.output
    text = config.read_text()
    assert "host: '[smtp.relay.test]:2587'" in text and "username: second\n" in text
    assert "spf_include: spf.relay.test  # theirs\n" in text
    assert secrets_of(cli.site).site["relay_password"] == "new-secret"


def test_edits_keep_the_users_comments(cli):
    before = (cli.site / "mailstack.yml").read_text()
    comments = [line for line in before.splitlines() if line.lstrip().startswith("#")]
    add_user(cli, "alice@example.org")
    cli("alias", "add", "postmaster@example.org", "alice@example.org")
    after = (cli.site / "mailstack.yml").read_text()
    for line in comments:
        assert line in after
