"""The DNS records a site needs, as a zone-file snippet or JSON for a provider's API.

Per host: its address (A/AAAA) and the DANE TLSA record of its SMTP port (the vault's TLS
key, which every certificate reuses). Per domain: MX, SPF, DKIM, DMARC (with its reporting
address), MTA-STS and TLS-RPT, the web names the server certifies and serves (mta-sts.,
autoconfig., autodiscover., CNAMEs to the host name) and the RFC 6186/8314 SRV records mail
clients use to find the server. The PTR of each address comes last: the provider of the
address sets it, not the zone.

Each record has a kind; `mailstack dns check` and `mailstack dns push` treat records by it
(REQUIRED, MUST_MATCH, SHARED_TXT). The order is fixed (hosts, then each domain in
mailstack.yml's order) so that two runs print the same text.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mailstack.render.context import (
    MAIL_PORTS,
    POP3S_PORT,
    SOGO,
    WEB,
    WEB_NAME_PREFIXES,
    mta_sts_policy,
)
from mailstack.site.config import SiteConfig
from mailstack.site.inventory import InventoryHost
from mailstack.site.secrets import dkim_public_key
from mailstack.site.tls import KEY as TLS_KEY
from mailstack.site.tls import tlsa_311

TTL = 3600
TXT_CHUNK = 255  # one character-string in a TXT record holds at most 255 bytes
PLACEHOLDER_PREFIX = "<"  # an A record whose address the inventory does not know

# Without these, mail is refused or never arrives: the host's address and the MX (mail to
# the domains), SPF and DKIM (receivers such as Gmail refuse mail with neither, and junk
# much of what lacks one), DMARC (without it anybody may send in the domains' name, and
# big receivers ask it of every bulk sender). The rest harden transport (DANE, MTA-STS,
# TLS-RPT) or let mail clients set themselves up: recommended, not required.
REQUIRED = frozenset({"address", "mx", "spf", "dkim", "dmarc"})
# Of those, a different value is as bad as none: another address or MX sends mail
# elsewhere, another DKIM key fails every signature. SPF and DMARC are policies a user may
# make stricter (-all, p=reject): a different one is reported, not fatal.
MUST_MATCH = frozenset({"address", "mx", "dkim"})
# TXT records that share their name with others (SPF lives at the domain itself, beside
# other services' verification strings): only the TXT records of their own tag are ours.
SHARED_TXT = frozenset({"spf"})
# RFC 6186 (and RFC 8314 for submissions): what mail clients look up. Port 0 with target
# "." says a service is not offered, so a client does not try plain IMAP or POP3.
SRV_SERVICES = (
    ("_submissions._tcp", MAIL_PORTS["submissions"], "mail clients: submission over TLS (RFC 8314)"),
    ("_submission._tcp", MAIL_PORTS["submission"], "mail clients: submission with STARTTLS"),
    ("_imaps._tcp", MAIL_PORTS["imaps"], "mail clients: IMAP over TLS"),
    ("_imap._tcp", 0, "not offered (IMAP only over TLS, on 993)"),
    ("_pop3._tcp", 0, "not offered (no POP3)"),
    ("_pop3s._tcp", 0, "not offered (no POP3)"),
)
# With options.pop3: POP3 over TLS on 995 (plain POP3 stays not offered).
POP3S_SERVICE = ("_pop3s._tcp", POP3S_PORT, "mail clients: POP3 over TLS (options.pop3)")
# RFC 6764, with options.groupware: calendar and contacts clients find SOGo's DAV over
# HTTPS from the domain (the TXT record names the path); never plain HTTP.
DAV_SERVICES = (("_caldavs._tcp", "calendar clients: CalDAV over HTTPS (RFC 6764)"),
                ("_carddavs._tcp", "contacts clients: CardDAV over HTTPS (RFC 6764)"))
DAV_PLAIN = ("_caldav._tcp", "_carddav._tcp")
DAV_PATH = SOGO["paths"]["webmail"] + "/dav/"
WEB_NOTES = {"mta-sts": "serves the MTA-STS policy over HTTPS",
             "autoconfig": "Thunderbird's automatic set-up",
             "autodiscover": "Outlook's automatic set-up"}


@dataclass(frozen=True)
class Record:
    name: str  # fully qualified, with the trailing dot
    type: str
    value: str
    ttl: int = TTL
    note: str | None = None
    kind: str = ""  # what the record is for (REQUIRED, MUST_MATCH); not printed

    @property
    def required(self) -> bool:
        return self.kind in REQUIRED

    @property
    def placeholder(self) -> bool:
        return self.value.startswith(PLACEHOLDER_PREFIX)


def site_records(site: Any) -> tuple[list[Record], list[str]]:
    """The records of an opened site (mailstack.site.directory.Site), and the notes about
    records that cannot be made (a site without a TLS key in the vault)."""
    from mailstack.site.inventory import load_hosts

    cfg = site.config
    keys = {d: site.secrets.dkim_key(d) for d in cfg.domains}
    tls_key = site.secrets.site.get(TLS_KEY)
    notes = [] if tls_key else [
        f"no TLSA record for _25._tcp.{cfg.hostname}: the vault has no TLS key (a site made "
        "before mailstack kept it there); make one with `mailstack tls new-key`, deploy, and "
        "publish the TLSA record"]
    return records(cfg, keys, load_hosts(site.root, site.inventory), tls_key), notes


def records(cfg: SiteConfig, dkim: dict[str, dict[str, str]], hosts: list[InventoryHost],
            tls_key: str | None = None) -> list[Record]:
    host = cfg.hostname + "."
    out: list[Record] = []
    ptr: list[Record] = []
    for h in hosts:
        try:
            ip = ipaddress.ip_address(h.address)
        except ValueError:
            out.append(Record(host, "A", f"{PLACEHOLDER_PREFIX}IPv4 of {h.address}>",
                              note="the server's public IPv4 address", kind="address"))
            continue
        out.append(Record(host, "A" if ip.version == 4 else "AAAA", str(ip), kind="address"))
        ptr.append(Record(ip.reverse_pointer + ".", "PTR", host, kind="ptr",
                          note="reverse DNS: set by the provider of the IP, not in your zone"))
    if tls_key:
        out.append(Record(f"_{MAIL_PORTS['smtp']}._tcp.{host}", "TLSA", tlsa_311(tls_key),
                          kind="tlsa", note="DANE: the site's key (kept across renewals); "
                                            "counts where the zone is DNSSEC-signed"))
    sts_id = mta_sts_policy(cfg)["id"]
    admin_domain = cfg.admin_email.split("@")[1]
    for domain in cfg.domains:
        d = domain + "."
        out.append(Record(d, "MX", f"10 {host}", kind="mx"))
        out.append(_spf(cfg, domain))
        key = dkim.get(domain)
        if key:
            out.append(Record(f"{key['selector']}._domainkey.{d}", "TXT",
                              f"v=DKIM1; k=rsa; p={dkim_public_key(key['private_key'])}",
                              kind="dkim"))
        out += _dmarc(cfg, domain, admin_domain)
        out.append(Record(f"_mta-sts.{d}", "TXT", f"v=STSv1; id={sts_id}", kind="mta-sts",
                          note="MTA-STS: the id changes with the policy"))
        out.append(Record(f"_smtp._tls.{d}", "TXT", f"v=TLSRPTv1; rua=mailto:{cfg.admin_email}",
                          kind="tls-rpt", note="TLS-RPT: senders report TLS failures"))
        for prefix in WEB_NAME_PREFIXES:
            if f"{prefix}.{domain}" != cfg.hostname:
                out.append(Record(f"{prefix}.{d}", "CNAME", host, kind="web",
                                  note=WEB_NOTES[prefix]))
        for service, port, note in SRV_SERVICES:
            if cfg.options.pop3 and service == POP3S_SERVICE[0]:
                service, port, note = POP3S_SERVICE
            value = f"0 1 {port} {host}" if port else "0 0 0 ."
            out.append(Record(f"{service}.{d}", "SRV", value, kind="srv", note=note))
        if cfg.options.groupware:
            out += _dav(d, host)
    return out + ptr


def _dav(d: str, host: str) -> list[Record]:
    out = []
    for service, note in DAV_SERVICES:
        out.append(Record(f"{service}.{d}", "SRV", f"0 1 {WEB['https_port']} {host}",
                          kind="srv", note=note))
        out.append(Record(f"{service}.{d}", "TXT", f"path={DAV_PATH}", kind="dav-path"))
    out += [Record(f"{service}.{d}", "SRV", "0 0 0 .", kind="srv",
                   note="not offered (DAV only over HTTPS)") for service in DAV_PLAIN]
    return out


def _spf(cfg: SiteConfig, domain: str) -> Record:
    """Our MX hosts may send; through a relay host, the relay's senders too."""
    relay = cfg.options.relay
    if relay is None:
        return Record(domain + ".", "TXT", "v=spf1 mx -all", kind="spf")
    if relay.spf_include:
        return Record(domain + ".", "TXT", f"v=spf1 mx include:{relay.spf_include} -all",
                      kind="spf")
    return Record(domain + ".", "TXT", "v=spf1 mx ~all", kind="spf",
                  note=f"mail leaves through {relay.host}: set options.relay.spf_include to "
                       "its SPF domain (see the provider's documentation) for a strict -all")


def _dmarc(cfg: SiteConfig, domain: str, admin_domain: str) -> list[Record]:
    """DMARC with aggregate reports to admin_email. Reports for a domain sent to another
    domain need that domain's consent (RFC 7489 7.1): a record we print when it is one of
    ours, a note when it is not."""
    value = f"v=DMARC1; p=quarantine; adkim=r; aspf=r; rua=mailto:{cfg.admin_email}"
    if admin_domain == domain:
        return [Record(f"_dmarc.{domain}.", "TXT", value, kind="dmarc")]
    if admin_domain in cfg.domains:
        return [Record(f"_dmarc.{domain}.", "TXT", value, kind="dmarc"),
                Record(f"{domain}._report._dmarc.{admin_domain}.", "TXT", "v=DMARC1",
                       kind="dmarc-report",
                       note=f"lets {admin_domain} receive {domain}'s DMARC reports")]
    return [Record(f"_dmarc.{domain}.", "TXT", value, kind="dmarc",
                   note=f"reports go to {admin_domain}, which must consent (RFC 7489 7.1): "
                        f'TXT {domain}._report._dmarc.{admin_domain}. "v=DMARC1" in its zone')]


def txt_tag(value: str) -> str | None:
    """The version tag a TXT record starts with (v=spf1, v=DKIM1, v=DMARC1 …), lower case,
    or None for a record without one (a verification string, a DKIM key without v=)."""
    head = value.strip().split(";", 1)[0].split(None, 1)
    if head and head[0].lower().startswith("v="):
        return head[0].lower()
    return None


def _txt(value: str) -> str:
    """A TXT value as quoted strings of at most 255 characters (DKIM keys need two)."""
    chunks = [value[i:i + TXT_CHUNK] for i in range(0, len(value), TXT_CHUNK)]
    quoted = " ".join(f'"{c}"' for c in chunks)
    return f"( {quoted} )" if len(chunks) > 1 else quoted


def zone(recs: list[Record], notes: Sequence[str] = ()) -> str:
    width = max(len(r.name) for r in recs)
    lines = ["; DNS records for mailstack: publish them at your DNS provider "
             "(or with `mailstack dns push`)."]
    lines += [f"; {note}" for note in notes]
    for r in recs:
        if r.type == "PTR":
            lines.append(f"; PTR: ask the provider of the IP to set {r.name} PTR {r.value}")
            continue
        value = _txt(r.value) if r.type == "TXT" else r.value
        line = f"{r.name:<{width}} {r.ttl} IN {r.type:<5} {value}"
        lines.append(line if not r.note else f"{line} ; {r.note}")
    return "\n".join(lines) + "\n"


def as_json(recs: list[Record]) -> str:
    """The records as a list of {name, type, value, ttl[, note]} (the kind stays inside)."""
    items = []
    for r in recs:
        item: dict[str, Any] = {"name": r.name, "type": r.type, "value": r.value, "ttl": r.ttl}
        if r.note is not None:
            item["note"] = r.note
        items.append(item)
    return json.dumps(items, indent=2) + "\n"
