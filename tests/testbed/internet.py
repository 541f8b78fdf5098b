"""The internet in a box (TESTBED.md section 6): DNS and an outside sender for mail tests.

Mail depends on DNS at every step (MX, SPF, DKIM, DMARC, DNSBL, PTR), so the test bed
serves its own on a test network, laid out as on the internet: Knot, in a container of its
own named by the zones' NS record (ns.test), is authoritative on port 53 for zones under
`.test` (plus the network's reverse zone and a DNS blocklist) built from Python data, and
unbound, in another, resolves them for the hosts. A client that follows the NS records (as
`mailstack dns check` does) finds Knot where they say. Everything else is refused, except
the names of Debian's mirrors, which unbound forwards to the machine's resolver (through
Docker's embedded DNS) so that apt keeps working inside hosts that use the box. A third
container plays a foreign mail client.

Zones given as `dynamic` take RFC 2136 updates signed with the box's TSIG key (`tsig`), as a
DNS provider's primary does: `mailstack dns push` publishes into them, and the box's own
publish() and withdraw() change them by update too (their zone files are only written once,
at the start).

DNSSEC: zones given as `signed` are signed by Knot (a policy of its own: one ECDSA P-256
key per zone, CSK), at every load and update. The rest of the box stays unsigned, and unbound
still has no root anchor (see ROOT_ANCHOR_CONF): it validates below trust anchors only, one
per signed zone that no other signed zone encloses, which `trust_anchors()` returns as the
DS records a mail host's options.resolver.trust_anchors takes. Every zone of the box has a
delegation (NS ns.test.) in its parent zone, so a child is secure only through a DS record
in a signed parent, as on the internet: publish its DS (`ds(zone)`; a DS at a zone's apex
goes into the parent) and it validates; a child without one is provably insecure (answers,
without AD); a DS that matches none of its keys makes it bogus (SERVFAIL).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

import dns.query
import dns.rcode
import dns.tsig
import dns.update

from mailstack.dnsquery import txt_strings
from testbed import (
    Host,
    SandboxError,
    base_image,
    base_image_tag,
    build_image,
    cached_image,
    debian_sources,
    docker,
    exec_in,
    remove_host,
    short_hash,
    start_host,
)

INTERNET_REPO = "mailstack-inet"
INTERNET_RECIPE_VERSION = "mailstack-inet-1"
# knot: authoritative (simple config, zone files, signs zones itself when DANE needs it);
# unbound: the resolver; swaks and postfix: the outside sender; dig for the tests; pebble:
# the ACME CA (Let's Encrypt's test server); sasl2-bin: the relay host's logins
# (saslpasswd2 writes the sasldb Postfix's Cyrus SASL reads; tests/testbed/relay.py).
INTERNET_PACKAGES: tuple[str, ...] = ("knot", "unbound", "bind9-dnsutils", "swaks", "postfix",
                                      "pebble", "sasl2-bin")
INTERNET_DEBCONF = "postfix postfix/main_mailer_type select No configuration\n"
# Every role's container enables only the services it plays; unbound-resolvconf would
# rewrite the container's own resolv.conf.
INTERNET_SETUP: tuple[str, ...] = (
    "systemctl disable --quiet knot unbound unbound-resolvconf postfix saslauthd",
)

PREFIX = "mailstack-inet"
AUTH_PORT = 53  # knot, in its own container (the address of NS_NAME), as the NS records say
DOCKER_DNS = "127.0.0.11"  # Docker's embedded DNS: forwards to the machine's resolver
DEFAULT_TTL = 60
NS_NAME = "ns.test."
TSIG_NAME = "mailstack-box."  # the key dynamic zones accept updates signed with
TSIG_ALGORITHM = "hmac-sha256"
UPDATE_TIMEOUT = 10.0
BLOCKLIST_ZONE = "bl.test."
LISTED = "127.0.0.2"  # the conventional DNSBL answer; 127.0.0.2 itself is always listed
RELOAD_TIMEOUT = 20.0
# Debian's unbound validates from the root's trust anchor, but the machine's resolver
# (reached through Docker's DNS) may return no DNSSEC data: priming then fails and every
# forwarded name, the mirrors' too, is SERVFAIL. So the box has no root anchor: only the
# signed test zones are validated, each below a trust anchor of its own.
ROOT_ANCHOR_CONF = "/etc/unbound/unbound.conf.d/root-auto-trust-anchor-file.conf"
# Knot's signing policy for the signed zones: one key (CSK), so one DS record per zone.
SIGNING_POLICY = "box"
SIGNING_ALGORITHM = "ecdsap256sha256"
DS_DIGEST_TYPE = "2"  # SHA-256, what every validator supports


# --------------------------------------------------------------------------- image


def internet_image_tag(base: str | None = None) -> str:
    """The tag internet_image() builds: a hash of its recipe, like the stack image."""
    key = {"base": base or base_image_tag(), "packages": list(INTERNET_PACKAGES),
           "debconf": INTERNET_DEBCONF, "setup": list(INTERNET_SETUP), "version": INTERNET_RECIPE_VERSION}
    return f"{INTERNET_REPO}:{short_hash(key)}"


def internet_image() -> str:
    """Base + the DNS and outside-sender packages, all services disabled (built once, cached)."""
    base = base_image()
    tag = internet_image_tag(base)
    return cached_image(tag, lambda: build_image(base, tag, INTERNET_PACKAGES, what="inet",
                                                 debconf=INTERNET_DEBCONF, setup=INTERNET_SETUP))


# --------------------------------------------------------------------------- DNS data


@dataclass(frozen=True)
class Record:
    """One resource record, in the shape `mailstack dns --format json` prints (note ignored).

    name is fully qualified (a missing trailing dot is added); a TXT value is the raw text,
    split into 255-byte strings when the zone file is written.
    """

    name: str
    type: str
    value: str
    ttl: int = DEFAULT_TTL

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", fqdn(self.name))
        object.__setattr__(self, "type", self.type.upper())
        if self.value.startswith("<"):
            raise ValueError(f"{self.name} {self.type} has a placeholder value {self.value!r}: "
                             "give the site's host an IP address in its inventory")

    @classmethod
    def from_mapping(cls, item: Mapping[str, object]) -> Record:
        return cls(name=str(item["name"]), type=str(item["type"]), value=str(item["value"]),
                   ttl=int(item.get("ttl", DEFAULT_TTL)))  # type: ignore[arg-type]


@dataclass(frozen=True)
class TsigKey:
    """The key the box's dynamic zones take updates signed with (what `mailstack dns key
    set` is given): a new secret for every box."""

    name: str = TSIG_NAME
    algorithm: str = TSIG_ALGORITHM
    secret: str = field(default_factory=lambda: base64.b64encode(secrets.token_bytes(32)).decode())

    def key(self) -> dns.tsig.Key:
        return dns.tsig.Key(self.name, self.secret, self.algorithm)


def fqdn(name: str) -> str:
    return name.lower() if name.endswith(".") else name.lower() + "."


def site_records(dns_json: str | Iterable[Mapping[str, object]]) -> list[Record]:
    """The records of `mailstack dns --format json` output (the text or the parsed list)."""
    items = json.loads(dns_json) if isinstance(dns_json, str) else dns_json
    return [Record.from_mapping(item) for item in items]


def sender_domain(domain: str, ip: str, *, host: str = "mx", spf: str | None = None,
                  dkim: tuple[str, str] | None = None, dmarc: str = "v=DMARC1; p=reject") -> list[Record]:
    """An outside mail domain: host A, MX, PTR, SPF (only ip may send unless told), DMARC, and
    a DKIM key when dkim=(selector, base64 public key) is given. A spoofer is any other IP."""
    name = f"{host}.{fqdn(domain)}"
    out = [Record(name, "A", ip), Record(domain, "MX", f"10 {name}"),
           Record(ipaddress.ip_address(ip).reverse_pointer, "PTR", name),
           Record(domain, "TXT", spf or f"v=spf1 ip4:{ip} -all"),
           Record(f"_dmarc.{fqdn(domain)}", "TXT", dmarc)]
    if dkim:
        out.append(Record(f"{dkim[0]}._domainkey.{fqdn(domain)}", "TXT", f"v=DKIM1; k=rsa; p={dkim[1]}"))
    return out


def blocklist_records(ips: Iterable[str], zone: str = BLOCKLIST_ZONE) -> list[Record]:
    """A DNSBL: each IPv4 address as reversed octets under zone -> 127.0.0.2 (and a TXT reason),
    with the conventional always-listed test entry 127.0.0.2."""
    out: list[Record] = []
    for ip in sorted({LISTED, *ips}, key=ipaddress.IPv4Address):
        name = ".".join(reversed(ip.split("."))) + "." + fqdn(zone)
        out += [Record(name, "A", LISTED), Record(name, "TXT", f"listed by the test bed: {ip}")]
    return out


def reverse_zone(subnet: str) -> str:
    """The in-addr.arpa zone holding a network's PTR records (whole octets of its prefix)."""
    net = ipaddress.ip_network(subnet, strict=False)
    if net.version != 4:
        raise ValueError(f"{subnet}: only IPv4 networks get a reverse zone")
    octets = str(net.network_address).split(".")[: max(1, net.prefixlen // 8)]
    return ".".join(reversed(octets)) + ".in-addr.arpa."


def zone_of(name: str, origins: Iterable[str]) -> str:
    """The most specific served zone a name belongs to (ValueError if none: never a real domain)."""
    name = fqdn(name)
    matches = [o for o in origins if name == o or name.endswith("." + o)]
    if not matches:
        raise ValueError(f"{name} is in none of the box's zones {sorted(origins)}: "
                         "test names live under .test (RFC 2606) or a served reverse zone")
    return max(matches, key=len)


def parent_zone(origin: str, origins: Iterable[str]) -> str | None:
    """The served zone a zone is delegated from (None: a top of the box, like test.)."""
    origin = fqdn(origin)
    parent = origin.split(".", 1)[1] or "."
    try:
        return zone_of(parent, set(origins) - {origin})
    except ValueError:
        return None


def record_zone(rec: Record, origins: Iterable[str]) -> str:
    """The zone a record lives in: its name's, except the delegation of a zone (NS and DS at
    its apex), which is the parent's (the DS: the child's key as the parent vouches for
    it; the zone's own NS record is in every zone file already)."""
    origins = set(origins)
    if rec.type in ("NS", "DS") and rec.name in origins:
        parent = parent_zone(rec.name, origins)
        if parent is None:
            raise ValueError(f"{rec.name} has no parent zone in the box for its {rec.type} record")
        return parent
    return zone_of(rec.name, origins)


def delegations(origins: Iterable[str]) -> list[Record]:
    """Each zone's NS record in its parent zone (a signed parent signs the proof that a
    child has no DS, which makes an unsigned child insecure rather than bogus)."""
    origins = set(origins)
    return [Record(o, "NS", NS_NAME) for o in sorted(origins) if parent_zone(o, origins)]


def islands(signed: Iterable[str]) -> list[str]:
    """The signed zones no other signed zone encloses: each needs a trust anchor of its own
    (the others are chained to them by DS records in their parents)."""
    signed = set(map(fqdn, signed))
    return sorted(z for z in signed if not any(z != s and z.endswith("." + s) for s in signed))


# The zone-file form of a TXT value: the product's (mailstack dns push writes the same).
txt_rdata = txt_strings


def zone_file(origin: str, records: Iterable[Record], serial: int) -> str:
    """A zone file: SOA (5 s negative TTL, so misses are not cached long), NS, then the records."""
    lines = [f"$ORIGIN {origin}", f"$TTL {DEFAULT_TTL}",
             f"@ IN SOA {NS_NAME} hostmaster.test. {serial} 60 60 600 5",
             f"@ IN NS {NS_NAME}"]
    for r in sorted(records, key=lambda r: (r.name, r.type, r.value)):
        value = txt_rdata(r.value) if r.type == "TXT" else r.value
        lines.append(f"{r.name} {r.ttl} IN {r.type} {value}")
    return "\n".join(lines) + "\n"


def knot_conf(origins: Iterable[str], dynamic: Iterable[str] = (),
              tsig: TsigKey | None = None, signed: Iterable[str] = ()) -> str:
    """Knot: every zone from a file that is the whole truth (no journal, never written back);
    the dynamic zones from a file once, then changed only by updates signed with tsig (kept
    in the journal, so a reload of the other zones leaves them as they are). The signed
    zones are signed at each load and update with a key Knot makes at the first (kept in its
    key database across reloads)."""
    dynamic = set(map(fqdn, dynamic))
    signed = set(map(fqdn, signed))
    if dynamic and tsig is None:
        raise ValueError("dynamic zones need a TSIG key")
    zones = "".join(f'  - domain: "{o}"\n' + ("    template: dynamic\n" if o in dynamic else "")
                    + (f"    dnssec-signing: on\n    dnssec-policy: {SIGNING_POLICY}\n"
                       if o in signed else "")
                    for o in sorted(origins))
    policy = "" if not signed else f"""\
policy:
  - id: {SIGNING_POLICY}
    algorithm: {SIGNING_ALGORITHM}
    single-type-signing: on
"""
    update = "" if not dynamic else f"""\
key:
  - id: {tsig.name}
    algorithm: {tsig.algorithm}
    secret: {tsig.secret}
acl:
  - id: update
    key: {tsig.name}
    action: update
"""  # type: ignore[union-attr]
    dynamic_template = "" if not dynamic else """\
  - id: dynamic
    storage: "/var/lib/knot/zones"
    file: "%s.zone"
    zonefile-load: whole
    zonefile-sync: -1
    journal-content: changes
    acl: update
"""
    return f"""\
server:
    listen: 0.0.0.0@{AUTH_PORT}
log:
  - target: syslog
    any: info
database:
    storage: "/var/lib/knot"
{update}{policy}template:
  - id: default
    storage: "/var/lib/knot/zones"
    file: "%s.zone"
    zonefile-load: whole
    zonefile-sync: -1
    journal-content: none
{dynamic_template}zone:
{zones}"""


def unbound_conf(origins: Iterable[str], subnet: str, mirrors: Iterable[str], auth: str,
                 anchors: Iterable[str] = ()) -> str:
    """unbound: the box's zones from knot at auth, Debian's mirrors forwarded to the
    machine's resolver, every other name refused so no test ever reaches a real domain.
    Validated below the trust anchors given (DS records); every zone outside them is
    unsigned (domain-insecure), the ones inside are proven secure or insecure by their
    parents."""
    origins = sorted(origins)
    anchors = sorted(anchors)
    anchored = [fqdn(a.split()[0]) for a in anchors]
    server = [f"    access-control: {subnet} allow", '    local-zone: "." refuse']
    server += [f'    local-zone: "{fqdn(m)}" transparent' for m in sorted(mirrors)]
    for o in origins:
        # transparent also lifts unbound's built-in empty zones (test., private reverse zones)
        server.append(f'    local-zone: "{o}" transparent')
        if not any(o == a or o.endswith("." + a) for a in anchored):
            server.append(f'    domain-insecure: "{o}"')
    server += [f'    trust-anchor: "{a}"' for a in anchors]
    stubs = "".join(f'stub-zone:\n    name: "{o}"\n    stub-addr: {auth}@{AUTH_PORT}\n' for o in origins)
    return f"""\
server:
    interface: 0.0.0.0
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    do-ip6: no
    cache-max-negative-ttl: 5
{chr(10).join(server)}
{stubs}forward-zone:
    name: "."
    forward-addr: {DOCKER_DNS}
"""


def mirror_hosts() -> list[str]:
    """The host names of the Debian mirrors the images' apt sources use."""
    return sorted({urlparse(line.split()[1]).hostname or "" for line in debian_sources()[1]} - {""})


# --------------------------------------------------------------------------- hosts


def network_subnet(network: str) -> str:
    """The IPv4 subnet Docker gave a network (e.g. 172.18.0.0/16)."""
    out = docker("network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", network).stdout
    v4 = [s for s in out.split() if ipaddress.ip_network(s).version == 4]
    if not v4:
        raise SandboxError(f"network {network} has no IPv4 subnet")
    return v4[0]


def write_file(name: str, path: str, text: str) -> None:
    """Write a file inside a container through stdin (in place: bind mounts stay intact)."""
    exec_in(name, ["sh", "-c", f"cat > {path}"], input=text)


def use_resolver(host: str, resolver_ip: str) -> None:
    """Point a host at the box's resolver.

    Writes /etc/resolv.conf in place (Docker bind-mounts it and rewrites it at every
    (re)start of the container: call this again after restart_host) and, when Postfix is
    installed, its chroot copy /var/spool/postfix/etc/resolv.conf, which Debian's chrooted
    smtpd reads and which Postfix only refreshes when it starts. glibc rereads a changed
    resolv.conf, so running daemons need no restart.
    """
    conf = f"# the internet in a box (mailstack test bed)\nnameserver {resolver_ip}\n"
    write_file(host, "/etc/resolv.conf", conf)
    exec_in(host, ["sh", "-c", "if [ -d /var/spool/postfix/etc ]; then "
                               "cat /etc/resolv.conf > /var/spool/postfix/etc/resolv.conf; fi"])


@dataclass
class Sender:
    """A foreign mail client with its own IP: swaks (and Postfix, installed but off)."""

    host: Host

    def swaks(self, server: str, *, to: str, mail_from: str, port: int = 25,
              helo: str | None = None, args: Iterable[str] = (),
              timeout: int = 20) -> subprocess.CompletedProcess[str]:
        """Send one message with swaks; the CompletedProcess has the SMTP transcript in stdout
        and swaks's status (0 = accepted; 23-29 = failed at a stage, see swaks(1))."""
        cmd = ["swaks", "--server", server, "--port", str(port), "--to", to, "--from", mail_from,
               "--timeout", str(timeout), *(["--helo", helo] if helo else []), *args]
        return exec_in(self.host.name, cmd, check=False)


@dataclass
class Internet:
    """DNS (Knot, and unbound in front of it, each in its own container) and an outside sender
    on a given network.

    Records are grouped in zones: `test.`, the blocklist zone, the network's reverse zone and
    any given (`zones`; `dynamic`: zones that take TSIG-signed updates; `signed`: zones Knot
    signs, see the module's docstring). Each publish()
    replaces the RRsets it names and makes them live (a static zone's file is rewritten and
    Knot reloads it; a dynamic zone gets an update), then unbound's cache is flushed, so a
    change is seen at once through the resolver.
    """

    network: str
    prefix: str = field(default_factory=lambda: f"{PREFIX}-{secrets.token_hex(3)}")
    zones: tuple[str, ...] = ()
    dynamic: tuple[str, ...] = ()
    signed: tuple[str, ...] = ()
    tsig: TsigKey = field(default_factory=TsigKey)
    subnet: str = field(default="", init=False)
    origins: set[str] = field(default_factory=set, init=False, repr=False)
    ns: Host | None = field(default=None, init=False)
    dns: Host | None = field(default=None, init=False)
    sender: Sender | None = field(default=None, init=False)
    _rrsets: dict[tuple[str, str], list[Record]] = field(default_factory=dict, init=False, repr=False)
    _listed: set[str] = field(default_factory=set, init=False, repr=False)
    _serial: int = field(default_factory=lambda: int(time.time()), init=False, repr=False)
    _anchors: list[str] = field(default_factory=list, init=False, repr=False)

    # ---- lifecycle

    def start(self) -> Internet:
        """Start the name server, resolver and sender containers (removed again if anything
        fails)."""
        image = internet_image()
        self.subnet = network_subnet(self.network)
        self.dynamic = tuple(map(fqdn, self.dynamic))
        self.signed = tuple(map(fqdn, self.signed))
        self.origins = {"test.", BLOCKLIST_ZONE, reverse_zone(self.subnet),
                        *map(fqdn, self.zones), *self.dynamic, *self.signed}
        try:
            self.ns = start_host(f"{self.prefix}-ns", image, hostname=NS_NAME.rstrip("."),
                                 network=self.network)
            self.dns = start_host(f"{self.prefix}-dns", image, hostname="resolver.test",
                                  network=self.network)
            self.sender = Sender(start_host(f"{self.prefix}-sender", image, hostname="mx.outside.test",
                                            network=self.network))
            write_file(self.ns.name, "/etc/knot/knot.conf",
                       knot_conf(self.origins, self.dynamic, self.tsig, self.signed))
            exec_in(self.ns.name, ["install", "-d", "-o", "knot", "-g", "knot", "/var/lib/knot/zones"])
            self._write_zones(self.origins)
            exec_in(self.ns.name, ["systemctl", "enable", "--now", "--quiet", "knot"])
            # Knot made each signed zone's key when it loaded it (waited for below).
            self._wait_for_serial(self.origins)
            self._anchors = [self.ds(zone) for zone in islands(self.signed)]
            write_file(self.dns.name, "/etc/unbound/unbound.conf.d/mailstack-inet.conf",
                       unbound_conf(self.origins, self.subnet, mirror_hosts(), self.ns.ip,
                                    self._anchors))
            write_file(self.dns.name, ROOT_ANCHOR_CONF, "# none: see ROOT_ANCHOR_CONF in testbed.internet\n")
            exec_in(self.dns.name, ["systemctl", "enable", "--now", "--quiet", "unbound"])
            use_resolver(self.sender.host.name, self.resolver_ip)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Remove the containers (the network belongs to the caller)."""
        for role in ("ns", "dns", "sender"):
            remove_host(f"{self.prefix}-{role}")
        self.ns = self.dns = self.sender = None

    def __enter__(self) -> Internet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def resolver_ip(self) -> str:
        """The address hosts put in resolv.conf (see use_resolver)."""
        if self.dns is None:
            raise SandboxError("the internet in a box is not started")
        return self.dns.ip

    @property
    def ns_ip(self) -> str:
        """The name server's address: what ns.test resolves to, where Knot answers on 53."""
        return self._ns().ip

    # ---- data

    def publish(self, records: Iterable[Record | Mapping[str, object]]) -> None:
        """Add records, or replace the RRsets (name and type) they name, and make them live.
        Accepts `mailstack dns --format json` items as they are."""
        self._ns()  # started: the zones are known
        fresh: dict[tuple[str, str], list[Record]] = {}
        dynamic: dict[str, dict[tuple[str, str], list[Record]]] = {}
        for item in records:
            rec = item if isinstance(item, Record) else Record.from_mapping(item)
            zone = record_zone(rec, self.origins)
            target = dynamic.setdefault(zone, {}) if zone in self.dynamic else fresh
            target.setdefault((rec.name, rec.type), []).append(rec)
        for zone, rrsets in dynamic.items():
            self._update(zone, lambda u, rrsets=rrsets: [
                u.replace(name, rs[0].ttl, type, *[_rdata_text(r) for r in rs])
                for (name, type), rs in rrsets.items()])
        self._rrsets.update(fresh)
        self._reload(static=bool(fresh))

    def withdraw(self, name: str, type: str | None = None) -> None:
        """Remove a name's RRset of that type (every type when None; a zone's DS: give the
        type, it lives in the parent)."""
        zone = record_zone(Record(name, type or "ANY", ""), self.origins)
        if zone in self.dynamic:
            self._update(zone, lambda u: u.delete(fqdn(name), *([type] if type else [])))
            self._reload(static=False)
            return
        for key in [k for k in self._rrsets if k[0] == fqdn(name) and type in (None, k[1].upper())]:
            del self._rrsets[key]
        self._reload()

    def block(self, *ips: str) -> None:
        """List IPv4 addresses in the blocklist zone (answer 127.0.0.2)."""
        self._listed.update(ips)
        self._reload()

    def unblock(self, *ips: str) -> None:
        self._listed.difference_update(ips)
        self._reload()

    def records(self) -> list[Record]:
        """Every record of the static zones, the blocklist, the name server's own and the
        delegations included."""
        own = [Record(NS_NAME, "A", self.ns_ip), *delegations(self.origins)]
        return own + [r for rs in self._rrsets.values() for r in rs] + blocklist_records(self._listed)

    def flush(self) -> None:
        """unbound forgets what it cached of the box's zones (as if every TTL had passed)."""
        for origin in sorted(self.origins):
            exec_in(self._dns(), ["unbound-control", "flush_zone", origin])
        exec_in(self._dns(), ["unbound-control", "flush_negative"])
        exec_in(self._dns(), ["unbound-control", "flush_bogus"])

    def ds(self, zone: str) -> str:
        """A signed zone's DS record (SHA-256 of its key), as Knot's keymgr prints it:
        `zone. DS TAG ALGORITHM 2 DIGEST`."""
        zone = fqdn(zone)
        if zone not in self.signed:
            raise ValueError(f"{zone} is not one of the box's signed zones {list(self.signed)}")
        out = exec_in(self._ns().name, ["keymgr", zone, "ds"]).stdout.splitlines()
        found = [line for line in out if line.split()[4:5] == [DS_DIGEST_TYPE]]
        if len(found) != 1:
            raise SandboxError(f"keymgr printed no single SHA-256 DS for {zone}: {out}")
        return found[0]

    def trust_anchors(self) -> list[str]:
        """The DS records the box's resolver validates below (one per signed zone that no
        other signed zone encloses): what a host that validates the box's zones trusts."""
        return list(self._anchors)

    def serial(self, zone: str) -> int:
        """The SOA serial Knot serves for a zone."""
        fields = self.dig(zone, "SOA", server=self.ns_ip)
        return int(fields[0].split()[2])

    # ---- queries, from a client on the network

    def dig(self, name: str, type: str = "A", *, server: str | None = None) -> list[str]:
        """`dig +short` through the resolver (or another server), run on the sender host;
        a multi-string TXT comes back joined, without quotes."""
        proc = exec_in(self._client(), ["dig", "+short", "+tries=1", "+time=5",
                                        f"@{server or self.resolver_ip}", name, type])
        return [_unquote(line) if type.upper() == "TXT" else line for line in proc.stdout.splitlines()]

    def status(self, name: str, type: str = "A") -> str:
        """The resolver's RCODE for a query (NOERROR, NXDOMAIN, REFUSED, SERVFAIL…)."""
        return self.header(name, type)[0]

    def authenticated(self, name: str, type: str = "A") -> bool:
        """Whether the resolver validated the answer (the AD flag, asked for with DO)."""
        return "ad" in self.header(name, type)[1]

    def header(self, name: str, type: str = "A") -> tuple[str, set[str]]:
        """The resolver's RCODE and header flags for a query with the DO bit (as a validating
        client asks)."""
        proc = exec_in(self._client(), ["dig", "+noall", "+comments", "+dnssec", "+tries=1",
                                        "+time=5", f"@{self.resolver_ip}", name, type])
        status = flags = None
        for line in proc.stdout.splitlines():
            if "status:" in line:
                status = line.split("status:")[1].split(",")[0].strip()
            if line.startswith(";; flags:"):
                flags = set(line.removeprefix(";; flags:").split(";")[0].split())
        if status is None or flags is None:
            raise SandboxError(f"no answer from the resolver for {name} {type}: {proc.stdout.strip()}")
        return status, flags

    # ---- internals

    def _client(self) -> str:
        if self.sender is None:
            raise SandboxError("the internet in a box is not started")
        return self.sender.host.name

    def _dns(self) -> str:
        if self.dns is None:
            raise SandboxError("the internet in a box is not started")
        return self.dns.name

    def _ns(self) -> Host:
        if self.ns is None:
            raise SandboxError("the internet in a box is not started")
        return self.ns

    def _static(self) -> list[str]:
        return sorted(self.origins - set(self.dynamic))

    def _write_zones(self, origins: Iterable[str]) -> None:
        """Zone files with a new serial: the static zones' records, or (dynamic zones, once at
        the start) only the SOA and NS records and the delegations."""
        self._serial += 1
        by_zone: dict[str, list[Record]] = {o: [] for o in origins}
        for rec in self.records():
            zone = record_zone(rec, self.origins)
            if zone in by_zone:
                by_zone[zone].append(rec)
        for origin, recs in by_zone.items():
            path = f"/var/lib/knot/zones/{origin.rstrip('.')}.zone"
            write_file(self._ns().name, path, zone_file(origin, recs, self._serial))

    def _reload(self, *, static: bool = True) -> None:
        """New files for the static zones, Knot reloads them; unbound forgets what it cached."""
        if static:
            self._write_zones(self._static())
            exec_in(self._ns().name, ["knotc", "reload"])
            self._wait_for_serial()
        self.flush()

    def _update(self, zone: str, change) -> None:
        """One RFC 2136 update of a dynamic zone, signed with the box's key."""
        message = dns.update.UpdateMessage(zone, keyring=self.tsig.key())
        change(message)
        response = dns.query.tcp(message, self.ns_ip, timeout=UPDATE_TIMEOUT, port=AUTH_PORT)
        if response.rcode() != dns.rcode.NOERROR:
            raise SandboxError(f"knot refused the update of {zone}: {dns.rcode.to_text(response.rcode())}")

    def _wait_for_serial(self, origins: Iterable[str] | None = None) -> None:
        """Until Knot serves the current serial in every static zone, or those given (it loads
        zones in the background)."""
        deadline = time.monotonic() + RELOAD_TIMEOUT
        pending = set(self._static() if origins is None else origins)
        while pending and time.monotonic() < deadline:
            for origin in sorted(pending):
                proc = exec_in(self._ns().name, ["dig", "+short", "+tries=1", "+time=2",
                                                 "-p", str(AUTH_PORT), "@127.0.0.1", origin, "SOA"],
                               check=False)
                fields = proc.stdout.split()
                if len(fields) >= 3 and fields[2] == str(self._serial):
                    pending.discard(origin)
            if pending:
                time.sleep(0.2)
        if pending:
            log = exec_in(self._ns().name, ["journalctl", "-u", "knot", "-n", "5", "--no-pager"],
                          check=False).stdout
            raise SandboxError(f"knot does not serve serial {self._serial} of {sorted(pending)} after "
                               f"{RELOAD_TIMEOUT:.0f} s: {log.strip()}")


def _rdata_text(rec: Record) -> str:
    """A record's value in zone-file syntax, for an update (names are absolute already)."""
    return txt_rdata(rec.value) if rec.type == "TXT" else rec.value


def _unquote(line: str) -> str:
    """dig's TXT rendering ("part1" "part2") as the one string a mail filter reads."""
    parts = line.split('" "')
    return "".join(parts).strip('"').replace('\\"', '"')
