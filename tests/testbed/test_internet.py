"""The internet in a box: real Knot, unbound, dig and swaks in containers on a test network.

One Internet instance serves the whole module (starting it takes seconds, not minutes).
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

import testbed
from testbed import Internet, Record
from testbed.internet import internet_image, mirror_hosts

pytestmark = pytest.mark.testbed

DOMAIN = "site.test"
MAIL_HOST = "mail.site.test"


@pytest.fixture(scope="module")
def internet(network: str, tools) -> Iterator[Internet]:
    with Internet(network, prefix=tools.unique_name("mailstack-inet")) as box:
        yield box


@pytest.fixture(scope="module")
def site_ip(internet: Internet) -> str:
    """An address on the test network for the site's mail host (its A and PTR records)."""
    return str(ipaddress.ip_network(internet.subnet).network_address + 200)


@pytest.fixture(scope="module")
def site_json(site_ip: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Real `mailstack dns --format json` output of a freshly initialised site."""
    site = tmp_path_factory.mktemp("inet") / "site"
    run = [sys.executable, "-m", "mailstack"]
    init = subprocess.run([*run, "init", str(site), "--domain", DOMAIN, "--hostname", MAIL_HOST,
                           "--host", site_ip], capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    dns = subprocess.run([*run, "--site", str(site), "dns", "--format", "json"],
                         capture_output=True, text=True, timeout=120)
    assert dns.returncode == 0, dns.stderr
    return dns.stdout


@pytest.fixture(scope="module")
def published(internet: Internet, site_json: str) -> list[Record]:
    records = testbed.site_records(site_json)
    internet.publish(records)
    return records


@pytest.fixture(scope="module")
def smtp_peer(internet: Internet, network: str, tools) -> Iterator[testbed.Host]:
    """A listening SMTP server on another container: Postfix's smtp-sink."""
    name = tools.unique_name("mailstack-inet-peer")
    try:
        host = testbed.start_host(name, internet_image(), hostname="peer.site.test", network=network)
        testbed.exec_in(name, ["systemd-run", "--unit=smtp-sink", "/usr/sbin/smtp-sink",
                               "-u", "nobody", "0.0.0.0:25", "10"])
        testbed.wait_for_port(host.ip, 25, 15)
        yield host
    finally:
        testbed.remove_host(name)


def value(records: list[Record], type: str, name_start: str = "") -> str:
    return next(r.value for r in records if r.type == type and r.name.startswith(name_start))


def test_site_records_resolve_as_mailstack_prints_them(internet: Internet, published: list[Record],
                                                       site_ip: str) -> None:
    assert internet.dig(MAIL_HOST) == [site_ip]
    assert internet.dig(DOMAIN, "MX") == [f"10 {MAIL_HOST}."]
    assert internet.dig(DOMAIN, "TXT") == ["v=spf1 mx -all"]
    assert internet.dig(f"_dmarc.{DOMAIN}", "TXT") == [value(published, "TXT", "_dmarc.")]
    assert internet.status("nothing.site.test") == "NXDOMAIN"
    ptr = ipaddress.ip_address(site_ip).reverse_pointer
    assert internet.dig(ptr, "PTR") == [f"{MAIL_HOST}."]


def test_a_dkim_key_longer_than_255_bytes_comes_back_intact(internet: Internet,
                                                            published: list[Record]) -> None:
    dkim = next(r for r in published if "._domainkey." in r.name)
    assert len(dkim.value) > 255
    assert internet.dig(dkim.name, "TXT") == [dkim.value]


def test_blocklist_lists_given_ips_only(internet: Internet) -> None:
    sender_ip = internet.sender.host.ip  # type: ignore[union-attr]
    internet.block(sender_ip)
    reversed_ip = ".".join(reversed(sender_ip.split(".")))
    assert internet.dig(f"{reversed_ip}.bl.test") == ["127.0.0.2"]
    assert internet.dig("2.0.0.127.bl.test") == ["127.0.0.2"]
    assert internet.status("9.9.9.10.bl.test") == "NXDOMAIN"
    internet.unblock(sender_ip)
    assert internet.status(f"{reversed_ip}.bl.test") == "NXDOMAIN"


def test_a_runtime_change_is_seen_through_the_resolver_cache(internet: Internet) -> None:
    name = "_change.site.test"
    internet.publish([Record(name, "TXT", "first", ttl=3600)])
    assert internet.dig(name, "TXT") == ["first"]  # now cached for an hour
    internet.publish([Record(name, "TXT", "second", ttl=3600)])
    assert internet.dig(name, "TXT") == ["second"]
    internet.withdraw(name)
    assert internet.status(name, "TXT") == "NXDOMAIN"


def test_outside_domains_and_their_records(internet: Internet) -> None:
    ip = internet.sender.host.ip  # type: ignore[union-attr]
    internet.publish(testbed.sender_domain("outside.test", ip, dkim=("sel", "QUJD" * 100)))
    internet.publish([Record("v6.outside.test", "AAAA", "fd00::25")])
    assert internet.dig("outside.test", "MX") == ["10 mx.outside.test."]
    assert internet.dig("outside.test", "TXT") == [f"v=spf1 ip4:{ip} -all"]
    assert internet.dig("sel._domainkey.outside.test", "TXT") == ["v=DKIM1; k=rsa; p=" + "QUJD" * 100]
    assert internet.dig("v6.outside.test", "AAAA") == ["fd00::25"]
    assert internet.dig(ipaddress.ip_address(ip).reverse_pointer, "PTR") == ["mx.outside.test."]


def test_real_names_are_refused_but_debian_mirrors_resolve(internet: Internet) -> None:
    assert internet.status("example.com") == "REFUSED"
    for mirror in mirror_hosts():
        assert internet.status(mirror) == "NOERROR", mirror


def test_names_outside_the_box_are_rejected(internet: Internet) -> None:
    with pytest.raises(ValueError, match="none of the box's zones"):
        internet.publish([Record("example.com", "A", "192.0.2.1")])


def test_a_host_pointed_at_the_resolver_finds_the_site(internet: Internet, published: list[Record],
                                                      smtp_peer: testbed.Host, site_ip: str) -> None:
    testbed.use_resolver(smtp_peer.name, internet.resolver_ip)
    hosts = testbed.exec_in(smtp_peer.name, ["getent", "hosts", MAIL_HOST]).stdout.split()
    assert hosts == [site_ip, MAIL_HOST]
    chroot = testbed.exec_in(smtp_peer.name, ["cat", "/var/spool/postfix/etc/resolv.conf"]).stdout
    assert f"nameserver {internet.resolver_ip}" in chroot


def test_outside_sender_completes_an_smtp_dialogue(internet: Internet, smtp_peer: testbed.Host) -> None:
    sent = internet.sender.swaks(smtp_peer.ip, to=f"alice@{DOMAIN}",  # type: ignore[union-attr]
                                 mail_from="bob@outside.test", helo="mx.outside.test")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    lines = sent.stdout.splitlines()
    assert " -> EHLO mx.outside.test" in lines and " -> MAIL FROM:<bob@outside.test>" in lines
    assert lines[lines.index(" -> .") + 1].startswith("<-  250")  # the message was accepted
    assert "<-  221 Bye" in lines


def test_the_image_is_cached_by_its_recipe(internet: Internet) -> None:
    started = time.monotonic()
    assert re.fullmatch(r"mailstack-inet:[0-9a-f]{12}", testbed.internet_image())
    assert time.monotonic() - started < 10, "a second internet_image() call must hit the cache"
