"""options.groupware: SOGo's files exist only with it, read like their golden files, keep
its database password in secret files only, and bind SOGo and its database server (whose
data lives in the store) to the store like Dovecot."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from test_render import CONFIG, GOLDEN, HOST, fake_secrets

from mailstack.errors import ConfigError
from mailstack.render.renderer import render_host, write_tree
from mailstack.site.config import SiteConfig

GROUPWARE_GOLDEN = GOLDEN / "groupware"
# Only with the option (SOGo's database server's too).
GROUPWARE_FILES = {"etc/sogo/sogo.conf", "etc/default/sogo", "etc/memcached.conf",
                   "etc/systemd/system/mailstack-groupware-db.service",
                   "etc/mysql/mailstack-groupware-db.cnf", "etc/mysql/mailstack-groupware-db.sql",
                   # The phones' autodiscover answer (ActiveSync).
                   "var/www/mailstack/autodiscover/mobilesync.xml"}
# Different with the option: SOGo's proxy, its view of the accounts, its account there, its
# fail2ban jail.
CHANGED_FILES = {"etc/nginx/conf.d/mailstack.conf", "etc/mailstack/schema.sql",
                 "etc/mailstack/db-users.sql", "etc/fail2ban/jail.d/mailstack.local"}
SOGO_PASSWORD = "FAKE-sogo-pw/+"


def with_groupware(cfg: SiteConfig = CONFIG) -> SiteConfig:
    return cfg.model_copy(update={"options": cfg.options.model_copy(update={"groupware": True})})


def groupware_secrets():
    secrets = fake_secrets()
    secrets.site["mariadb"]["sogo_password"] = SOGO_PASSWORD
    return secrets


def rendered(cfg: SiteConfig, secrets=None) -> dict[str, str]:
    return {str(f.path): f.content for f in render_host(cfg, secrets or groupware_secrets(), HOST)}


def test_groupware_files_exist_only_with_the_option_and_match_their_golden_files():
    off = rendered(CONFIG)
    on = rendered(with_groupware())
    assert set(on) - set(off) == GROUPWARE_FILES
    assert {p for p in on if p in off and on[p] != off[p]} == CHANGED_FILES | {
        "mailstack_vars.yml", "etc/mailstack/storage.json"}
    if os.environ.get("UPDATE_GOLDEN"):
        for path in GROUPWARE_FILES | CHANGED_FILES:
            (GROUPWARE_GOLDEN / path).parent.mkdir(parents=True, exist_ok=True)
            (GROUPWARE_GOLDEN / path).write_text(on[path])
    assert {str(p.relative_to(GROUPWARE_GOLDEN)) for p in GROUPWARE_GOLDEN.rglob("*")
            if p.is_file()} == GROUPWARE_FILES | CHANGED_FILES
    for path in GROUPWARE_FILES | CHANGED_FILES:
        assert (GROUPWARE_GOLDEN / path).read_text() == on[path], f"{path} differs from golden"


def test_sogos_password_is_url_encoded_and_only_in_secret_files(tmp_path: Path):
    files = render_host(with_groupware(), groupware_secrets(), HOST)
    write_tree(files, tmp_path / "out")
    holding = {str(f.path) for f in files if SOGO_PASSWORD in f.content
               or "FAKE-sogo-pw%2F%2B" in f.content}
    assert holding == {"etc/sogo/sogo.conf", "etc/mailstack/db-users.sql",
                       "etc/mysql/mailstack-groupware-db.sql"}
    for path in holding:
        assert stat.S_IMODE((tmp_path / "out" / path).stat().st_mode) == 0o600, path
    conf = next(f.content for f in files if str(f.path) == "etc/sogo/sogo.conf")
    # In a URL the password's / and + would end or change it.
    # Its own data: on the socket of its database server (SOPE takes a host that starts
    # with / for a socket); the accounts' view: on the main server.
    assert ("mysql://mailstack_sogo:FAKE-sogo-pw%2F%2B@%2Frun%2Fmailstack-groupware-db"
            "%2Fmariadbd.sock/sogo/sogo_user_profile") in conf
    assert "mysql://mailstack_sogo:FAKE-sogo-pw%2F%2B@127.0.0.1:3306/mailstack/sogo_users" in conf
    assert SOGO_PASSWORD not in conf


def test_sogo_runs_only_with_the_store_mounted_and_status_shows_it():
    on = rendered(with_groupware())
    storage = json.loads(on["etc/mailstack/storage.json"])
    assert "sogo" in json.dumps(storage)
    facts = yaml.safe_load(on["mailstack_vars.yml"])
    assert facts["mailstack_storage"]["bound_services"] == [
        "dovecot", "mailstack-groupware-db", "sogo"]
    assert facts["mailstack_groupware"]["enabled"] is True
    off = yaml.safe_load(rendered(CONFIG)["mailstack_vars.yml"])
    assert off["mailstack_storage"]["bound_services"] == ["dovecot"]
    assert off["mailstack_groupware"]["enabled"] is False


def test_sogo_authenticates_against_the_same_argon2id_hashes():
    on = rendered(with_groupware())
    assert "userPasswordAlgorithm = argon2id;" in on["etc/sogo/sogo.conf"]
    assert "prependPasswordScheme = YES;" in on["etc/sogo/sogo.conf"]
    schema = on["etc/mailstack/schema.sql"]
    assert "password_hash AS c_password" in schema and "WHERE enabled = 1" in schema
    # Its account reads the view, never the table.
    grants = [line for line in on["etc/mailstack/db-users.sql"].splitlines()
              if "mailstack_sogo" in line and line.startswith("GRANT")]
    assert grants and all("`sogo`.*" in g or "`mailstack`.`sogo_users`" in g for g in grants)


def test_a_site_older_than_the_option_gets_the_fix_not_a_traceback():
    with pytest.raises(ConfigError, match=r"mariadb\.sogo_password"):
        render_host(with_groupware(), fake_secrets(), HOST)


def test_the_web_side_serves_the_groupware_over_https_only():
    conf = rendered(with_groupware())["etc/nginx/conf.d/mailstack.conf"]
    http, https = conf.split("# The certificate of the mail services", 1)
    assert "SOGo" not in http and "proxy_pass" not in http
    for location in ("location /SOGo {", "location /Microsoft-Server-ActiveSync {",
                     "location = /.well-known/caldav {", "location = /.well-known/carddav {"):
        assert location in https
    assert "proxy_pass http://127.0.0.1:20000/SOGo/Microsoft-Server-ActiveSync;" in https
    assert "SOGo" not in rendered(CONFIG)["etc/nginx/conf.d/mailstack.conf"]


@pytest.mark.parametrize(("mailboxes", "workers"), [(1, 5), (2, 7), (4, 11), (30, 11)])
def test_sogo_has_a_worker_per_pushing_device_up_to_a_limit(mailboxes, workers):
    """An ActiveSync device holds a sogod worker for its whole Ping: 3 for the webmail and
    DAV, 2 per mailbox, at most 11 (memory)."""
    from mailstack.render.context import groupware_context

    cfg = with_groupware().model_copy(update={"users": [CONFIG.users[0]] * mailboxes})
    assert groupware_context(cfg, groupware_secrets().site)["workers"] == workers
