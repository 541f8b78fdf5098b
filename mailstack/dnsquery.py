"""Asking DNS, for `mailstack dns check` and `mailstack dns push`.

A recursive resolver (given as IP[:PORT], or the machine's own from /etc/resolv.conf)
finds a name's zone (its SOA), the zone's name servers (NS, then their addresses) and its
primary (the SOA's MNAME); each name server is then asked directly on port 53, as any
resolver would, without recursion. Timeouts are short; a resolver that does not answer is
one message naming it (MailstackError); a name server that does not answer is a
QueryFailed its caller reports beside the others' answers.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset

from mailstack.errors import MailstackError
from mailstack.site.config import split_server

DNS_PORT = 53
TIMEOUT = 2.0  # one query to one server
LIFETIME = 5.0  # a resolver's answer, its retries included
EDNS_PAYLOAD = 1232  # the DNS flag day's size: a DKIM key fits, nothing fragments


class QueryFailed(Exception):
    """A server did not answer, or not usefully; the message says how (its caller names the
    server)."""


@dataclass(frozen=True)
class Server:
    """A DNS server's address and port, and its name when it has one (a name server)."""

    address: str
    port: int = DNS_PORT
    name: str = ""

    @property
    def where(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.name} ({self.where})" if self.name else self.where


def parse_resolver(text: str, option: str = "--resolver") -> Server:
    """IP, IP:PORT or [IPv6]:PORT (a name would need a resolver to find it)."""
    host, port = split_server(text)
    try:
        ipaddress.ip_address(host or "")
    except ValueError:
        raise MailstackError(f"{option} {text!r}: must be an IP address, optionally with "
                             ":PORT (192.0.2.53, 192.0.2.53:5353, [2001:db8::53]:53)") from None
    if port is not None and not 1 <= port <= 65535:
        raise MailstackError(f"{option} {text!r}: port {port} is not between 1 and 65535")
    return Server(str(host), port or DNS_PORT)


@dataclass(frozen=True)
class Reply:
    """One server's answer to one question."""

    rcode: str  # NOERROR, NXDOMAIN, SERVFAIL, REFUSED …
    authoritative: bool
    answer: tuple[dns.rrset.RRset, ...] = ()

    def chase(self, name: str, rdtype: str) -> tuple[list[dns.rdata.Rdata], str | None]:
        """The rdatas of rdtype at name, following CNAMEs within the answer; and the last
        CNAME target when the chain leaves the answer (None: no CNAME on the way)."""
        owner = dns.name.from_text(name)
        wanted = dns.rdatatype.from_text(rdtype)
        target = None
        for _ in range(8):
            for rrset in self.answer:
                if rrset.name == owner and rrset.rdtype == wanted:
                    return list(rrset), None
            cname = next((r for r in self.answer if r.name == owner
                          and r.rdtype == dns.rdatatype.CNAME), None)
            if cname is None or wanted == dns.rdatatype.CNAME:
                break
            owner = cname[0].target
            target = owner.to_text()
        return [], target


def ask(server: Server, name: str, rdtype: str, *, recursive: bool,
        timeout: float = TIMEOUT) -> Reply:
    """One question to one server (UDP with EDNS, TCP when the answer is truncated)."""
    query = dns.message.make_query(name, rdtype, use_edns=0, payload=EDNS_PAYLOAD,
                                   flags=dns.flags.RD if recursive else 0)
    try:
        response, _ = dns.query.udp_with_fallback(query, server.address, timeout=timeout,
                                                  port=server.port)
    except dns.exception.Timeout:
        raise QueryFailed(f"no answer within {timeout:g} s") from None
    except OSError as exc:
        raise QueryFailed(str(exc.strerror or exc)) from None
    except dns.exception.DNSException as exc:
        raise QueryFailed(f"no usable answer ({exc})") from None
    return Reply(dns.rcode.to_text(response.rcode()), bool(response.flags & dns.flags.AA),
                 tuple(response.answer))


@dataclass
class NameServer:
    """A zone's name server by name, with its addresses (IPv4 first)."""

    name: str
    addresses: list[str]
    port: int = DNS_PORT
    _dead: dict[str, str] = field(default_factory=dict, repr=False)  # address -> why

    @property
    def label(self) -> str:
        return f"{self.name} ({', '.join(self.addresses) or 'no address'})"

    def ask(self, name: str, rdtype: str) -> Reply:
        """Ask at the first address that answers (a machine without IPv6 skips the rest); an
        address that failed once is not asked again, so a dead server costs one timeout."""
        for address in self.addresses:
            if address in self._dead:
                continue
            try:
                return ask(Server(address, self.port, self.name), name, rdtype, recursive=False)
            except QueryFailed as exc:
                self._dead[address] = f"{address} port {self.port}: {exc}"
        raise QueryFailed("; ".join(self._dead.values()) or "no address")


class Resolver:
    """A recursive resolver: the one given, or the machine's own (/etc/resolv.conf)."""

    def __init__(self, server: Server | None = None, *, lifetime: float = LIFETIME) -> None:
        self.lifetime = lifetime
        if server is None:
            try:
                system = dns.resolver.Resolver(configure=True)
            except (dns.resolver.NoResolverConfiguration, OSError):
                raise MailstackError("this machine has no resolver configured (/etc/resolv.conf):"
                                     " pass --resolver IP[:PORT]") from None
            server = Server(str(system.nameservers[0]), int(system.port))
        self.server = server
        self._resolver = dns.resolver.Resolver(configure=False)
        self._resolver.nameservers = [server.address]
        self._resolver.port = server.port
        self._resolver.timeout = min(TIMEOUT, lifetime)
        self._resolver.lifetime = lifetime
        self._resolver.retry_servfail = False

    def __str__(self) -> str:
        return f"resolver {self.server.where}"

    def _fail(self, exc: Exception, name: str, rdtype: str) -> MailstackError:
        errors = exc.kwargs.get("errors") if isinstance(exc, dns.exception.DNSException) else None
        causes = {type(e[3]) for e in errors or [] if len(e) > 3}
        if isinstance(exc, dns.resolver.LifetimeTimeout) or causes & {
                ConnectionRefusedError, dns.exception.Timeout}:
            why = ("refused the connection" if ConnectionRefusedError in causes
                   else f"did not answer within {self.lifetime:g} s")
            return MailstackError(f"the {self} {why}; pass --resolver IP[:PORT] of one that "
                                  "answers")
        if isinstance(exc, dns.resolver.NoNameservers):
            return MailstackError(f"the {self} cannot resolve {name.rstrip('.')} {rdtype} (it "
                                  "answered SERVFAIL or REFUSED): is the domain delegated, and "
                                  "does this resolver answer you?")
        return MailstackError(f"the {self} failed on {name.rstrip('.')} {rdtype}: {exc}")

    def query(self, name: str, rdtype: str) -> list[dns.rdata.Rdata]:
        """The rdatas of name's rdtype ([] when there is no such name or record)."""
        try:
            answer = self._resolver.resolve(name, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except (dns.resolver.NoNameservers, dns.exception.Timeout, dns.resolver.YXDOMAIN,
                dns.resolver.NoAnswer) as exc:
            raise self._fail(exc, name, rdtype) from None
        return list(answer.rrset) if answer.rrset is not None else []

    def ask(self, name: str, rdtype: str) -> Reply:
        """The resolver's whole answer to one question (for a comparison with the name
        servers'), failures as QueryFailed."""
        return ask(self.server, name, rdtype, recursive=True)

    def zone_of(self, name: str) -> str:
        """The zone a name lies in: the closest enclosing SOA."""
        try:
            return dns.resolver.zone_for_name(name, resolver=self._resolver,
                                              lifetime=self.lifetime).to_text()
        except dns.resolver.NoRootSOA:
            raise MailstackError(f"the {self} finds no zone for {name}") from None
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise self._fail(exc, name, "SOA") from None

    def addresses(self, name: str) -> list[str]:
        return [r.to_text() for rdtype in ("A", "AAAA") for r in self.query(name, rdtype)]

    def name_servers(self, zone: str) -> list[NameServer]:
        names = sorted({r.target.to_text() for r in self.query(zone, "NS")})
        return [NameServer(n, self.addresses(n)) for n in names]

    def primary(self, zone: str) -> NameServer:
        """The zone's primary, named by its SOA (RFC 2136 4: where updates go)."""
        soa = self.query(zone, "SOA")
        if not soa:
            raise MailstackError(f"the {self} finds no SOA record for {zone}")
        mname = soa[0].mname.to_text()
        return NameServer(mname, self.addresses(mname))

    def reverse(self, address: str) -> list[str]:
        name = ipaddress.ip_address(address).reverse_pointer + "."
        return [r.target.to_text() for r in self.query(name, "PTR")]


TXT_CHUNK = 255  # one character-string of a TXT record holds at most 255 bytes


def txt_strings(text: str) -> str:
    """A TXT value in zone-file form: quoted character-strings of at most 255 bytes (a DKIM
    key needs two), quotes and backslashes escaped, other bytes as \\DDD."""
    raw = text.encode()
    chunks = [raw[i:i + TXT_CHUNK] for i in range(0, len(raw), TXT_CHUNK)] or [b""]
    return " ".join(_quoted(c) for c in chunks)


def rdata(rdtype: str, text: str) -> dns.rdata.Rdata:
    """A record's value as dnspython reads it (names absolute; TXT as one string)."""
    if rdtype == "TXT":
        return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, txt_strings(text))
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text,
                               origin=dns.name.root, relativize=False)


def _quoted(chunk: bytes) -> str:
    out = []
    for byte in chunk:
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def txt_text(rd: dns.rdata.Rdata) -> str:
    """A TXT record's strings joined, as a mail filter reads them."""
    return b"".join(rd.strings).decode("utf-8", "replace")  # type: ignore[attr-defined]


def value_text(rd: dns.rdata.Rdata) -> str:
    """A found value in the form `mailstack dns` prints its own."""
    return txt_text(rd) if rd.rdtype == dns.rdatatype.TXT else rd.to_text()
