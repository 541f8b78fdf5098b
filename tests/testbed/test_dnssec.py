"""DNSSEC in the internet in a box: Knot signs the signed zones, unbound validates them below
the box's trust anchors, and everything else keeps resolving unsigned.

One box for the module: dane.test. signed (a trust anchor of its own), sub.dane.test. signed
too (secure only through a DS record in dane.test.), plain.dane.test. unsigned (delegated
without a DS), site.test. in the unsigned rest of the box.
"""

from __future__ import annotations

from collections.abc import Iterator

import dns.dnssec
import dns.message
import dns.name
import dns.query
import dns.rdatatype
import pytest

from testbed import Internet, Record
from testbed.internet import AUTH_PORT, mirror_hosts

pytestmark = pytest.mark.testbed

SIGNED = "dane.test."
CHILD = "sub.dane.test."
PLAIN = "plain.dane.test."
UNSIGNED = "site.test."
ADDRESS = {SIGNED: "192.0.2.1", CHILD: "192.0.2.2", PLAIN: "192.0.2.3", UNSIGNED: "192.0.2.4"}


@pytest.fixture(scope="module")
def box(network: str, tools) -> Iterator[Internet]:
    with Internet(network, prefix=tools.unique_name("mailstack-inet-dnssec"), zones=(PLAIN,),
                  signed=(SIGNED, CHILD)) as box:
        box.publish([Record(f"www.{zone}", "A", ip) for zone, ip in ADDRESS.items()])
        yield box


def rdata(ds_record: str) -> str:
    """The DS record's data (what a parent publishes), without its owner and type."""
    return ds_record.split(maxsplit=2)[2]


def compact(ds_data: str) -> str:
    """A DS record's data as one comparable string (dig splits and capitalises the digest)."""
    tag, algorithm, digest_type, *digest = ds_data.split()
    return f"{tag} {algorithm} {digest_type} {''.join(digest).lower()}"


def served_ds(box: Internet, zone: str) -> str:
    """The DS of the key Knot serves for the zone, computed here from its DNSKEY (not by Knot)."""
    query = dns.message.make_query(zone, "DNSKEY")
    answer = dns.query.tcp(query, box.ns_ip, port=AUTH_PORT, timeout=5)
    [keys] = [rrset for rrset in answer.answer if rrset.rdtype == dns.rdatatype.DNSKEY]
    [csk] = [key for key in keys if key.flags & 0x0001]  # the secure entry point
    return f"{zone} DS {dns.dnssec.make_ds(dns.name.from_text(zone), csk, 'SHA256').to_text()}"


def test_the_trust_anchor_is_the_ds_of_the_key_the_zone_is_signed_with(box: Internet) -> None:
    # One anchor: sub.dane.test. hangs below dane.test. and is chained by its parent's DS.
    assert [a.lower() for a in box.trust_anchors()] == [served_ds(box, SIGNED).lower()]
    owner, type_, _tag, algorithm, digest_type, digest = box.trust_anchors()[0].split()
    assert (owner, type_, algorithm, digest_type, len(digest)) == (SIGNED, "DS", "13", "2", 64)


def test_a_signed_zone_answers_authenticated_through_the_resolver(box: Internet) -> None:
    assert box.dig(f"www.{SIGNED}") == [ADDRESS[SIGNED]]
    assert box.header(f"www.{SIGNED}") == ("NOERROR", {"qr", "rd", "ra", "ad"})
    assert box.authenticated(SIGNED, "DNSKEY")
    # A name that is not there: the denial is signed too.
    assert box.header(f"nothing.{SIGNED}") == ("NXDOMAIN", {"qr", "rd", "ra", "ad"})
    # A record published later is signed at the reload.
    box.publish([Record(f"later.{SIGNED}", "TXT", "signed at the reload")])
    assert box.dig(f"later.{SIGNED}", "TXT") == ["signed at the reload"]
    assert box.authenticated(f"later.{SIGNED}", "TXT")


def test_the_unsigned_rest_of_the_box_still_resolves_without_ad(box: Internet) -> None:
    assert box.header(f"www.{UNSIGNED}") == ("NOERROR", {"qr", "rd", "ra"})
    assert box.dig(f"www.{UNSIGNED}") == [ADDRESS[UNSIGNED]]
    assert box.status("example.com") == "REFUSED"
    for mirror in mirror_hosts():  # apt in the hosts: no root anchor to fail on
        assert box.status(mirror) == "NOERROR", mirror


def test_an_unsigned_child_of_a_signed_zone_is_insecure_not_bogus(box: Internet) -> None:
    assert box.header(f"www.{PLAIN}") == ("NOERROR", {"qr", "rd", "ra"})
    assert box.dig(f"www.{PLAIN}") == [ADDRESS[PLAIN]]


def test_a_signed_child_is_secure_only_through_a_ds_that_matches_its_key(box: Internet) -> None:
    name = f"www.{CHILD}"
    # No DS in the parent: signed, but nobody vouches for its key.
    assert box.header(name) == ("NOERROR", {"qr", "rd", "ra"})
    box.publish([Record(CHILD, "DS", rdata(box.ds(CHILD)))])
    assert [compact(ds) for ds in box.dig(CHILD, "DS")] == [compact(rdata(box.ds(CHILD)))]
    assert box.header(name) == ("NOERROR", {"qr", "rd", "ra", "ad"})
    # Tampered: the parent vouches for another key (its digest's last digit changed).
    good = rdata(box.ds(CHILD))
    tampered = good[:-1] + ("0" if good[-1] != "0" else "1")
    box.publish([Record(CHILD, "DS", tampered)])
    assert box.status(name) == "SERVFAIL"
    assert box.dig(name) == []
    box.withdraw(CHILD, "DS")
    assert box.header(name) == ("NOERROR", {"qr", "rd", "ra"})
