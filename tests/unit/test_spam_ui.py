"""The spam filter's web interface password: rspamd's own hash, made on the controller; the
password shown and replaced only by `mailstack spam password`."""

from __future__ import annotations

from mailstack.render.context import build_context
from mailstack.site.directory import Site
from mailstack.site.inventory import load_hosts
from mailstack.site.secrets import SECRETS_DIR, SITE_FILE
from mailstack.site.spam_ui import HASH_KEY, PASSWORD_KEY, _base32, rspamd_hash

# Made by `rspamadm pw -t pbkdf2 -p secret` (rspamd 3.4, Debian bookworm).
RSPAMADM = "$1$pa4ze85g96bnsn7ojd7qirau7s71eghu$bz4sjzc6nit6k5mf174hg7ukje4xise58o9oo4tu3nmnm3u9zitb"


def _salt(encoded: str) -> bytes:
    alphabet = "ybndrfg8ejkmcpqxot1uwisza345h769"
    bits = sum(alphabet.index(c) << (5 * k) for k, c in enumerate(encoded))
    return (bits & ((1 << 160) - 1)).to_bytes(20, "little")


def test_the_hash_is_the_one_rspamadm_makes():
    salt = _salt(RSPAMADM.split("$")[2])
    assert _base32(salt) == RSPAMADM.split("$")[2]
    assert rspamd_hash("secret", salt) == RSPAMADM
    assert rspamd_hash("Secret", salt) != RSPAMADM


def test_init_makes_a_password_and_the_command_shows_it(cli):
    shown = cli("spam", "password")
    assert shown.exit_code == 0, shown.output
    password = shown.output.strip()
    secrets = Site(cli.site).secrets.site
    assert secrets[PASSWORD_KEY] == password and len(password) >= 32
    salt = _salt(secrets[HASH_KEY].split("$")[2])
    assert rspamd_hash(password, salt) == secrets[HASH_KEY]


def test_new_replaces_password_and_hash(cli):
    before = Site(cli.site).secrets.site
    made = cli("spam", "password", "--new")
    assert made.exit_code == 0, made.output
    after = Site(cli.site).secrets.site
    assert after[PASSWORD_KEY] != before[PASSWORD_KEY] and after[HASH_KEY] != before[HASH_KEY]
    assert after[PASSWORD_KEY] in made.output
    assert cli("spam", "password").output.strip() == after[PASSWORD_KEY]
    # Nothing else in the vault moved.
    assert {k: v for k, v in after.items() if k not in (PASSWORD_KEY, HASH_KEY)} == \
        {k: v for k, v in before.items() if k not in (PASSWORD_KEY, HASH_KEY)}


def _drop_ui_secrets(site_dir):
    site = Site(site_dir)
    data = site.vault.read(site_dir / SECRETS_DIR / SITE_FILE)
    del data[PASSWORD_KEY], data[HASH_KEY]
    site.vault.write(site_dir / SECRETS_DIR / SITE_FILE, data)


def test_a_site_from_before_the_interface_renders_without_it(cli):
    _drop_ui_secrets(cli.site)
    shown = cli("spam", "password")
    assert shown.exit_code == 1
    assert "mailstack spam password --new" in shown.output
    site = Site(cli.site)
    context = build_context(site.config, site.secrets, load_hosts(cli.site)[0])
    assert context["spam"]["web_ui"] is None
    assert cli("render").exit_code == 0
    controller = next(cli.site.glob("build/*/etc/rspamd/override.d/worker-controller.inc"))
    assert "11334" not in controller.read_text() and "password =" not in controller.read_text()
    assert cli("spam", "password", "--new").exit_code == 0
    assert cli("render").exit_code == 0
    assert "enable_password" in controller.read_text()


def test_a_damaged_hash_is_named(cli):
    site = Site(cli.site)
    data = site.vault.read(cli.site / SECRETS_DIR / SITE_FILE)
    data[HASH_KEY] = 'x";\nsecure_ip = "0.0.0.0/0'
    site.vault.write(cli.site / SECRETS_DIR / SITE_FILE, data)
    result = cli("render")
    assert result.exit_code == 1
    assert "spam_ui_password_hash" in result.output and "--new" in result.output
