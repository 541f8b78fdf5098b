"""The internet in a box's DNS data (no containers): zone files, names, resolver config."""

from __future__ import annotations

import pytest
from testbed.internet import (
    Record,
    TsigKey,
    blocklist_records,
    knot_conf,
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
