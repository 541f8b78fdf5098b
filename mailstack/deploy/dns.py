"""`mailstack dns push`: publish exactly what `mailstack dns` prints, as RFC 2136 dynamic
updates signed with the site's TSIG key (options.dns_update; the secret in the vault).

One update message per zone, over TCP, to the zone's primary (the SOA's MNAME, as RFC 2136
section 4 says, or options.dns_update.server): a zone takes all of it or none of it. Each of
our RRsets is replaced by name and type, with two exceptions:
- SPF shares the domain's TXT RRset with other services' strings (site verifications): only
  the TXT records tagged v=spf1 are replaced, the others stay.
- A web name (mta-sts., autoconfig., autodiscover.) gets its CNAME after everything else at
  that name is deleted: a CNAME stands alone (RFC 1034 3.6.2), and the server would ignore it
  beside an old A record.
PTR records are never sent: the provider of the address sets them. The first zone that fails
stops the push; the zones before it are named as done.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update

from mailstack.dnsquery import DNS_PORT, NameServer, QueryFailed, Resolver, Server, rdata, txt_text
from mailstack.errors import MailstackError
from mailstack.render.dns import SHARED_TXT, Record, site_records, txt_tag
from mailstack.site.config import split_server

UPDATE_TIMEOUT = 10.0  # a primary may write its journal before it answers


@dataclass
class ZoneUpdate:
    zone: str
    server: NameServer
    message: dns.update.UpdateMessage
    records: list[Record]


@dataclass
class Plan:
    updates: list[ZoneUpdate]
    skipped: list[Record]  # outside options.dns_update.zones
    notes: list[str]


def _zone_in(name: str, zones: list[str]) -> str | None:
    """The most specific listed zone a name lies in (None: outside all of them)."""
    n = dns.name.from_text(name)
    inside = [z for z in zones if n.is_subdomain(dns.name.from_text(z + "."))]
    return max(inside, key=len) + "." if inside else None


def plan(site: Any, resolver_server: Server | None, *, signed: bool) -> Plan:
    """The update messages, one per zone, signed with the vault's key when signed."""
    from mailstack.site.dns_key import tsig_secret

    cfg = site.config
    options = cfg.options.dns_update
    key = None
    if signed:
        if options is None:
            raise MailstackError(
                "options.dns_update is not set: keep the TSIG key first with `mailstack dns "
                "key set NAME --algorithm hmac-sha256` (its secret on standard input)")
        key = dns.tsig.Key(options.key_name + ".", tsig_secret(site), options.algorithm)
    recs, notes = site_records(site)
    recs = [r for r in recs if r.type != "PTR"]
    unknown = [r for r in recs if r.placeholder]
    if unknown:
        raise MailstackError(
            "the inventory gives the host no IP address, so its A record cannot be published: "
            "set ansible_host to the server's address (inventories/…/hosts.yml)",
            details=[f"{r.name} {r.type} {r.value}" for r in unknown])
    resolver: Resolver | None = None

    def asker() -> Resolver:
        nonlocal resolver
        if resolver is None:
            resolver = Resolver(resolver_server)
        return resolver

    listed = options.zones if options else []
    by_zone: dict[str, list[Record]] = {}
    skipped = []
    zone_of: dict[str, str | None] = {}
    for r in recs:
        if r.name not in zone_of:
            zone_of[r.name] = _zone_in(r.name, listed) if listed else asker().zone_of(r.name)
        zone = zone_of[r.name]
        if zone is None:
            skipped.append(r)
        else:
            by_zone.setdefault(zone, []).append(r)

    updates = []
    for zone, zone_recs in by_zone.items():
        server = _server(options.server if options else None, zone, asker)
        message = dns.update.UpdateMessage(zone, keyring=key)
        _fill(message, zone_recs, server)
        updates.append(ZoneUpdate(zone, server, message, zone_recs))
    return Plan(updates, skipped, notes)


def _server(configured: str | None, zone: str, asker) -> NameServer:
    if configured is None:
        primary = asker().primary(zone)
    else:
        host, port = split_server(configured)
        assert host is not None  # validated with the config
        addresses = [host] if _is_ip(host) else asker().addresses(host)
        primary = NameServer(host, addresses, port or DNS_PORT)
    if not primary.addresses:
        raise MailstackError(f"the primary of {zone}, {primary.name}, has no address in DNS: "
                             "name the server that takes updates in options.dns_update.server")
    return primary


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _fill(message: dns.update.UpdateMessage, recs: list[Record], server: NameServer) -> None:
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in recs:
        groups.setdefault((r.name, r.type), []).append(r)
    for (name, rdtype), group in groups.items():
        ttl = group[0].ttl
        rdatas = [rdata(rdtype, r.value) for r in group]
        if group[0].kind in SHARED_TXT:
            for old in _current_txt(server, name, txt_tag(group[0].value)):
                message.delete(name, old)
            message.add(name, ttl, *rdatas)
        elif group[0].kind == "web":
            message.delete(name)
            message.add(name, ttl, *rdatas)
        else:
            message.replace(name, ttl, *rdatas)


def _current_txt(server: NameServer, name: str, tag: str | None):
    """The TXT records of that tag at name on the primary (the ones ours replaces)."""
    try:
        reply = server.ask(name, "TXT")
    except QueryFailed as exc:
        raise MailstackError(f"{server.label} does not tell the current TXT records of {name} "
                             f"(which the SPF record replaces among them): {exc}") from None
    found, _ = reply.chase(name, "TXT")
    return [rd for rd in found if txt_tag(txt_text(rd)) == tag]


def dry_run_text(p: Plan) -> str:
    lines = ["; `mailstack dns push --dry-run`: nothing was sent"]
    for u in p.updates:
        lines.append(f"; zone {u.zone}: {len(u.records)} records, to {u.server.label} port "
                     f"{u.server.port}")
        lines.append(u.message.to_text())
    return "\n".join(lines)


def send(p: Plan) -> list[str]:
    """Send each zone's update; a line per zone done. The first failure stops the push."""
    done: list[str] = []
    for u in p.updates:
        try:
            _send(u)
        except MailstackError as exc:
            if done:
                exc.details.append("already published: " + ", ".join(
                    line.split(":")[0] for line in done))
            raise
        done.append(f"{u.zone}: {len(u.records)} records published on {u.server.label}")
    return done


def _send(u: ZoneUpdate) -> None:
    key = u.message.keyname.to_text(omit_final_dot=True) if u.message.keyname else "none"
    where = f"{u.server.label} port {u.server.port}"
    errors = []
    for address in u.server.addresses:
        try:
            response = dns.query.tcp(u.message, address, timeout=UPDATE_TIMEOUT,
                                     port=u.server.port)
            break
        except dns.tsig.PeerBadKey:
            raise _refused(u, where, f"it knows no TSIG key named {key} (BADKEY)") from None
        except (dns.tsig.PeerBadSignature, dns.tsig.BadSignature):
            raise _refused(u, where, f"the signature with key {key} is wrong (BADSIG): the "
                                     "secret in the vault is not the server's") from None
        except (dns.tsig.PeerBadTime, dns.tsig.BadTime):
            raise _refused(u, where, "its clock and this machine's differ by more than five "
                                     "minutes (BADTIME)") from None
        except dns.tsig.PeerError as exc:
            raise _refused(u, where, f"it did not accept the signature ({exc})") from None
        except dns.message.UnknownTSIGKey:
            raise _refused(u, where, "it signed its answer with another key") from None
        except dns.exception.Timeout:
            errors.append(f"{address}: no answer within {UPDATE_TIMEOUT:g} s")
        except OSError as exc:
            errors.append(f"{address}: {exc.strerror or exc}")
        except dns.exception.DNSException as exc:
            errors.append(f"{address}: no usable answer ({exc})")
    else:
        raise MailstackError(f"{u.zone}: {where} did not take the update ("
                             + "; ".join(errors) + "); nothing was changed in that zone")
    rcode = dns.rcode.to_text(response.rcode())
    if rcode != "NOERROR":
        why = {
            "NOTAUTH": f"key {key} may not update this zone (the server's ACL), or it is not "
                       "authoritative for it (options.dns_update.zones lists the zones to "
                       "update)",
            "REFUSED": "it does not take updates for this zone from this key (is it the "
                       "primary? does its ACL allow the key? options.dns_update.zones lists "
                       "the zones to update)",
            "NOTZONE": "a name is outside the zone",
            "SERVFAIL": "it failed to apply it",
        }.get(rcode, "see the server's log")
        raise _refused(u, where, f"{rcode}: {why}")


def _refused(u: ZoneUpdate, where: str, why: str) -> MailstackError:
    fix = ""
    if u.message.keyname is not None and ("key" in why or "signature" in why):
        name = u.message.keyname.to_text(omit_final_dot=True)
        algorithm = u.message.keyalgorithm.to_text(omit_final_dot=True)
        fix = (f"; set the key again with `mailstack dns key set {name} --algorithm "
               f"{algorithm}` (the secret on standard input)")
    return MailstackError(f"{u.zone}: {where} refused the update: {why}; nothing was changed "
                          f"in that zone{fix}")
