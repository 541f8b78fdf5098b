"""Rendering: golden files, determinism, secret-file modes, and the render-time checks.

Golden files are rendered from fixed, fake secrets (no real secret lives in the repo).
Regenerate after an intended template change with: UPDATE_GOLDEN=1 pytest tests/unit/test_render.py
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from conftest import PASSWORD

from mailstack.errors import ConfigError
from mailstack.host import acme, fts_decoder, sealer, storage_tool
from mailstack.render.renderer import (
    ACME_TOOL_FILE,
    FTS_DECODER_FILE,
    SEALER_FILE,
    STORAGE_TOOL_FILE,
    render_host,
    write_tree,
)
from mailstack.site.config import Bans, Blocklists, DnsList, Limits, Outbound, Resolver, SiteConfig
from mailstack.site.inventory import InventoryHost
from mailstack.site.secrets import Secrets

GOLDEN = Path(__file__).parent.parent / "golden"
HOST = InventoryHost("mail.example.org", "203.0.113.7", "root", 22, None)
CONFIG = SiteConfig.model_validate({
    "hostname": "mail.example.org",
    "admin_email": "postmaster@example.org",
    "domains": ["example.org", "example.net"],
    "users": [{"address": "alice@example.org"}, {"address": "bob@example.net", "quota": "2G"}],
    "aliases": {"postmaster@example.org": "alice@example.org",
                "team@example.net": ["alice@example.org", "bob@example.net",
                                     "friend@elsewhere.test"]},
    "options": {"relay": {"host": "[smtp.relay.test]:587", "username": "relayuser"},
                "tls": {"certificate": "acme"}},  # what init writes
})


def fake_secrets() -> Secrets:
    return Secrets(
        vault=None, root=Path("/nonexistent"),  # type: ignore[arg-type]
        site={"mariadb": {"postfix_password": "FAKE-postfix-pw",
                          "dovecot_password": "FAKE-dovecot-pw"},
              "storage_passphrase": "FAKE-passphrase",
              "relay_password": "FAKE-relay-pw", "spam_ui_password": "FAKE-ui-pw",
              "spam_ui_password_hash": "$1$FAKE$ui", "tls_key": "-----FAKE TLS KEY-----\n"},
        dkim={d: {"selector": "s2026", "private_key": f"-----FAKE KEY FOR {d}-----\n"}
              for d in ("example.org", "example.net")},
        accounts={"alice@example.org": "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$FAKE$alice",
                  "bob@example.net": "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$FAKE$bob"},
    )


def test_rendered_files_match_the_golden_files():
    files = render_host(CONFIG, fake_secrets(), HOST)
    # The host tools are placed verbatim (their source is in the package), not templated.
    tools = {STORAGE_TOOL_FILE: storage_tool, SEALER_FILE: sealer, ACME_TOOL_FILE: acme,
             FTS_DECODER_FILE: fts_decoder}
    for f in files:
        if f.path in tools:
            assert f.content == Path(tools[f.path].__file__).read_text()
    assert {f.path for f in files} >= set(tools)
    files = [f for f in files if f.path not in tools]
    target = GOLDEN / HOST.name
    if os.environ.get("UPDATE_GOLDEN"):
        write_tree(files, target)
    expected = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()}
    assert {str(f.path) for f in files} == expected
    for f in files:
        assert (target / f.path).read_text() == f.content, f"{f.path} differs from golden"


def test_rendering_is_deterministic():
    a = render_host(CONFIG, fake_secrets(), HOST)
    b = render_host(CONFIG, fake_secrets(), HOST)
    assert [(f.path, f.content) for f in a] == [(f.path, f.content) for f in b]


def test_every_file_starts_with_the_managed_header():
    for f in render_host(CONFIG, fake_secrets(), HOST):
        if f.path.suffix in (".private", ".pem") or f.path.name == "mta-sts.txt":
            continue  # keys and a policy: their formats have no comments
        if str(f.path) == ROOT_ANCHOR_FILE:
            continue  # Debian's own file, byte for byte (test_the_root_anchor_…)
        assert "Managed by mailstack" in "\n".join(f.content.splitlines()[:3]), f.path


def test_secrets_land_only_in_0600_files(tmp_path):
    files = render_host(CONFIG, fake_secrets(), HOST)
    write_tree(files, tmp_path / "out")
    secret_values = ("FAKE-postfix-pw", "FAKE-dovecot-pw", "FAKE-relay-pw", "FAKE$alice",
                     "FAKE KEY FOR", "FAKE TLS KEY")
    for f in files:
        on_disk = tmp_path / "out" / f.path
        mode = stat.S_IMODE(on_disk.stat().st_mode)
        holds_secret = any(v in f.content for v in secret_values)
        if holds_secret:
            assert mode == 0o600, f.path
        assert mode == (0o600 if f.secret else 0o644), f.path
        assert f.secret == holds_secret, f"{f.path}: secret flag {f.secret}"
    assert "FAKE-passphrase" not in "".join(f.content for f in files)  # unlock-time only


def test_relay_password_file_only_with_a_relay():
    cfg = CONFIG.model_copy(update={"options": CONFIG.options.model_copy(update={"relay": None})})
    paths = {str(f.path) for f in render_host(cfg, fake_secrets(), HOST)}
    assert "etc/postfix/sasl_passwd" not in paths
    main_cf = next(f for f in render_host(cfg, fake_secrets(), HOST)
                   if str(f.path) == "etc/postfix/main.cf").content
    assert "\nrelayhost =\n" in main_cf  # direct delivery
    assert "smtp_sasl_password_maps" not in main_cf
    with_relay = next(f for f in render_host(CONFIG, fake_secrets(), HOST)
                      if str(f.path) == "etc/postfix/main.cf").content
    assert "\nrelayhost = [smtp.relay.test]:587\n" in with_relay


def test_direct_delivery_verifies_tls_with_dane_and_mta_sts_and_a_relay_does_not():
    import yaml

    cfg = CONFIG.model_copy(update={"options": CONFIG.options.model_copy(update={"relay": None})})
    direct = {str(f.path): f.content for f in render_host(cfg, fake_secrets(), HOST)}
    main_cf = direct["etc/postfix/main.cf"]
    for line in ("smtp_dns_support_level = dnssec", "smtp_tls_security_level = dane",
                 "smtp_tls_policy_maps = socketmap:inet:127.0.0.1:8461:postfix"):
        assert f"\n{line}\n" in main_cf, line
    daemon = yaml.safe_load(direct["etc/mta-sts-daemon.yml"])
    assert (daemon["host"], daemon["port"]) == ("127.0.0.1", 8461)  # where Postfix asks
    assert yaml.safe_load(direct["mailstack_vars.yml"])["mailstack_mta_sts"]["enabled"] is True
    relayed = {str(f.path): f.content for f in render_host(CONFIG, fake_secrets(), HOST)}
    assert "smtp_tls_security_level = secure" in relayed["etc/postfix/main.cf"]
    assert "dane" not in relayed["etc/postfix/main.cf"]
    assert yaml.safe_load(relayed["mailstack_vars.yml"])["mailstack_mta_sts"]["enabled"] is False


def test_postfixs_own_notices_are_signed():
    """Bounces and delay warnings (From: MAILER-DAEMON@ the primary domain, myorigin) pass
    the DKIM milter too: Postfix skips it for the mail it makes itself unless told."""
    files = {str(f.path): f.content for f in render_host(CONFIG, fake_secrets(), HOST)}
    assert "\nmydomain = example.org\n" in files["etc/postfix/main.cf"]
    assert "\nmyorigin = $mydomain\n" in files["etc/postfix/main.cf"]
    assert "\ninternal_mail_filter_classes = bounce\n" in files["etc/postfix/main.cf"]
    assert "\n*@example.org s2026._domainkey.example.org\n" in files["etc/opendkim/SigningTable"]


def test_relay_without_password_is_a_clear_error():
    secrets = fake_secrets()
    secrets.site["relay_password"] = None
    with pytest.raises(ConfigError, match="mailstack relay set"):
        render_host(CONFIG, secrets, HOST)


def test_user_without_hash_is_a_clear_error():
    secrets = fake_secrets()
    del secrets.accounts["bob@example.net"]
    with pytest.raises(ConfigError) as info:
        render_host(CONFIG, secrets, HOST)
    assert "mailstack user passwd bob@example.net" in str(info.value)


def test_render_command_writes_per_host_tree(cli, tmp_path):
    cli("user", "add", "alice@example.org", "--password-stdin", input=PASSWORD + "\n")
    result = cli("render", "--out", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    host = tmp_path / "b" / "mail.example.org"
    assert (host / "etc/postfix/main.cf").is_file()
    assert stat.S_IMODE((host / "etc/mailstack/accounts.sql").stat().st_mode) == 0o600
    first = {p: p.read_bytes() for p in host.rglob("*") if p.is_file()}
    (host / "stale-file").write_text("left over")
    assert cli("render", "--out", str(tmp_path / "b")).exit_code == 0
    second = {p: p.read_bytes() for p in host.rglob("*") if p.is_file()}
    assert second == first  # same bytes, and the stale file is gone
    result = cli("render", "--host", "other.example.org")
    assert result.exit_code == 2 and "not in the inventory" in result.output


def test_encfs_choice_prints_its_weakness_warning(cli, tmp_path):
    path = cli.site / "mailstack.yml"
    path.write_text(path.read_text().replace("encryption: gocryptfs", "encryption: encfs"))
    result = cli("render", "--out", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    assert "EncFS has known weaknesses" in result.output
    storage = (tmp_path / "b/mail.example.org/etc/mailstack/storage.json").read_text()
    assert '"encryption": "encfs"' in storage


def test_the_firewall_opens_the_port_the_host_is_reached_on():
    """With SSH on 2222, a firewall opening 22 would lock out every later deploy and unlock."""
    import yaml

    host = InventoryHost("mail.example.org", "203.0.113.7", "root", 2222, None)
    files = {str(f.path): f.content for f in render_host(CONFIG, fake_secrets(), host)}
    facts = yaml.safe_load(files["mailstack_vars.yml"])
    assert facts["mailstack_ssh_port"] == 2222
    assert facts["mailstack_firewall_tcp_ports"] == [25, 80, 443, 465, 587, 993, 2222, 4190]


def test_postscreen_gets_the_lists_and_the_allowlist():
    cfg = CONFIG.model_copy(update={"options": CONFIG.options.model_copy(update={
        "blocklists": Blocklists(threshold=4, lists=[DnsList(zone="bl.example.net", weight=4),
                                                     DnsList(zone="wl.example.net", weight=-2,
                                                             answers="127.0.[0..255].1")],
                                 allow=["192.0.2.7/24"])})})
    files = {str(f.path): f.content for f in render_host(cfg, fake_secrets(), HOST)}
    main_cf = files["etc/postfix/main.cf"]
    assert ("postscreen_dnsbl_sites =\n    bl.example.net*4,\n"
            "    wl.example.net=127.0.[0..255].1*-2\n") in main_cf
    assert "postscreen_dnsbl_threshold = 4\n" in main_cf
    assert "192.0.2.0/24\tpermit\n" in files["etc/postfix/postscreen_access.cidr"]
    master_cf = files["etc/postfix/master.cf"]
    assert "smtp      inet  n       -       y       -       1       postscreen" in master_cf


def test_anvil_limits_and_their_exempt_addresses():
    cfg = CONFIG.model_copy(update={"options": CONFIG.options.model_copy(update={
        "limits": Limits(connections=3, connections_per_minute=9, auth_per_minute=4),
        "bans": Bans(ignore=["192.0.2.10", "2001:db8::/32"])})})
    main_cf = {str(f.path): f.content for f in render_host(cfg, fake_secrets(), HOST)}[
        "etc/postfix/main.cf"]
    assert "smtpd_client_connection_count_limit = 3\n" in main_cf
    assert "smtpd_client_connection_rate_limit = 9\n" in main_cf
    assert "smtpd_client_auth_rate_limit = 4\n" in main_cf
    assert ("smtpd_client_event_limit_exceptions = $mynetworks 192.0.2.10/32 "
            "[2001:db8::]/32\n") in main_cf


def main_cf(cfg: SiteConfig) -> str:
    return {str(f.path): f.content for f in render_host(cfg, fake_secrets(), HOST)}[
        "etc/postfix/main.cf"]


def with_outbound(cfg: SiteConfig, **limits: object) -> SiteConfig:
    return cfg.model_copy(update={"options": cfg.options.model_copy(
        update={"outbound": Outbound.model_validate(limits)})})


def test_outbound_limits_are_the_smtp_transports_only():
    """Postfix's default_destination_* would also slow the LMTP deliveries into our own
    mailboxes: only the smtp transport gets the limits. No rate delay: Postfix's failed-cohort
    default stays."""
    text = main_cf(with_outbound(CONFIG, concurrency=4))
    assert "\nsmtp_destination_concurrency_limit = 4\n" in text
    assert "\nsmtp_destination_rate_delay = 0s\n" in text
    assert "failed_cohort_limit" not in text
    assert "default_destination_" not in text and "lmtp_destination_" not in text


def test_a_rate_delay_raises_the_failed_cohort_limit():
    """One delivery at a time: by default a single failed connection would suspend the whole
    destination (postconf(5) advises 10 or more with a rate delay)."""
    text = main_cf(with_outbound(CONFIG, rate_delay="12s"))
    assert "\nsmtp_destination_rate_delay = 12s\n" in text
    assert "\nsmtp_destination_concurrency_failed_cohort_limit = 10\n" in text
    # A zero written in other units is still no delay.
    text = main_cf(with_outbound(CONFIG, rate_delay="0m"))
    assert "\nsmtp_destination_rate_delay = 0s\n" in text
    assert "failed_cohort_limit" not in text


def test_with_a_relay_the_limits_are_the_relays():
    """With relayhost every outbound message has the relay as its next hop, so the queue
    manager counts them all as one destination: the same smtp_destination_* lines are the
    relay's limits, and no relay_* parameter is needed (the relay transport serves
    relay_domains, which this server has none of)."""
    text = main_cf(with_outbound(CONFIG, concurrency=2, rate_delay="1s"))
    assert "\nrelayhost = [smtp.relay.test]:587\n" in text
    assert "\nsmtp_destination_concurrency_limit = 2\n" in text
    assert "\nsmtp_destination_rate_delay = 1s\n" in text
    assert "relay_destination" not in text
    assert "relay_domains" not in text


ANTIVIRUS_GOLDEN = GOLDEN / "antivirus"
ANTIVIRUS_FILES = {
    "etc/clamav/clamd.conf",
    "etc/rspamd/local.d/antivirus.conf",
    "etc/rspamd/local.d/force_actions.conf",
    "etc/systemd/system/clamav-daemon.service.d/mailstack.conf",
    "etc/systemd/system/clamav-daemon.socket.d/mailstack.conf",
}


def with_antivirus(cfg: SiteConfig = CONFIG) -> SiteConfig:
    return cfg.model_copy(update={"options": cfg.options.model_copy(update={"antivirus": "clamav"})})


def test_antivirus_files_exist_only_with_the_option_and_match_their_golden_files():
    off = {str(f.path): f.content for f in render_host(CONFIG, fake_secrets(), HOST)}
    assert not ANTIVIRUS_FILES & set(off)
    on = {str(f.path): f.content for f in render_host(with_antivirus(), fake_secrets(), HOST)}
    assert set(on) - set(off) == ANTIVIRUS_FILES
    if os.environ.get("UPDATE_GOLDEN"):
        for path in ANTIVIRUS_FILES:
            (ANTIVIRUS_GOLDEN / path).parent.mkdir(parents=True, exist_ok=True)
            (ANTIVIRUS_GOLDEN / path).write_text(on[path])
    assert {str(p.relative_to(ANTIVIRUS_GOLDEN)) for p in ANTIVIRUS_GOLDEN.rglob("*")
            if p.is_file()} == ANTIVIRUS_FILES
    for path in ANTIVIRUS_FILES:
        assert (ANTIVIRUS_GOLDEN / path).read_text() == on[path], f"{path} differs from golden"
    # `mailstack status` shows clamd; the roles learn that it is on.
    assert '"clamav-daemon"' in on["etc/mailstack/storage.json"]
    assert '"clamav-daemon"' not in off["etc/mailstack/storage.json"]
    assert "  enabled: true\n" in on["mailstack_vars.yml"].split("mailstack_antivirus:")[1]


def test_clamd_takes_every_message_postfix_accepts():
    """rspamd streams whole messages to clamd: a message Postfix accepts must never be too
    large for clamd (it would be answered 4xx for ever) nor skipped by rspamd."""
    cfg = with_antivirus(CONFIG.model_copy(update={"options": CONFIG.options.model_copy(
        update={"message_size_limit": 100 * 1024**2})}))
    files = {str(f.path): f.content for f in render_host(cfg, fake_secrets(), HOST)}
    limit = 100 * 1024**2
    clamd = dict(line.split(" ", 1) for line in files["etc/clamav/clamd.conf"].splitlines()
                 if line and not line.startswith("#"))
    assert int(clamd["StreamMaxLength"]) > limit
    assert int(clamd["MaxFileSize"]) == int(clamd["StreamMaxLength"])
    assert f"max_size = {clamd['StreamMaxLength']};" in files["etc/rspamd/local.d/antivirus.conf"]
    assert clamd["LocalSocket"] in files["etc/rspamd/local.d/antivirus.conf"]
    assert f"ListenStream={clamd['LocalSocket']}" in files[
        "etc/systemd/system/clamav-daemon.socket.d/mailstack.conf"]


RESOLVER_GOLDEN = GOLDEN / "trust-anchors"
MAILSTACK_CONF = "etc/unbound/unbound.conf.d/mailstack.conf"
ROOT_ANCHOR_FILE = "etc/unbound/unbound.conf.d/root-auto-trust-anchor-file.conf"
# Debian 12's unbound ships ROOT_ANCHOR_FILE as a conffile with this MD5 sum
# (`dpkg-query -W -f='${Conffiles}' unbound`; tests/config checks it on a real host).
DEBIAN_ROOT_ANCHOR_MD5 = "a6c8d76007c5c6311d52e39735727676"
ANCHORS = ["lab.test. DS 11804 13 2 " + "AB" * 32, "lab.test. DNSKEY 257 3 13 QUJDREVG"]


def with_resolver(**resolver) -> SiteConfig:
    options = CONFIG.options.model_copy(update={"resolver": Resolver(**resolver)})
    return CONFIG.model_copy(update={"options": options})


def unbound_files(cfg: SiteConfig) -> dict[str, str]:
    files = {str(f.path): f.content for f in render_host(cfg, fake_secrets(), HOST)}
    return {path: files[path] for path in (MAILSTACK_CONF, ROOT_ANCHOR_FILE)}


def test_trust_anchors_without_the_root_match_their_golden_files():
    files = unbound_files(with_resolver(forward_to=["192.0.2.53"], dnssec=False,
                                        trust_anchors=ANCHORS))
    if os.environ.get("UPDATE_GOLDEN"):
        for path, content in files.items():
            (RESOLVER_GOLDEN / path).parent.mkdir(parents=True, exist_ok=True)
            (RESOLVER_GOLDEN / path).write_text(content)
    assert {str(p.relative_to(RESOLVER_GOLDEN)) for p in RESOLVER_GOLDEN.rglob("*")
            if p.is_file()} == set(files)
    for path, content in files.items():
        assert (RESOLVER_GOLDEN / path).read_text() == content, f"{path} differs from golden"


def test_the_root_anchor_is_debians_own_file_exactly_when_dnssec_is_on():
    """dnssec: true leaves Debian's conffile as shipped (dpkg sees no change, upgrades never
    ask); false replaces it with a comment, so no root key is used."""
    for anchors in ([], ANCHORS):
        on = unbound_files(with_resolver(trust_anchors=anchors))
        assert hashlib.md5(on[ROOT_ANCHOR_FILE].encode()).hexdigest() == DEBIAN_ROOT_ANCHOR_MD5
        off = unbound_files(with_resolver(dnssec=False, trust_anchors=anchors))
        assert not [line for line in off[ROOT_ANCHOR_FILE].splitlines()
                    if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize(("dnssec", "anchors", "validates"), [
    (True, [], True), (True, ANCHORS, True), (False, ANCHORS, True), (False, [], False)])
def test_unbound_validates_unless_it_has_neither_the_root_nor_an_anchor(dnssec, anchors, validates):
    conf = unbound_files(with_resolver(dnssec=dnssec, trust_anchors=anchors))[MAILSTACK_CONF]
    assert ('module-config: "iterator"' not in conf) is validates
    assert [line.strip() for line in conf.splitlines() if "trust-anchor:" in line] == [
        f'trust-anchor: "{a}"' for a in anchors]


def rendered(cfg: SiteConfig = CONFIG) -> dict[str, str]:
    return {str(f.path): f.content for f in render_host(cfg, fake_secrets(), HOST)}


def test_pop3_listens_on_995_with_tls_only_when_asked_for():
    import yaml

    off = rendered()
    assert "protocols = imap lmtp sieve\n" in off["etc/dovecot/dovecot.conf"]
    assert "pop3" not in off["etc/dovecot/dovecot.conf"].split("protocols =")[1].split("\n")[0]
    assert "995" not in off["etc/dovecot/dovecot.conf"]
    facts = yaml.safe_load(off["mailstack_vars.yml"])
    assert 995 not in facts["mailstack_firewall_tcp_ports"] and facts["mailstack_pop3"] is False

    on = rendered(CONFIG.model_copy(update={"options": CONFIG.options.model_copy(
        update={"pop3": True})}))
    dovecot = on["etc/dovecot/dovecot.conf"]
    assert "protocols = imap pop3 lmtp sieve\n" in dovecot
    # 110 closed, 995 with TLS from the first byte.
    assert ("service pop3-login {\n  inet_listener pop3 {\n    port = 0\n  }\n"
            "  inet_listener pop3s {\n    port = 995\n    ssl = yes\n  }\n}\n") in dovecot
    facts = yaml.safe_load(on["mailstack_vars.yml"])
    assert facts["mailstack_firewall_tcp_ports"] == [22, 25, 80, 443, 465, 587, 993, 995, 4190]
    assert facts["mailstack_pop3"] is True
    # Guarded against password guessing like the other mail ports.
    assert "port = 25,465,587,993,995,4190\n" in on["etc/fail2ban/jail.d/mailstack.local"]


def test_the_quota_policy_is_asked_for_mailboxes_with_a_quota_on_one_socket():
    """Postfix asks, Dovecot answers and (while the store is locked) the sealer answers on
    the same socket; only mailboxes with a quota are looked up for it."""
    files = rendered()
    main_cf = files["etc/postfix/main.cf"]
    restrictions = main_cf.split("smtpd_recipient_restrictions =")[1].split("\nsmtpd_")[0]
    assert restrictions.rstrip().endswith(
        "check_recipient_access proxy:mysql:/etc/postfix/mysql/quota_mailboxes.cf")
    assert "\nmailbox_quota = check_policy_service unix:private/quota-status\n" in main_cf
    assert "smtpd_restriction_classes = verify_mailbox_only, mailbox_quota\n" in main_cf
    # Nobody answering is a 4xx, never a 5xx.
    assert "\nsmtpd_policy_service_default_action = 451 4.3.5 " in main_cf
    query = files["etc/postfix/mysql/quota_mailboxes.cf"]
    assert ("query = SELECT 'mailbox_quota' FROM mailboxes WHERE address = '%s' AND enabled = 1 "
            "AND quota_bytes > 0\n") in query
    assert "domain = example.net, example.org\n" in query
    # Postfix's lookup account may read the quota column, still not the password hash.
    grants = [line for line in files["etc/mailstack/db-users.sql"].splitlines()
              if "mailstack_postfix" in line and "mailboxes" in line]
    assert grants and all("(address, domain, local_part, enabled, quota_bytes)" in g
                          for g in grants)
    socket = "/var/spool/postfix/private/quota-status"
    assert (f"  executable = quota-status -p postfix\n  unix_listener {socket} {{\n"
            "    mode = 0600\n    user = postfix\n") in files["etc/dovecot/dovecot.conf"]
    assert f"\nListenStream={socket}\n" in files["etc/systemd/system/mailstack-sealer.socket"]
    assert socket.endswith("/" + sealer.QUOTA_POLICY_SOCKET)


def test_quota_warnings_are_mailed_by_the_script_dovecot_names():
    import yaml

    files = rendered()
    dovecot = files["etc/dovecot/dovecot.conf"]
    assert "  quota_warning = storage=95%% quota-warning 95 %u\n" in dovecot
    assert "  quota_warning2 = storage=80%% quota-warning 80 %u\n" in dovecot
    script = yaml.safe_load(files["mailstack_vars.yml"])["mailstack_quota_warning_script"]
    assert f"  executable = script {script}\n" in dovecot
    assert files[script.lstrip("/")].startswith("#!/bin/sh\n")
    # An LMTP setting: inside plugin {} Dovecot would ignore it (and bounce at once).
    assert "\nquota_full_tempfail = yes\n" in dovecot
