"""SOGo's database password (options.groupware): made by `init`, never made up again; a site
from before the option is told the one command that adds it, and nothing else moves."""

from __future__ import annotations

from mailstack.site.directory import Site
from mailstack.site.secrets import SECRETS_DIR, SITE_FILE


def _turn_on(site_dir) -> None:
    config = site_dir / "mailstack.yml"
    text = config.read_text()
    assert "  pop3: false\n" in text
    config.write_text(text.replace("  groupware: false\n", "  groupware: true\n"))


def _drop_password(site_dir) -> None:
    site = Site(site_dir)
    data = site.vault.read(site_dir / SECRETS_DIR / SITE_FILE)
    del data["mariadb"]["sogo_password"]
    site.vault.write(site_dir / SECRETS_DIR / SITE_FILE, data)


def test_init_makes_it_and_the_command_keeps_it(cli):
    before = Site(cli.site).secrets.site
    assert len(before["mariadb"]["sogo_password"]) >= 32
    kept = cli("groupware", "secret")
    assert kept.exit_code == 0, kept.output
    assert "nothing changed" in kept.output
    assert Site(cli.site).secrets.site == before


def test_a_site_from_before_the_option_is_told_the_fix_and_gets_it(cli):
    _turn_on(cli.site)
    _drop_password(cli.site)
    before = Site(cli.site).secrets.site
    refused = cli("render")
    assert refused.exit_code != 0
    assert "mailstack groupware secret" in refused.output
    assert "Traceback" not in refused.output
    added = cli("groupware", "secret")
    assert added.exit_code == 0, added.output
    after = Site(cli.site).secrets.site
    assert len(after["mariadb"]["sogo_password"]) >= 32
    # Nothing else in the vault moved.
    assert {k: v for k, v in after["mariadb"].items() if k != "sogo_password"} == before["mariadb"]
    assert {k: v for k, v in after.items() if k != "mariadb"} == \
        {k: v for k, v in before.items() if k != "mariadb"}
    rendered = cli("render")
    assert rendered.exit_code == 0, rendered.output
    conf = next(cli.site.glob("build/*/etc/sogo/sogo.conf")).read_text()
    assert after["mariadb"]["sogo_password"] in conf
