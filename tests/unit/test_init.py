"""`mailstack init`: a complete site or nothing; secrets encrypted; refuses existing sites."""

from __future__ import annotations

import stat
from pathlib import Path

from conftest import all_site_bytes

from mailstack.cli import app
from mailstack.site.secrets import Secrets, dkim_public_key
from mailstack.site.vault import Vault

FLAGS = ["--domain", "example.org", "--hostname", "mail.example.org", "--host", "203.0.113.7"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_a_complete_site(runner, tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("not really a key")
    result = runner.invoke(app, ["init", str(tmp_path / "s"), *FLAGS, "--ssh-user", "admin",
                                 "--ssh-port", "2222", "--ssh-key", str(key)])
    assert result.exit_code == 0, result.output
    site = tmp_path / "s"
    for name in ("mailstack.yml", ".gitignore", ".vault-password",
                 "inventories/production/hosts.yml",
                 "inventories/production/group_vars/all.yml",
                 "secrets/site.yml", "secrets/dkim.yml", "secrets/accounts.yml"):
        assert (site / name).is_file(), name
    assert (site / ".git").is_dir()
    assert mode(site / ".vault-password") == 0o600
    assert mode(site / "secrets") == 0o700
    for name in ("site.yml", "dkim.yml", "accounts.yml"):
        assert mode(site / "secrets" / name) == 0o600
        assert (site / "secrets" / name).read_bytes().startswith(b"$ANSIBLE_VAULT;1.1;AES256")
    assert "/.vault-password" in (site / ".gitignore").read_text()
    inventory = (site / "inventories/production/hosts.yml").read_text()
    for expected in ("mail.example.org:", "ansible_host: 203.0.113.7", "ansible_user: admin",
                     "ansible_port: 2222", f"ansible_ssh_private_key_file: {key}"):
        assert expected in inventory
    config = (site / "mailstack.yml").read_text()
    assert "hostname: mail.example.org" in config
    assert "admin_email: postmaster@example.org" in config
    assert "\n# " in config  # commented for humans


def test_generated_secrets_are_complete_and_never_in_clear_text(site_dir):
    secrets = Secrets.load(site_dir, Vault(site_dir / ".vault-password"))
    site = secrets.site
    assert len(site["mariadb"]["postfix_password"]) >= 40
    assert site["mariadb"]["postfix_password"] != site["mariadb"]["dovecot_password"]
    assert len(site["storage_passphrase"]) >= 40
    key = secrets.dkim["example.org"]
    assert key["selector"].startswith("s20")
    assert "BEGIN RSA PRIVATE KEY" in key["private_key"]
    # RSA 2048: the SubjectPublicKeyInfo DER is 294 bytes -> 392 base64 characters.
    assert len(dkim_public_key(key["private_key"])) == 392
    blob = all_site_bytes(site_dir)
    for secret in (site["mariadb"]["postfix_password"], site["storage_passphrase"],
                   "PRIVATE KEY"):
        assert secret.encode() not in blob


def test_init_refuses_an_existing_site_and_changes_nothing(runner, site_dir):
    before = {p: p.read_bytes() for p in site_dir.rglob("*") if p.is_file()}
    result = runner.invoke(app, ["init", str(site_dir), *FLAGS])
    assert result.exit_code == 1
    assert "is already a mailstack site; refusing to touch it" in result.output
    after = {p: p.read_bytes() for p in site_dir.rglob("*") if p.is_file()}
    assert after == before


def test_init_refuses_a_non_empty_directory(runner, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["init", str(tmp_path), *FLAGS])
    assert result.exit_code == 1
    assert "exists and is not empty" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_init_into_an_empty_directory_is_fine(runner, tmp_path):
    (tmp_path / "s").mkdir()
    assert runner.invoke(app, ["init", str(tmp_path / "s"), *FLAGS]).exit_code == 0


def test_bad_flags_are_all_named_and_nothing_is_written(runner, tmp_path):
    result = runner.invoke(app, ["init", str(tmp_path / "s"), "--domain", "localhost",
                                 "--hostname", "mail..example.org", "--host", "not a host",
                                 "--ssh-port", "70000", "--ssh-key", "/no/such/key",
                                 "--admin-email", "nobody"])
    assert result.exit_code == 2
    for flag in ("--domain 'localhost'", "--hostname 'mail..example.org'",
                 "--host 'not a host'", "--ssh-port 70000", "--ssh-key '/no/such/key'",
                 "--admin-email 'nobody'"):
        assert flag in result.output
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_missing_flags_without_a_terminal_exit_2(runner, tmp_path):
    result = runner.invoke(app, ["init", str(tmp_path / "s"), "--domain", "example.org"])
    assert result.exit_code == 2
    assert "missing --hostname, --host" in result.output
    assert not (tmp_path / "s").exists()


def test_vault_password_file_override(runner, tmp_path, monkeypatch):
    pw = tmp_path / "vault-pw"
    pw.write_text("my own vault password\n")
    pw.chmod(0o600)
    result = runner.invoke(app, ["--vault-password-file", str(pw), "init",
                                 str(tmp_path / "s"), *FLAGS])
    assert result.exit_code == 0, result.output
    site = tmp_path / "s"
    assert not (site / ".vault-password").exists()
    assert Secrets.load(site, Vault(pw)).dkim["example.org"]
    # The usual Ansible variable works too.
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD_FILE", str(pw))
    result = runner.invoke(app, ["--site", str(site), "domain", "list"])
    assert result.exit_code == 0, result.output
    assert "example.org" in result.output


def test_a_new_site_hardens_ssh(site_dir):
    from mailstack.site.config import SiteConfig
    from mailstack.site.directory import Site

    assert Site(site_dir).config.options.ssh.harden is True
    assert SiteConfig.model_validate({"hostname": "mail.example.org", "domains": ["example.org"],
                                      "admin_email": "postmaster@example.org"}
                                     ).options.ssh.harden is False


def test_a_new_site_asks_a_ca_and_an_older_site_keeps_self_signed(site_dir):
    """init writes acme; a site from before options.tls (all self-signed then) must not turn
    to Let's Encrypt on its next deploy just because the tool was upgraded."""
    from mailstack.site.config import SiteConfig
    from mailstack.site.directory import Site

    assert Site(site_dir).config.options.tls.certificate == "acme"
    assert SiteConfig.model_validate({"hostname": "mail.example.org", "domains": ["example.org"],
                                      "admin_email": "postmaster@example.org"}
                                     ).options.tls.certificate == "self-signed"
