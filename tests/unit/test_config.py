"""mailstack.yml validation: every problem at once, each naming field, line and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailstack.errors import ConfigError
from mailstack.site.document import ConfigDocument

VALID = """\
hostname: mail.example.org
admin_email: admin@example.org
domains: [example.org, example.net]
users:
  - address: alice@example.org
  - address: bob@example.net
    quota: 2G
aliases:
  postmaster@example.org: alice@example.org
  team@example.org: [alice@example.org, bob@example.net, friend@elsewhere.com]
options:
  message_size_limit: 25M
"""


D64 = "4FFD4E7B4B3398C62B0F5DFDED74BAC1A36612931A332AA23B0B762169CCFBE2"  # a SHA-256 digest


def anchors(*records: str) -> str:
    """options.resolver.trust_anchors with these records (a flow list of YAML strings)."""
    items = ", ".join('"' + r + '"' for r in records)
    return f"25M\n  resolver:\n    trust_anchors: [{items}]"


def load(tmp_path: Path, text: str) -> ConfigDocument:
    path = tmp_path / "mailstack.yml"
    path.write_text(text)
    return ConfigDocument.load(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert info.value.exit_code == 2
    return info.value.details


def test_valid_config_loads_with_derived_values(tmp_path):
    cfg = load(tmp_path, VALID).model
    assert cfg.primary_domain == "example.org"
    assert cfg.users[1].quota == 2 * 1024**3
    assert cfg.options.message_size_limit == 25 * 1024**2
    assert cfg.aliases["postmaster@example.org"] == ["alice@example.org"]
    assert cfg.options.queue.maximal_queue_lifetime == "5d"
    assert cfg.options.storage.encryption == "gocryptfs"


def test_queue_times_take_seconds_up_to_postfixs_limit(tmp_path):
    """Seconds reach Postfix as they are (a test shortens the queue so); 100 days is the
    longest lifetime its queue manager starts with."""
    queue = load(tmp_path, VALID + "  queue:\n    delay_warning_time: 10s\n"
                 "    maximal_queue_lifetime: 100d\n    bounce_queue_lifetime: 0s\n").model.options.queue
    assert (queue.delay_warning_time, queue.maximal_queue_lifetime,
            queue.bounce_queue_lifetime) == ("10s", "100d", "0s")


def test_unknown_key_is_named_with_a_suggestion_and_line(tmp_path):
    text = VALID.replace("domains:", "domians:")
    found = problems(tmp_path, text)
    assert any("domians (line 3): unknown key 'domians'; did you mean 'domains'?" in p
               for p in found)
    assert any(p.startswith("domains: is required") for p in found)


def test_unknown_nested_key(tmp_path):
    text = VALID + "  queue:\n    max_lifetime: 5d\n"
    (found,) = problems(tmp_path, text)
    assert "options.queue.max_lifetime (line 14): unknown key 'max_lifetime'" in found


def test_all_problems_reported_at_once(tmp_path):
    text = VALID.replace("alice@example.org\n  - address: bob", "alice@@example.org\n"
                         "  - address: bob").replace("25M", "lots").replace(
        "hostname: mail.example.org", "hostname: mail_server.example.org")
    found = problems(tmp_path, text)
    assert len(found) == 3, found
    joined = "\n".join(found)
    assert "hostname (line 1): has an invalid label 'mail_server'" in joined
    assert "users[0].address (line 5): must look like name@example.org" in joined
    assert "'alice@@example.org'" in joined
    assert "options.message_size_limit (line 12): must be a size like 50M" in joined


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("bob@example.net\n", "bob@example.com\n"),
         "domain 'example.com' is not declared; add it to domains"),
        (("  - address: bob@example.net\n", "  - address: alice@example.org\n"),
         "'alice@example.org' is declared twice"),
        (("postmaster@example.org: alice@example.org",
          "alice@example.org: bob@example.net"),
         "alias 'alice@example.org' is also a mailbox"),
        (("postmaster@example.org: alice@example.org",
          "postmaster@example.org: ghost@example.org"),
         "points to 'ghost@example.org', which is neither a mailbox nor an alias"),
        (("postmaster@example.org: alice@example.org",
          "postmaster@example.org: team@example.org\n  a@example.org: b@example.org\n"
          "  b@example.org: a@example.org"),
         "alias loop a@example.org -> b@example.org -> a@example.org"),
        (("domains: [example.org, example.net]", "domains: [example.org, example.net, "
          "example.org]"), "'example.org' is listed twice"),
        (("25M", "25M\n  storage:\n    encryption: luks"),
         "options.storage.encryption (line 14): must be 'gocryptfs', 'encfs' or 'none'"),
        (("25M", "25M\n  queue:\n    delay_warning_time: soon"),
         "must be a duration like 30m, 4h or 5d"),
        # Postfix's queue manager stops on a lifetime past 100 days: no mail would move.
        (("25M", "25M\n  queue:\n    maximal_queue_lifetime: 101d"),
         "options.queue.maximal_queue_lifetime (line 14): must be at most 100d"),
        (("25M", "25M\n  queue:\n    bounce_queue_lifetime: 15w"),
         "options.queue.bounce_queue_lifetime (line 14): must be at most 100d"),
        (("25M", "25M\n  relay:\n    host: 'smtp example'\n    username: u"),
         "options.relay.host (line 14): must look like [smtp.example.com]:587"),
        (("domains: [example.org, example.net]", "domains: []"),
         "domains (line 3): must list at least one domain"),
        (("alice@example.org\n  - address: bob", "ali%ce@example.org\n  - address: bob"),
         "has a routing or quoting character"),
        (("25M", "25M\n  bans:\n    max_failures: 0"),
         "options.bans.max_failures (line 14): Input should be greater than or equal to 1"),
        (("25M", "25M\n  bans:\n    ban_time: forever"),
         "options.bans.ban_time (line 14): must be a duration like 30m"),
        (("25M", "25M\n  bans:\n    ignore: [192.0.2.300]"),
         "options.bans.ignore[0] (line 14): must be an IP address or network"),
        (("25M", "25M\n  bans:\n    ignore: ['-192.0.2.1']"),
         "options.bans.ignore[0] (line 14): must be an IP address or network"),
        (("25M", "25M\n  bans:\n    ignore: [\"10.0.0.0/8 1.2.3.4\"]"),
         "must be an IP address or network"),
        (("25M", "25M\n  bans:\n    ignore: [\"10.0.0.1\\n[sshd]\"]"),
         "must be an IP address or network"),
        (("25M", "25M\n  spam:\n    junk_score: 20"),
         "options.spam (line 13): junk_score must be below reject_score"),
        (("25M", "25M\n  spam:\n    greylist_score: 6"),
         "greylist_score must be below junk_score (or null: no greylisting)"),
        (("25M", "25M\n  spam:\n    reject_score: .nan"),
         "options.spam.reject_score (line 14): Input should be a finite number"),
        (("25M", "25M\n  spam:\n    user_hourly_limit: 0"),
         "options.spam.user_hourly_limit (line 14): Input should be greater than or equal to 1"),
        (("25M", "25M\n  spam:\n    greylist_delay: 5 minutes"),
         "options.spam.greylist_delay (line 14): must be a duration like 30m"),
        (("25M", "25M\n  resolver:\n    forward_to: [192.0.2.0/24]"),
         "options.resolver.forward_to[0] (line 14): must be an IP address like 192.0.2.53"),
        (("25M", "25M\n  resolver:\n    forward_to: [\"192.0.2.53\\nforward-addr: 1.1.1.1\"]"),
         "options.resolver.forward_to[0] (line 14): must be an IP address"),
        (("25M", "25M\n  resolver:\n    forward_to: ['-192.0.2.53']"),
         "options.resolver.forward_to[0] (line 14): must be an IP address"),
        (("25M", "25M\n  blocklists:\n    lists: [{zone: bl.example, weight: 3, answers: 127.0.0}]"),
         "options.blocklists.lists[0].answers (line 14): must be an answer like 127.0.0.2"),
        (("25M", "25M\n  blocklists:\n    lists: [{zone: bl.example, weight: 3, answers: \"127.0.0.2\\n\"}]"),
         "options.blocklists.lists[0].answers (line 14): must be an answer like"),
        (("25M", "25M\n  blocklists:\n    lists: [{zone: -bl.example, weight: 3}]"),
         "options.blocklists.lists[0].zone (line 14)"),
        (("25M", "25M\n  blocklists:\n    lists: [{zone: bl.example, weight: 300}]"),
         "options.blocklists.lists[0].weight (line 14): Input should be less than or equal to 100"),
        (("25M", "25M\n  blocklists:\n    allow: [10.0.0.0/8x]"),
         "options.blocklists.allow[0] (line 14): must be an IP address or network"),
        (("25M", "25M\n  resolver:\n    forward_to: [dns.example.org]"),
         "options.resolver.forward_to[0] (line 14): must be an IP address"),
        # A trust anchor reaches unbound's config whole: every field checked, nothing else.
        (("25M", anchors(f"lab.test. DS 11804 13 2 {D64}\\ntrust-anchor: x")),
         "options.resolver.trust_anchors[0] (line 14): must be one line: it contains a newline"),
        (("25M", anchors(f"lab.test. DS 11804 13 2 {D64}\\\"")),
         "options.resolver.trust_anchors[0] (line 14): has a digest that is not 64 hex digits"),
        (("25M", anchors("lab.test. A 192.0.2.1")),
         "options.resolver.trust_anchors[0] (line 14): must be a DS or DNSKEY record like "
         "'example.org. DS 12345 13 2 <64 hex digits>' (type 'A')"),
        (("25M", anchors(f"lab_test. DS 11804 13 2 {D64}")),
         "options.resolver.trust_anchors[0] (line 14): must start with the zone's name, like "
         "example.org.; 'lab_test.' has an invalid label 'lab_test'"),
        (("25M", anchors(f". DS 20326 8 2 {D64}")),
         "options.resolver.trust_anchors[0] (line 14): names the root: its anchor comes with "
         "options.resolver.dnssec: true"),
        (("25M", anchors(f"lab.test. DS 70000 13 2 {D64}")),
         "options.resolver.trust_anchors[0] (line 14): has key tag '70000': must be a number "
         "from 0 to 65535"),
        (("25M", anchors(f"lab.test. DS 11804 3 2 {D64}")),
         "options.resolver.trust_anchors[0] (line 14): has algorithm '3': must be one "
         "validators implement"),
        (("25M", anchors(f"lab.test. DS 11804 13 3 {D64}")),
         "options.resolver.trust_anchors[0] (line 14): has digest type '3': must be 1 (SHA-1), "
         "2 (SHA-256) or 4 (SHA-384)"),
        (("25M", anchors(f"lab.test. DS 11804 13 1 {D64}")),
         "options.resolver.trust_anchors[0] (line 14): has a digest that is not 40 hex digits "
         "(digest type 1)"),
        (("25M", anchors("lab.test. DS 11804 13 2")),
         "options.resolver.trust_anchors[0] (line 14): has a DS record without its four fields"),
        (("25M", anchors("lab.test. DNSKEY 257 3 13 not*base64")),
         "options.resolver.trust_anchors[0] (line 14): has a public key that is not base64"),
        (("25M", anchors("lab.test. DNSKEY 1 3 13 QUJD")),
         "options.resolver.trust_anchors[0] (line 14): has flags 1: not a zone key"),
        (("25M", anchors("lab.test. DNSKEY 257 2 13 QUJD")),
         "options.resolver.trust_anchors[0] (line 14): has protocol '2': must be 3"),
        (("25M", "25M\n  resolver:\n    trust_anchors: [12345]"),
         "options.resolver.trust_anchors[0] (line 14): must be a DS or DNSKEY record"),
        (("25M", anchors(f"lab.test. DS 1 13 2 {D64}", f"LAB.test DS 1 13 2 {D64.lower()}")),
         f"options.resolver.trust_anchors[1] (line 14): 'lab.test. DS 1 13 2 {D64}' is listed "
         "twice; remove one"),
        (("25M", "25M\n  outbound:\n    concurrency: 0"),
         "options.outbound.concurrency (line 14): Input should be greater than or equal to 1"),
        (("25M", "25M\n  outbound:\n    concurrency: 101"),
         "options.outbound.concurrency (line 14): Input should be less than or equal to 100"),
        (("25M", "25M\n  outbound:\n    concurrency: lots"),
         "options.outbound.concurrency (line 14): Input should be a valid integer"),
        # Postfix has no unit below the second: its queue manager reads 500ms as 500
        # minutes and stops on 1.5s at its first delivery; neither may reach main.cf.
        (("25M", "25M\n  outbound:\n    rate_delay: 500ms"),
         "options.outbound.rate_delay (line 14): must be a whole number of seconds or minutes"),
        (("25M", "25M\n  outbound:\n    rate_delay: 1.5s"),
         "options.outbound.rate_delay (line 14): must be a whole number of seconds"),
        (("25M", "25M\n  outbound:\n    rate_delay: 12"),
         "options.outbound.rate_delay (line 14): must be a whole number of seconds"),
        (("25M", "25M\n  outbound:\n    rate_delay: 2h"),
         "options.outbound.rate_delay (line 14): must be a whole number of seconds or minutes "
         "up to 1h"),
        (("25M", "25M\n  outbound:\n    rate_delay: \"1s\\nrelayhost = evil\""),
         "options.outbound.rate_delay (line 14): must be a whole number of seconds"),
        (("25M", "25M\n  outbound:\n    rate_dealy: 1s"),
         "options.outbound.rate_dealy (line 14): unknown key 'rate_dealy'; did you mean 'rate_delay'?"),
        (("25M", "25M\n  antivirus: clamv"),
         "options.antivirus (line 13): must be 'none' or 'clamav' (got 'clamv')"),
        (("25M", "25M\n  antivirus: true"),
         "options.antivirus (line 13): must be 'none' or 'clamav' (got True)"),
        (("25M", "25M\n  antivirus: {engine: clamav}"),
         "options.antivirus (line 13): must be 'none' or 'clamav'"),
        (("25M", "25M\n  pop3: sometimes"),
         "options.pop3 (line 13): Input should be a valid boolean"),
        (("25M", "25M\n  pop3: {port: 110}"),
         "options.pop3 (line 13): Input should be a valid boolean"),
        (("25M", "25M\n  tls:\n    certificate: letsencrypt"),
         "options.tls.certificate (line 14): must be 'acme', 'self-signed' or 'files'"),
        (("25M", "25M\n  tls:\n    acme_directory: http://acme.example/dir"),
         "options.tls.acme_directory (line 14): must be an https:// URL of an ACME directory"),
        (("25M", "25M\n  tls:\n    acme_directory: \"https://acme.example/dir -f\""),
         "options.tls.acme_directory (line 14): must be an https:// URL"),
        (("25M", "25M\n  tls:\n    acme_directory: \"https://acme.example/dir\\n\""),
         "options.tls.acme_directory (line 14): must be an https:// URL"),
        (("25M", "25M\n  tls:\n    acme_email: -admin@example.org"),
         "options.tls.acme_email (line 14)"),
    ],
)
def test_rule_violations_name_the_field_and_the_fix(tmp_path, edit, expected):
    old, new = edit
    assert old in VALID
    found = problems(tmp_path, VALID.replace(old, new, 1))
    assert any(expected in p for p in found), found


def test_yaml_syntax_error_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"not valid YAML \(line 4, column 1; .* on line 3\)"):
        load(tmp_path, "hostname: a.b\nadmin_email: x@a.b\ndomains: [a.b\n")


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping"):
        load(tmp_path, "- just\n- a list\n")


def test_addresses_are_normalised_to_lower_case(tmp_path):
    cfg = load(tmp_path, VALID.replace("  - address: alice@example.org",
                                        "  - address: Alice@Example.ORG")).model
    assert cfg.users[0].address == "alice@example.org"


def test_spam_and_resolver_take_their_defaults(tmp_path):
    cfg = load(tmp_path, VALID).model
    spam, resolver = cfg.options.spam, cfg.options.resolver
    assert (spam.reject_score, spam.junk_score, spam.greylist_score, spam.greylist_delay,
            spam.user_hourly_limit) == (15, 6, 4, "5m", 200)
    assert (resolver.forward_to, resolver.dnssec) == ([], True)
    cfg = load(tmp_path, VALID.replace("25M", "25M\n  resolver:\n    forward_to: [2001:DB8::35]")).model
    assert cfg.options.resolver.forward_to == ["2001:db8::35"]


def test_trust_anchors_are_rebuilt_from_their_fields(tmp_path):
    """As dig and keymgr print them (TTL, class, tabs, a digest in two parts, any case), as
    unbound's trust-anchor takes them: one form, only the checked fields."""
    digest = D64.lower()
    records = [f"Lab.Test.\\t60\\tIN\\tDS\\t11804 13 2 {digest[:32]} {digest[32:]}",
               "lab.test DNSKEY 257 3 13 QUJD REVG",
               f"other.test IN 3600 DS 1 8 4 {'ab' * 48}"]
    text = VALID.replace("25M", "25M\n  resolver:\n    dnssec: false\n    trust_anchors:\n"
                         + "".join(f'      - "{r}"\n' for r in records))
    assert load(tmp_path, text).model.options.resolver.trust_anchors == [
        f"lab.test. DS 11804 13 2 {digest.upper()}",
        "lab.test. DNSKEY 257 3 13 QUJDREVG",
        f"other.test. DS 1 8 4 {'AB' * 48}"]
    assert load(tmp_path, VALID).model.options.resolver.trust_anchors == []


def test_bans_take_their_defaults_and_normalise_networks(tmp_path):
    cfg = load(tmp_path, VALID).model
    bans = cfg.options.bans
    assert (bans.enabled, bans.max_failures, bans.find_time, bans.ban_time, bans.ignore) == (
        True, 5, "10m", "1h", [])
    cfg = load(tmp_path, VALID.replace("25M", "25M\n  bans:\n    ignore: [192.0.2.7/24, 2001:DB8::1]")).model
    assert cfg.options.bans.ignore == ["192.0.2.0/24", "2001:db8::1/128"]


def test_antivirus_is_off_unless_asked_for(tmp_path):
    assert load(tmp_path, VALID).model.options.antivirus == "none"
    cfg = load(tmp_path, VALID.replace("25M", "25M\n  antivirus: clamav")).model
    assert cfg.options.antivirus == "clamav"


def test_pop3_is_off_unless_asked_for(tmp_path):
    assert load(tmp_path, VALID).model.options.pop3 is False
    assert load(tmp_path, VALID.replace("25M", "25M\n  pop3: true")).model.options.pop3 is True


def test_outbound_takes_postfix_defaults_and_accepts_a_quota(tmp_path):
    outbound = load(tmp_path, VALID).model.options.outbound
    assert (outbound.concurrency, outbound.rate_delay) == (20, "0s")
    cfg = load(tmp_path, VALID.replace("25M", "25M\n  outbound:\n    concurrency: 5\n"
                                              "    rate_delay: 1h")).model
    assert (cfg.options.outbound.concurrency, cfg.options.outbound.rate_delay) == (5, "1h")
