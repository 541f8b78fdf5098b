"""The DNS records a site needs, as a zone-file snippet or JSON for a provider's API."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass

from mailstack.site.config import SiteConfig
from mailstack.site.inventory import InventoryHost
from mailstack.site.secrets import dkim_public_key

TTL = 3600
TXT_CHUNK = 255  # one character-string in a TXT record holds at most 255 bytes


@dataclass(frozen=True)
class Record:
    name: str  # fully qualified, with the trailing dot
    type: str
    value: str
    ttl: int = TTL
    note: str | None = None


def records(cfg: SiteConfig, dkim: dict[str, dict[str, str]],
            hosts: list[InventoryHost]) -> list[Record]:
    host = cfg.hostname + "."
    out: list[Record] = []
    ptr: list[Record] = []
    for h in hosts:
        try:
            ip = ipaddress.ip_address(h.address)
        except ValueError:
            out.append(Record(host, "A", f"<IPv4 of {h.address}>",
                              note="the server's public IPv4 address"))
            continue
        out.append(Record(host, "A" if ip.version == 4 else "AAAA", str(ip)))
        ptr.append(Record(ip.reverse_pointer + ".", "PTR", host,
                          note="reverse DNS: set by the provider of the IP, not in your zone"))
    for domain in cfg.domains:
        out.append(Record(domain + ".", "MX", f"10 {host}"))
        out.append(_spf(cfg, domain))
        key = dkim.get(domain)
        if key:
            out.append(Record(f"{key['selector']}._domainkey.{domain}.", "TXT",
                              f"v=DKIM1; k=rsa; p={dkim_public_key(key['private_key'])}"))
        report = cfg.admin_email if cfg.admin_email.endswith("@" + domain) else None
        dmarc = "v=DMARC1; p=quarantine; adkim=r; aspf=r"
        if report:
            dmarc += f"; rua=mailto:{report}"
        out.append(Record(f"_dmarc.{domain}.", "TXT", dmarc))
    return out + ptr


def _spf(cfg: SiteConfig, domain: str) -> Record:
    """Our MX hosts may send; through a relay host, the relay's senders too."""
    relay = cfg.options.relay
    if relay is None:
        return Record(domain + ".", "TXT", "v=spf1 mx -all")
    if relay.spf_include:
        return Record(domain + ".", "TXT", f"v=spf1 mx include:{relay.spf_include} -all")
    return Record(domain + ".", "TXT", "v=spf1 mx ~all",
                  note=f"mail leaves through {relay.host}: set options.relay.spf_include to "
                       "its SPF domain (see the provider's documentation) for a strict -all")


def _txt(value: str) -> str:
    """A TXT value as quoted strings of at most 255 characters (DKIM keys need two)."""
    chunks = [value[i:i + TXT_CHUNK] for i in range(0, len(value), TXT_CHUNK)]
    quoted = " ".join(f'"{c}"' for c in chunks)
    return f"( {quoted} )" if len(chunks) > 1 else quoted


def zone(recs: list[Record]) -> str:
    width = max(len(r.name) for r in recs)
    lines = ["; DNS records for mailstack: publish them at your DNS provider."]
    for r in recs:
        if r.type == "PTR":
            lines.append(f"; PTR: ask the provider of the IP to set {r.name} PTR {r.value}")
            continue
        value = _txt(r.value) if r.type == "TXT" else r.value
        line = f"{r.name:<{width}} {r.ttl} IN {r.type:<4} {value}"
        lines.append(line if not r.note else f"{line} ; {r.note}")
    return "\n".join(lines) + "\n"


def as_json(recs: list[Record]) -> str:
    items = []
    for r in recs:
        item = asdict(r)
        if item["note"] is None:
            del item["note"]
        items.append(item)
    return json.dumps(items, indent=2) + "\n"
