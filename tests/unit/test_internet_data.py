"""The internet in a box's DNS data (no containers): zone files, names, resolver config."""

from __future__ import annotations

import pytest
from testbed.internet import (
    Record,
    TsigKey,
    blocklist_records,
    delegations,
    islands,
    knot_conf,
    record_zone,
    reverse_zone,
    site_records,
    txt_rdata,
    unbound_conf,
    zone_file,
    zone_of,
)


def test_txt_is_split_into_strings_of_at_most_255_bytes():
    value = "p=" + "A" * 400
    assert txt_rdata(value) == f'"{value[:255]}" "{value[255:]}"'
    assert txt_rdata('say "hi" \\ é') == '"say \\"hi\\" \\\\ \\195\\169"'
    assert txt_rdata("") == '""'


def test_site_json_items_become_records():
    recs = site_records('[{"name": "Site.test.", "type": "mx", "value": "10 mail.site.test.", '
                        '"ttl": 3600, "note": "ignored"}]')
    assert recs == [Record("site.test.", "MX", "10 mail.site.test.", 3600)]
    with pytest.raises(ValueError, match="placeholder"):
        Record("mail.site.test.", "A", "<IPv4 of mail.site.test>")


def test_names_go_to_the_most_specific_zone_and_never_outside():
    origins = {"test.", "bl.test.", "18.172.in-addr.arpa."}
    assert zone_of("2.0.0.127.bl.test", origins) == "bl.test."
    assert zone_of("mail.site.test.", origins) == "test."
    assert zone_of("5.0.18.172.in-addr.arpa.", origins) == "18.172.in-addr.arpa."
    with pytest.raises(ValueError, match="none of the box's zones"):
        zone_of("example.com.", origins)


def test_reverse_zone_takes_the_whole_octets_of_the_prefix():
    assert reverse_zone("172.18.0.0/16") == "18.172.in-addr.arpa."
    assert reverse_zone("192.168.48.0/20") == "168.192.in-addr.arpa."
    assert reverse_zone("10.1.2.0/24") == "2.1.10.in-addr.arpa."


def test_blocklist_always_lists_the_conventional_test_entry():
    names = {r.name for r in blocklist_records(["192.0.2.9"]) if r.type == "A"}
    assert names == {"2.0.0.127.bl.test.", "9.2.0.192.bl.test."}


def test_zone_file_has_soa_ns_and_records():
    text = zone_file("test.", [Record("a.test", "A", "192.0.2.1")], serial=7)
    assert "@ IN SOA ns.test. hostmaster.test. 7 " in text
    assert "a.test. 60 IN A 192.0.2.1" in text


def test_resolver_refuses_everything_but_the_box_and_the_mirrors():
    conf = unbound_conf({"test."}, "172.18.0.0/16", ["deb.debian.org"], "172.18.0.3")
    assert 'local-zone: "." refuse' in conf
    assert 'local-zone: "deb.debian.org." transparent' in conf
    # Knot on port 53 of the name server's own address, as the NS records say.
    assert 'domain-insecure: "test."' in conf and "stub-addr: 172.18.0.3@53" in conf


def test_knot_takes_signed_updates_for_dynamic_zones_only():
    key = TsigKey(secret="c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0IQ==")
    conf = knot_conf({"test.", "site.test."}, ["site.test"], key)
    assert "listen: 0.0.0.0@53" in conf
    assert f"id: mailstack-box.\n    algorithm: hmac-sha256\n    secret: {key.secret}" in conf
    assert '- domain: "site.test."\n    template: dynamic\n' in conf
    assert '- domain: "test."\n' in conf and 'test."\n    template' not in conf.replace("site.test", "")
    assert "acl: update" in conf.split("id: dynamic")[1]
    assert "acl:" not in conf.split("id: default")[1].split("id: dynamic")[0]
    static = knot_conf({"test."})
    assert "key:" not in static and "acl" not in static
    with pytest.raises(ValueError, match="TSIG"):
        knot_conf({"site.test."}, ["site.test."])


def test_knot_signs_the_signed_zones_only_with_one_key_each():
    conf = knot_conf({"test.", "dane.test.", "site.test."}, ["site.test."],
                     TsigKey(secret="c2VjcmV0"), signed=["dane.test", "site.test."])
    assert "policy:\n  - id: box\n    algorithm: ecdsap256sha256\n    single-type-signing: on\n" in conf
    assert '- domain: "dane.test."\n    dnssec-signing: on\n    dnssec-policy: box\n' in conf
    # A dynamic zone is signed too (Knot signs each update).
    assert ('- domain: "site.test."\n    template: dynamic\n    dnssec-signing: on\n'
            in conf)
    assert conf.endswith('  - domain: "test."\n')  # unsigned
    assert "policy:" not in knot_conf({"test."})


def test_every_zone_is_delegated_from_its_parent_and_a_ds_lives_there():
    origins = {"test.", "dane.test.", "plain.dane.test.", "bl.test.", "18.172.in-addr.arpa."}
    assert {(r.name, r.type, r.value) for r in delegations(origins)} == {
        ("dane.test.", "NS", "ns.test."), ("plain.dane.test.", "NS", "ns.test."),
        ("bl.test.", "NS", "ns.test.")}
    assert record_zone(Record("plain.dane.test", "DS", "1 13 2 AB"), origins) == "dane.test."
    assert record_zone(Record("plain.dane.test", "NS", "ns.test."), origins) == "dane.test."
    assert record_zone(Record("plain.dane.test", "A", "192.0.2.1"), origins) == "plain.dane.test."
    assert record_zone(Record("x.plain.dane.test", "DS", "1 13 2 AB"), origins) == "plain.dane.test."
    with pytest.raises(ValueError, match="no parent zone"):
        record_zone(Record("test.", "DS", "1 13 2 AB"), origins)


def test_only_signed_zones_no_other_encloses_get_a_trust_anchor():
    assert islands(["dane.test", "sub.dane.test.", "other.test.", "notdane.test."]) == [
        "dane.test.", "notdane.test.", "other.test."]


def test_the_resolver_validates_below_its_anchors_and_nothing_else():
    anchor = "dane.test. DS 11804 13 2 4FFD"
    conf = unbound_conf({"test.", "dane.test.", "plain.dane.test.", "site.test."},
                        "172.18.0.0/16", [], "172.18.0.3", [anchor])
    assert f'trust-anchor: "{anchor}"' in conf
    # Outside the anchor: unsigned. Inside: proven by the parent (a child without DS is
    # insecure, not bogus), never declared insecure.
    insecure = {line.split('"')[1] for line in conf.splitlines() if "domain-insecure" in line}
    assert insecure == {"test.", "site.test."}
