"""`mailstack dns check`: is every record `mailstack dns` prints published, as printed?

Each record (PTR aside: the provider of the address sets it) is asked of every name server
of its zone, directly, and of a resolver (what the world sees, caches included). Per record:
ok, missing, different (with what was found), or unknown when no server answered. The
status is the worst any server gave; each server's own answer is in the report.

How values are compared:
- TXT: only the records of the same tag (v=spf1, v=DKIM1 …) count, so SPF sits beside
  other TXT records at the domain; two of the same tag are an error to receivers (two SPF
  records are a permerror), so they are "different".
- MX, A/AAAA, SRV, TLSA: ours must be among the records of that name and type (a second
  MX is allowed; an address the inventory does not know is a warning).
- the web names: a CNAME to the host name, or an address record of the host.

Warnings (exit 0): the PTR of a host's address is not the host name; the key the server
presents on port 25 (STARTTLS) does not match the TLSA record (the SHA-256 of its
SubjectPublicKeyInfo); name servers that did not answer. The exit status is 1 when a
required record (render/dns.py REQUIRED) is missing or unknown, or one whose value must
match (MUST_MATCH) is different.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dns.name
import dns.rdatatype

from mailstack.dnsquery import (
    NameServer,
    QueryFailed,
    Reply,
    Resolver,
    Server,
    rdata,
    txt_text,
    value_text,
)
from mailstack.errors import MailstackError
from mailstack.render.dns import MUST_MATCH, SHARED_TXT, Record, site_records, txt_tag
from mailstack.verify import certificate

SCHEMA = 1
SMTP_PORT = 25
SMTP_TIMEOUT = 6.0
WORKERS = 16
STATUS_ORDER = {"ok": 0, "different": 1, "missing": 2}


@dataclass
class SourceResult:
    """What one server said about one record."""

    source: str
    authoritative: bool
    status: str  # ok, missing, different, error
    found: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class RecordResult:
    record: Record
    status: str  # ok, missing, different, unknown
    found: list[str]
    sources: list[SourceResult]
    hint: str | None = None

    @property
    def fails(self) -> bool:
        r = self.record
        return (r.required and self.status in ("missing", "unknown")) or (
            r.kind in MUST_MATCH and self.status == "different")


@dataclass
class Report:
    resolver: str
    zones: dict[str, list[NameServer]]
    results: list[RecordResult]
    warnings: list[str]
    # The subsets of warnings `mailstack verify` turns into checks of their own.
    ptr_warnings: list[str] = field(default_factory=list)
    tlsa_warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not any(r.fails for r in self.results)


# --------------------------------------------------------------------------- comparison


def judge(record: Record, reply: Reply, host_addresses: set[str]) -> tuple[str, list[str]]:
    """(ok | missing | different, the values found) for one record in one server's answer.
    host_addresses: the host name's addresses (a web name may point at them directly)."""
    if reply.rcode == "NXDOMAIN":
        return "missing", []
    if record.kind == "web":
        return _judge_web(record, reply, host_addresses)
    found, target = reply.chase(record.name, record.type)
    if not found:
        return ("different", [f"CNAME {target}"]) if target else ("missing", [])
    if record.type == "TXT":
        return _judge_txt(record, [txt_text(rd) for rd in found])
    values = [value_text(rd) for rd in found]
    if record.placeholder:
        return "ok", values
    return ("ok" if rdata(record.type, record.value) in found else "different"), values


def _judge_txt(record: Record, found: list[str]) -> tuple[str, list[str]]:
    tag = txt_tag(record.value)
    ours = [v for v in found if txt_tag(v) == tag
            or (txt_tag(v) is None and record.kind not in SHARED_TXT)]
    if not ours:
        return "missing", []
    return ("ok" if ours == [record.value] else "different"), ours


def _judge_web(record: Record, reply: Reply, host_addresses: set[str]) -> tuple[str, list[str]]:
    """A web name, asked for its A record: a CNAME to the host, or the host's addresses."""
    name = dns.name.from_text(record.name)
    for rrset in reply.answer:
        if rrset.name == name and rrset.rdtype == dns.rdatatype.CNAME:
            target = rrset[0].target
            status = "ok" if target == dns.name.from_text(record.value) else "different"
            return status, [target.to_text()]
    addresses = {rd.to_text() for rrset in reply.answer if rrset.name == name
                 and rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) for rd in rrset}
    if not addresses:
        return "missing", []
    status = "ok" if host_addresses and addresses <= host_addresses else "different"
    return status, [f"A {a}" if ":" not in a else f"AAAA {a}" for a in sorted(addresses)]


def combine(record: Record, sources: list[SourceResult]) -> RecordResult:
    """The worst answer counts; a hint says where they disagree."""
    answered = [s for s in sources if s.status != "error"]
    if not answered:
        return RecordResult(record, "unknown", [], sources, "no server answered")
    worst = max(answered, key=lambda s: STATUS_ORDER[s.status])
    hint = None
    auth = [s for s in answered if s.authoritative]
    if worst.status != "ok" and auth and all(s.status == "ok" for s in auth):
        hint = ("the name servers have it; the resolver still answers from its cache, until "
                + ("the zone's negative TTL (its SOA minimum) passes" if worst.status == "missing"
                   else f"the old record's TTL passes (up to {record.ttl} s)"))
    elif len({(s.status, tuple(s.found)) for s in auth}) > 1:
        hint = "the name servers disagree: one has not caught up with the others yet"
    return RecordResult(record, worst.status, worst.found, sources, hint)


# --------------------------------------------------------------------------- the run


def query_type(record: Record) -> str:
    """Web names are asked for A: the answer shows a CNAME and an address record alike."""
    return "A" if record.kind == "web" else record.type


def check(site: Any, resolver_server: Server | None, *, ns_port: int = 53) -> Report:
    """Check the site's records through resolver_server (None: the machine's resolver).
    ns_port: where the name servers are asked (53 on the internet, where their NS records
    lead; only a test's server listens elsewhere)."""
    recs, notes = site_records(site)
    recs = [r for r in recs if r.type != "PTR"]
    resolver = Resolver(resolver_server)
    hostname = site.config.hostname + "."
    zone_of, zones, warnings = _zones(resolver, recs, ns_port)
    for domain in site.config.domains:
        zone = zone_of.get(domain + ".", "")
        if zone.count(".") == 1:  # "org.": the domain has no zone of its own
            warnings.append(f"{domain} lies in the zone {zone}, a top-level domain: it is not "
                            "delegated (yet); register it and set its name servers")
    expected = {r.value for r in recs if r.kind == "address" and not r.placeholder}
    host_addresses = expected or set(resolver.addresses(hostname))
    tlsa = next((r for r in recs if r.type == "TLSA"), None)
    asked, served = _ask_all(recs, zone_of, zones, resolver,
                             sorted(host_addresses) if tlsa else [], hostname)
    results = []
    for r in recs:
        servers: list[tuple[str, NameServer | Resolver]] = [
            (ns.label, ns) for ns in zones[zone_of[r.name]]]
        servers.append((str(resolver), resolver))
        sources = [_source(r, label, isinstance(server, NameServer),
                           asked[(r.name, query_type(r), label)], zone_of[r.name], host_addresses)
                   for label, server in servers]
        results.append(combine(r, sources))
    warnings = list(notes) + warnings + _server_warnings(results)
    warnings += _address_warnings(recs, results, resolver, hostname)
    ptr = _ptr_warnings(resolver, host_addresses, hostname)
    tlsa_found = []
    if tlsa is not None:
        published = next(res.found for res in results if res.record is tlsa)
        tlsa_found = _tlsa_warnings(tlsa, published, served)
    return Report(str(resolver), zones, results, warnings + ptr + tlsa_found, ptr, tlsa_found)


def _zones(resolver: Resolver, recs: list[Record], ns_port: int
           ) -> tuple[dict[str, str], dict[str, list[NameServer]], list[str]]:
    """Each record name's zone, each zone's name servers, and what is wrong with them."""
    zone_of: dict[str, str] = {}
    for r in recs:
        if r.name not in zone_of:
            zone_of[r.name] = resolver.zone_of(r.name)
    zones: dict[str, list[NameServer]] = {}
    warnings = []
    for z in dict.fromkeys(zone_of.values()):
        zones[z] = resolver.name_servers(z)
        for ns in zones[z]:
            ns.port = ns_port
            if not ns.addresses:
                warnings.append(f"name server {ns.name} of {z} has no address")
        if not zones[z]:
            warnings.append(f"{z} has no NS records: only the {resolver} was asked")
    return zone_of, zones, warnings


def _ask_all(recs: list[Record], zone_of: dict[str, str], zones: dict[str, list[NameServer]],
             resolver: Resolver, smtp_addresses: list[str], hostname: str
             ) -> tuple[dict[tuple[str, str, str], Reply | QueryFailed], dict[str, str | Exception]]:
    """Every question to every server, and the key each address serves on port 25, at
    once (a slow server costs its timeout once, not once per record)."""
    asked: dict[tuple[str, str, str], Reply | QueryFailed] = {}
    served: dict[str, str | Exception] = {}

    def one(name: str, rdtype: str, label: str, server: NameServer | Resolver) -> None:
        try:
            asked[(name, rdtype, label)] = server.ask(name, rdtype)
        except QueryFailed as exc:
            asked[(name, rdtype, label)] = exc
        except Exception as exc:  # one server's odd answer is its result, not the end
            asked[(name, rdtype, label)] = QueryFailed(str(exc) or type(exc).__name__)

    def serve(address: str) -> None:
        try:
            served[address] = served_tlsa(address, hostname.rstrip("."))
        except Exception as exc:  # a warning names the cause (refused, no STARTTLS …)
            served[address] = exc

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for address in smtp_addresses:
            pool.submit(serve, address)
        for name, rdtype in dict.fromkeys((r.name, query_type(r)) for r in recs):
            for ns in zones[zone_of[name]]:
                pool.submit(one, name, rdtype, ns.label, ns)
            pool.submit(one, name, rdtype, str(resolver), resolver)
    return asked, served


def _source(r: Record, label: str, authoritative: bool, reply: Reply | QueryFailed, zone: str,
            host_addresses: set[str]) -> SourceResult:
    """One server's answer about one record, judged."""
    if isinstance(reply, QueryFailed):
        return SourceResult(label, authoritative, "error", error=str(reply))
    if reply.rcode not in ("NOERROR", "NXDOMAIN"):
        return SourceResult(label, authoritative, "error", error=f"answered {reply.rcode}")
    if authoritative and not reply.authoritative:
        return SourceResult(label, authoritative, "error",
                            error=f"is not authoritative for {zone} (a lame delegation)")
    status, found = judge(r, reply, host_addresses)
    return SourceResult(label, authoritative, status, found)


def _server_warnings(results: list[RecordResult]) -> list[str]:
    """Each name server that failed, once, with its first error."""
    seen: dict[str, str] = {}
    for res in results:
        for s in res.sources:
            if s.status == "error" and s.source not in seen:
                seen[s.source] = s.error or "no answer"
    return [f"{source}: {error}" for source, error in seen.items()]


def _address_warnings(recs: list[Record], results: list[RecordResult], resolver: Resolver,
                      hostname: str) -> list[str]:
    """Addresses of the host name the inventory does not name: mail would go there too."""
    expected = [r for r in recs if r.kind == "address"]
    if any(r.placeholder for r in expected):
        return []
    out = []
    for rdtype in ("A", "AAAA"):
        ours = {r.value for r in expected if r.type == rdtype}
        if ours:
            found = {f for res in results if res.record.kind == "address"
                     and res.record.type == rdtype for f in res.found}
        else:
            try:
                found = {a for a in resolver.addresses(hostname) if (":" in a) == (rdtype == "AAAA")}
            except MailstackError:
                continue
        if extra := sorted(found - ours):
            out.append(f"{hostname} {rdtype} also points to {', '.join(extra)}, which the "
                       "inventory does not name: mail would go there too (remove it, or add "
                       "that host to the inventory)")
    return out


def _ptr_warnings(resolver: Resolver, addresses: set[str], hostname: str) -> list[str]:
    out = []
    for address in sorted(addresses):
        try:
            names = resolver.reverse(address)
        except MailstackError as exc:
            out.append(f"PTR of {address}: not looked up ({exc})")
            continue
        if not names:
            out.append(f"{address} has no PTR (reverse DNS): ask the provider of the address "
                       f"to set it to {hostname}; big receivers refuse mail without one")
        elif [n.lower() for n in names] != [hostname.lower()]:
            out.append(f"the PTR of {address} is {', '.join(names)}, not {hostname}: ask the "
                       "provider of the address to set it to the host name")
    return out


def _tlsa_warnings(tlsa: Record, published: list[str],
                   served: dict[str, str | Exception]) -> list[str]:
    out = []
    for address, result in sorted(served.items()):
        if isinstance(result, Exception):
            out.append(f"port {SMTP_PORT} of {address}: the key it presents was not compared "
                       f"with the TLSA record ({_why(result)}; many networks block outgoing "
                       "port 25)")
            continue
        if published and result.lower() not in [p.lower() for p in published]:
            out.append(f"port {SMTP_PORT} of {address} presents a key no published TLSA "
                       f"record matches: senders that check DANE will not deliver. Served: "
                       f"{result}; published: {'; '.join(published)}")
        if result.lower() != tlsa.value.lower():
            out.append(f"port {SMTP_PORT} of {address} presents another key than the "
                       f"vault's ({result}, not {tlsa.value}): run `mailstack deploy`")
    return out


def _why(exc: Exception) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def served_tlsa(address: str, hostname: str, timeout: float = SMTP_TIMEOUT) -> str:
    """The `3 1 1` TLSA data of the key the server presents on port 25 after STARTTLS, to a
    sender that asks for hostname (SNI); the key is what counts, not the chain."""
    cert = certificate.served(address, SMTP_PORT, hostname, certificate.unchecked(), timeout)
    return "3 1 1 " + certificate.spki_sha256(cert)


# --------------------------------------------------------------------------- output


def as_json(report: Report) -> str:
    """The report for scripts. Schema 1: {schema, ok, resolver, zones: {zone: [{name,
    addresses}]}, records: [{name, type, kind, required, expected, status, found,
    sources: [{source, authoritative, status, found, error}], hint, note}], warnings}."""
    data = {
        "schema": SCHEMA,
        "ok": report.passed,
        "resolver": report.resolver,
        "zones": {z: [{"name": ns.name, "addresses": ns.addresses} for ns in servers]
                  for z, servers in report.zones.items()},
        "records": [{
            "name": res.record.name, "type": res.record.type, "kind": res.record.kind,
            "required": res.record.required, "expected": res.record.value,
            "status": res.status, "found": res.found,
            "sources": [{"source": s.source, "authoritative": s.authoritative,
                         "status": s.status, "found": s.found, "error": s.error}
                        for s in res.sources],
            "hint": res.hint, "note": res.record.note,
        } for res in report.results],
        "warnings": report.warnings,
    }
    return json.dumps(data, indent=2) + "\n"


def _short(value: str, width: int = 64) -> str:
    return value if len(value) <= width else value[:width - 1] + "…"


def _quoted(record: Record, value: str) -> str:
    return f'"{value}"' if record.type == "TXT" else value


def table(report: Report) -> str:
    lines = [f"asked: {report.resolver}"]
    for z, servers in report.zones.items():
        lines.append(f"zone {z}: " + (", ".join(ns.label for ns in servers) or "no name servers"))
    width = max((len(r.record.name) for r in report.results), default=0)
    for res in report.results:
        r = res.record
        level = "required" if r.required else "recommended"
        head = f"{res.status:<9} {r.type:<5} {r.name:<{width}}"
        if res.status == "ok":
            shown = "; ".join(res.found) if r.placeholder else _quoted(r, r.value)
            lines.append(f"{head}  {_short(shown)}")
            continue
        lines.append(f"{head}  ({level})")
        lines.append(f"{'':<9} expected: {_quoted(r, r.value)}")
        if res.found:
            lines.append(f"{'':<9} found:    " + "; ".join(_quoted(r, f) for f in res.found))
        for s in res.sources:
            if s.status != res.status:
                what = s.error if s.status == "error" else (
                    s.status + (": " + "; ".join(s.found) if s.found else ""))
                lines.append(f"{'':<9} {s.source}: {what}")
        if res.hint:
            lines.append(f"{'':<9} ({res.hint})")
    lines += [f"warning: {w}" for w in report.warnings]
    counts = {s: sum(1 for r in report.results if r.status == s)
              for s in ("ok", "missing", "different", "unknown")}
    failing = [r for r in report.results if r.fails]
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines.append(f"{len(report.results)} records: {summary}" + (
        f"; {len(failing)} required record(s) not as printed: mail will not work as it should"
        if failing else ""))
    return "\n".join(lines)


