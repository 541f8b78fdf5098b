"""`mailstack dns check` and `dns push --dry-run` against a real DNS server on loopback: a
small authoritative server (dnspython's messages, UDP and TCP, truncation and all) that
serves zones built from `mailstack dns --format json`, and answers as the resolver too.
(The test bed runs the same commands against Knot and unbound: tests/testbed/test_dns_publish.py.)
"""

from __future__ import annotations

import json
import socket
import socketserver
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest

from mailstack.cli import app
from mailstack.dnsquery import Resolver, Server
from mailstack.errors import MailstackError
from mailstack.site.directory import InitOptions, Site, init_site
from mailstack.verify.dns import as_json, check, table
from mailstack.verify.published import dns_checks, mx_matches, why_skipped
from mailstack.verify.report import Check

DOMAIN = "example.org"
HOST = "127.0.0.1"  # the site's host: nothing but loopback is ever contacted


class TinyDNS:
    """Authoritative for the zones it holds (AA, NXDOMAIN with the SOA, CNAMEs as they are),
    on one loopback port over UDP and TCP; it keeps the opcode of every message it gets."""

    def __init__(self) -> None:
        self.zones: dict[dns.name.Name, dns.zone.Zone] = {}
        self.opcodes: list[str] = []
        handler = self._handler()
        for _ in range(20):  # the same free port for UDP and TCP
            self.udp = socketserver.ThreadingUDPServer((HOST, 0), handler)
            self.port = self.udp.server_address[1]
            try:
                self.tcp = socketserver.ThreadingTCPServer((HOST, self.port), handler)
                break
            except OSError:
                self.udp.server_close()
        for server in (self.udp, self.tcp):
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                             daemon=True).start()

    def close(self) -> None:
        for server in (self.udp, self.tcp):
            server.shutdown()
            server.server_close()

    def serve(self, origin: str, records: list[tuple[str, str, str]]) -> None:
        """A zone: SOA and NS (ns.<origin>, at 127.0.0.1) plus (name, type, zone-file value)."""
        lines = [f"@ 60 IN SOA ns.{origin} hostmaster.{origin} 1 60 60 600 5",
                 f"@ 60 IN NS ns.{origin}", f"ns.{origin} 60 IN A {HOST}"]
        lines += [f"{name} 60 IN {type} {value}" for name, type, value in records]
        self.zones[dns.name.from_text(origin)] = dns.zone.from_text(
            "\n".join(lines) + "\n", origin=origin, relativize=False)

    def answer(self, wire: bytes, limit: int | None) -> bytes:
        query = dns.message.from_wire(wire)
        self.opcodes.append(dns.opcode.to_text(query.opcode()))
        response = dns.message.make_response(query)
        qname, qtype = query.question[0].name, query.question[0].rdtype
        zone = max((z for o, z in self.zones.items() if qname.is_subdomain(o)),
                   key=lambda z: len(z.origin), default=None)
        if zone is None or query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.REFUSED)
            return response.to_wire()
        response.flags |= dns.flags.AA
        node = zone.get_node(qname)
        soa = zone.find_rrset(zone.origin, dns.rdatatype.SOA)
        if node is None:
            below = any(n.is_subdomain(qname) for n in zone.nodes)
            if not below:
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(soa)
        else:
            rdataset = node.get_rdataset(dns.rdataclass.IN, qtype) or node.get_rdataset(
                dns.rdataclass.IN, dns.rdatatype.CNAME)
            if rdataset is None:
                response.authority.append(soa)
            else:
                rrset = response.find_rrset(response.answer, qname, dns.rdataclass.IN,
                                            rdataset.rdtype, create=True)
                rrset.update(rdataset)
        try:
            return response.to_wire(max_size=limit or 65535)
        except dns.exception.TooBig:
            response.answer.clear()
            response.flags |= dns.flags.TC
            return response.to_wire()

    def _handler(self):
        tiny = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                if isinstance(self.request, tuple):  # UDP: (data, socket)
                    data, sock = self.request
                    query = dns.message.from_wire(data)
                    limit = query.payload if query.edns >= 0 else 512
                    sock.sendto(tiny.answer(data, limit), self.client_address)
                    return
                size = struct.unpack("!H", self.request.recv(2))[0]
                data = b""
                while len(data) < size:
                    data += self.request.recv(size - len(data))
                out = tiny.answer(data, None)
                self.request.sendall(struct.pack("!H", len(out)) + out)

        return Handler


@pytest.fixture
def server() -> Iterator[TinyDNS]:
    tiny = TinyDNS()
    yield tiny
    tiny.close()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return init_site(tmp_path / "site", InitOptions(DOMAIN, f"mail.{DOMAIN}", HOST))


def dns_json(runner, site: Path) -> list[dict]:
    result = runner.invoke(app, ["--site", str(site), "dns", "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def zone_value(item: dict) -> str:
    if item["type"] != "TXT":
        return item["value"]
    raw = item["value"]
    return " ".join('"' + raw[i:i + 255].replace('"', '\\"') + '"' for i in range(0, len(raw), 255))


def publish(server: TinyDNS, items: list[dict], *, skip=(), replace=None) -> None:
    """The site's zone as `mailstack dns` prints it, minus skip (names), values replaced."""
    replace = replace or {}
    records = [(i["name"], i["type"], replace.get((i["name"], i["type"]), zone_value(i)))
               for i in items if i["type"] != "PTR" and i["name"] not in skip]
    server.serve(f"{DOMAIN}.", records)


def by_name(report) -> dict[tuple[str, str], object]:
    return {(r.record.name, r.record.type): r for r in report.results}


def run_check(site: Path, server: TinyDNS):
    return check(Site(site), Server(HOST, server.port), ns_port=server.port)


def test_every_record_as_printed_is_ok(runner, site, server):
    items = dns_json(runner, site)
    publish(server, items)
    report = run_check(site, server)
    assert {r.status for r in report.results} == {"ok"}, table(report)
    assert report.passed
    assert len(report.results) == len([i for i in items if i["type"] != "PTR"])
    assert list(report.zones) == [f"{DOMAIN}."]
    assert [ns.name for ns in report.zones[f"{DOMAIN}."]] == [f"ns.{DOMAIN}."]
    # Every record was asked of the name server and of the resolver.
    assert all(len(r.sources) == 2 and r.sources[0].authoritative for r in report.results)
    # No PTR zone here, and nothing listens on port 25 of loopback: both are warnings only.
    text = table(report)
    assert "records: 17 ok" in text
    assert any("PTR of 127.0.0.1: not looked up" in w for w in report.warnings), report.warnings
    assert any(w.startswith("port 25 of 127.0.0.1: the key it presents was not compared")
               for w in report.warnings)


def test_with_the_groupware_the_dav_records_as_printed_are_ok(runner, site, server):
    path = site / "mailstack.yml"
    path.write_text(path.read_text().replace("  groupware: false", "  groupware: true"))
    items = dns_json(runner, site)
    assert any(i["name"].startswith("_caldavs._tcp.") and i["type"] == "TXT" for i in items)
    publish(server, items)
    report = run_check(site, server)
    assert {r.status for r in report.results} == {"ok"}, table(report)


def test_different_and_missing_are_shown_with_both_values_and_fail_when_required(runner, site, server):
    items = dns_json(runner, site)
    publish(server, items, skip={f"_dmarc.{DOMAIN}.", f"_mta-sts.{DOMAIN}."}, replace={
        (f"{DOMAIN}.", "TXT"): '"v=spf1 a -all"',
        (f"autoconfig.{DOMAIN}.", "CNAME"): "elsewhere.example.",
    })
    report = run_check(site, server)
    results = by_name(report)
    spf = results[(f"{DOMAIN}.", "TXT")]
    assert (spf.status, spf.found) == ("different", ["v=spf1 a -all"])
    assert results[(f"_dmarc.{DOMAIN}.", "TXT")].status == "missing"
    assert results[(f"_mta-sts.{DOMAIN}.", "TXT")].status == "missing"
    web = results[(f"autoconfig.{DOMAIN}.", "CNAME")]
    assert (web.status, web.found) == ("different", ["elsewhere.example."])
    assert not report.passed  # DMARC is required
    assert [r.record.kind for r in report.results if r.fails] == ["dmarc"]
    text = table(report)
    assert 'different TXT   example.org.' in text
    assert 'expected: "v=spf1 mx -all"' in text and 'found:    "v=spf1 a -all"' in text
    assert "missing   TXT   _dmarc.example.org." in text and "(required)" in text
    data = json.loads(as_json(report))
    assert data["schema"] == 1 and data["ok"] is False
    dmarc = next(r for r in data["records"] if r["name"] == f"_dmarc.{DOMAIN}.")
    assert dmarc["required"] is True and dmarc["status"] == "missing" and dmarc["found"] == []
    assert {s["status"] for s in dmarc["sources"]} == {"missing"}
    assert set(data["records"][0]) == {"name", "type", "kind", "required", "expected", "status",
                                       "found", "sources", "hint", "note"}


def test_spf_beside_other_txt_records_and_a_second_mx_are_fine(runner, site, server):
    """SPF is one TXT record among others at the domain; a backup MX is a choice."""
    items = dns_json(runner, site)
    publish(server, items, replace={
        (f"{DOMAIN}.", "TXT"): '"google-site-verification=abc"',
        (f"{DOMAIN}.", "MX"): f"10 mail.{DOMAIN}.",
    })
    zone = server.zones[dns.name.from_text(f"{DOMAIN}.")]
    node = zone.find_node(f"{DOMAIN}.")
    node.find_rdataset(dns.rdataclass.IN, dns.rdatatype.TXT).add(
        dns.rdata.from_text("IN", "TXT", '"v=spf1 mx -all"'))
    node.find_rdataset(dns.rdataclass.IN, dns.rdatatype.MX).add(
        dns.rdata.from_text("IN", "MX", "20 backup.example.net."))
    report = run_check(site, server)
    assert by_name(report)[(f"{DOMAIN}.", "TXT")].status == "ok"
    assert by_name(report)[(f"{DOMAIN}.", "MX")].status == "ok"
    # Two SPF records are an error to every receiver (RFC 7208 3.2).
    node.find_rdataset(dns.rdataclass.IN, dns.rdatatype.TXT).add(
        dns.rdata.from_text("IN", "TXT", '"v=spf1 a -all"'))
    spf = by_name(run_check(site, server))[(f"{DOMAIN}.", "TXT")]
    assert spf.status == "different" and sorted(spf.found) == ["v=spf1 a -all", "v=spf1 mx -all"]


def test_a_web_name_with_the_host_address_instead_of_a_cname_is_fine(runner, site, server):
    items = dns_json(runner, site)
    publish(server, items, skip={f"mta-sts.{DOMAIN}."})
    zone = server.zones[dns.name.from_text(f"{DOMAIN}.")]
    zone.replace_rdataset(f"mta-sts.{DOMAIN}.", dns.rdataset.from_text("IN", "A", 60, HOST))
    result = by_name(run_check(site, server))[(f"mta-sts.{DOMAIN}.", "CNAME")]
    assert (result.status, result.found) == ("ok", [f"A {HOST}"])
    zone.replace_rdataset(f"mta-sts.{DOMAIN}.", dns.rdataset.from_text("IN", "A", 60, "192.0.2.9"))
    result = by_name(run_check(site, server))[(f"mta-sts.{DOMAIN}.", "CNAME")]
    assert (result.status, result.found) == ("different", ["A 192.0.2.9"])


def test_a_wrong_dkim_key_or_address_fails_and_an_extra_address_is_a_warning(runner, site, server):
    items = dns_json(runner, site)
    dkim = next(i for i in items if "._domainkey." in i["name"])
    publish(server, items, replace={(dkim["name"], "TXT"): '"v=DKIM1; k=rsa; p=AAAA"'})
    zone = server.zones[dns.name.from_text(f"{DOMAIN}.")]
    zone.find_rdataset(f"mail.{DOMAIN}.", "A").add(dns.rdata.from_text("IN", "A", "127.0.0.9"))
    report = run_check(site, server)
    assert [r.record.kind for r in report.results if r.fails] == ["dkim"]
    assert by_name(report)[(f"mail.{DOMAIN}.", "A")].status == "ok"
    assert any("A also points to 127.0.0.9" in w for w in report.warnings), report.warnings


def test_a_resolver_that_refuses_the_domain_is_one_line_from_the_cli(runner, site, server):
    server.serve("example.net.", [])
    result = runner.invoke(app, ["--site", str(site), "dns", "check", "--resolver",
                                 f"{HOST}:{server.port}"])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: the resolver {HOST}:{server.port} cannot resolve "
                                    "mail.example.org SOA (it answered SERVFAIL or REFUSED)")
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_an_unreachable_resolver_is_one_clear_message(site):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((HOST, 0))  # takes queries, never answers
        resolver = Resolver(Server(HOST, silent.getsockname()[1]), lifetime=0.5)
        with pytest.raises(MailstackError, match=r"^the resolver 127\.0\.0\.1:\d+ did not answer "
                                                 r"within 0\.5 s; pass --resolver"):
            resolver.zone_of(f"{DOMAIN}.")


@pytest.mark.parametrize(("value", "message"), [
    ("localhost", "must be an IP address"),
    ("192.0.2.1:0", "port 0 is not between 1 and 65535"),
    ("192.0.2.1\n", "must be an IP address"),
    ("[2001:db8::1]:x", "must be an IP address"),
])
def test_resolver_option_is_checked(runner, site, value, message):
    result = runner.invoke(app, ["--site", str(site), "dns", "check", "--resolver", value])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_push_dry_run_shows_the_update_and_sends_nothing(runner, site, server):
    items = dns_json(runner, site)
    publish(server, items, replace={(f"{DOMAIN}.", "TXT"): '"v=spf1 a -all"'})
    zone = server.zones[dns.name.from_text(f"{DOMAIN}.")]
    zone.find_rdataset(f"{DOMAIN}.", "TXT").add(dns.rdata.from_text("IN", "TXT", '"keep-me"'))
    path = site / "mailstack.yml"
    path.write_text(path.read_text().replace(
        "dns_update: null", f"dns_update: {{key_name: k, server: '{HOST}:{server.port}', "
                            f"zones: [{DOMAIN}]}}"))
    result = runner.invoke(app, ["--site", str(site), "dns", "push", "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"; zone {DOMAIN}.: 17 records, to {HOST} ({HOST}) port {server.port}" in out
    assert "opcode UPDATE" in out
    # Replaced by name and type; SPF alone among the domain's TXT records; CNAMEs alone.
    assert f"mail.{DOMAIN}. ANY A\nmail.{DOMAIN}. 3600 IN A {HOST}\n" in out
    assert f'{DOMAIN}. 0 NONE TXT "v=spf1 a -all"\n{DOMAIN}. 3600 IN TXT "v=spf1 mx -all"' in out
    assert "keep-me" not in out
    assert f"mta-sts.{DOMAIN}. ANY ANY\nmta-sts.{DOMAIN}. 3600 IN CNAME mail.{DOMAIN}.\n" in out
    assert "PTR" not in out and "TSIG" not in out
    assert "UPDATE" not in server.opcodes  # only the current TXT records were asked


def test_a_domain_that_is_not_delegated_is_named(site, server):
    server.serve("org.", [])  # the registry's zone: example.org has no zone of its own
    report = run_check(site, server)
    assert {r.status for r in report.results} == {"missing"} and not report.passed
    assert list(report.zones) == ["org."]
    assert "example.org lies in the zone org., a top-level domain: it is not delegated" \
        in report.warnings[0]


# --------------------------------------------------------------------------- verify's DNS checks


def verify_checks(site: Path, server: TinyDNS) -> dict[str, Check]:
    return {c.name: c for c in dns_checks(Site(site), Server(HOST, server.port), ns_port=server.port)}


def test_verify_turns_the_report_into_checks(runner, site, server):
    publish(server, dns_json(runner, site))
    checks = verify_checks(site, server)
    published = checks["DNS records published as printed"]
    assert published.passed and published.detail == "17 of 17 records ok", published
    covers = checks[f"MTA-STS policy of {DOMAIN} covers its MX"]
    assert covers.passed and covers.detail == f"MX mail.{DOMAIN}. in the policy"
    # Nothing serves loopback's reverse zone or listens on its port 25: both fail, saying why.
    assert not checks["reverse DNS (PTR) names the host"].passed
    tlsa = checks[f"TLSA _25._tcp.mail.{DOMAIN}. matches the key on port 25"]
    assert not tlsa.passed and "was not compared" in tlsa.detail, tlsa


def test_verify_names_the_failing_records_and_an_mx_outside_the_policy(runner, site, server):
    items = dns_json(runner, site)
    sts = next(i for i in items if i["name"] == f"_mta-sts.{DOMAIN}.")
    publish(server, items, skip={f"_dmarc.{DOMAIN}."},
            replace={(sts["name"], "TXT"): '"v=STSv1; id=old"'})
    checks = verify_checks(site, server)
    published = checks["DNS records published as printed"]
    assert not published.passed
    assert published.detail.startswith(f"missing: TXT _dmarc.{DOMAIN}.")
    assert "mailstack dns check" in published.detail
    covers = checks[f"MTA-STS policy of {DOMAIN} covers its MX"]
    assert not covers.passed and f"_mta-sts.{DOMAIN} is different" in covers.detail, covers
    # A backup MX the policy does not name: an enforcing sender would refuse it.
    zone = server.zones[dns.name.from_text(f"{DOMAIN}.")]
    zone.find_rdataset(f"{DOMAIN}.", "MX").add(dns.rdata.from_text("IN", "MX", "20 backup.example.net."))
    covers = verify_checks(site, server)[f"MTA-STS policy of {DOMAIN} covers its MX"]
    assert not covers.passed and covers.detail.startswith("MX backup.example.net. not in the policy")


def test_verify_dns_checks_fail_cleanly_without_a_resolver(site):
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind((HOST, 0))  # bound, never answering
    try:
        checks = dns_checks(Site(site), Server(HOST, dead.getsockname()[1]))
    finally:
        dead.close()
    assert [c.name for c in checks] == ["DNS records published as printed"]
    assert not checks[0].passed and checks[0].detail


@pytest.mark.parametrize(("names", "resolver", "skipped"), [
    (("sandbox.test", "mail.sandbox.test"), None, True),
    (("sandbox.test", "mail.sandbox.test"), Server(HOST, 53), False),
    (("example.org", "mail.example.org"), None, False),
    (("example.org", "mail.box.test"), None, False),
])
def test_special_use_names_are_not_asked_of_the_public_dns(tmp_path, names, resolver, skipped):
    site = Site(init_site(tmp_path / "s", InitOptions(names[0], names[1], HOST)))
    why = why_skipped(site, resolver)
    assert (why is not None) == skipped
    if skipped:
        assert "--resolver" in why and "sandbox.test" in why


@pytest.mark.parametrize(("pattern", "host", "match"), [
    ("mail.example.org", "mail.example.org.", True), ("mail.example.org", "MAIL.example.org", True),
    ("mail.example.org", "mx.example.org", False), ("*.example.org", "mx.example.org", True),
    ("*.example.org", "a.b.example.org", False), ("*.example.org", "example.org", False),
])
def test_policy_mx_patterns(pattern, host, match):
    assert mx_matches(pattern, host) is match
