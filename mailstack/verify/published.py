"""The DNS checks of `mailstack verify`: `mailstack dns check` judged as checks. Every record
published as printed, reverse DNS naming the host, the TLSA record matching the key port 25
serves, and each domain's MTA-STS policy covering every MX that DNS names for it (a sender
that enforces the policy refuses any other MX, so a forgotten backup MX loses mail).

Names under the special-use top-level domains (RFC 6761: .test, .example, .invalid,
.localhost) are in no public DNS: for a site made of them (the sandbox) the checks are
skipped unless a resolver that serves them is named.
"""

from __future__ import annotations

from mailstack.dnsquery import Server
from mailstack.errors import MailstackError
from mailstack.render.context import mta_sts_policy
from mailstack.site.directory import Site
from mailstack.verify.dns import RecordResult, Report, check
from mailstack.verify.report import Check

SPECIAL_USE = ("test", "example", "invalid", "localhost")
LABEL = "dns"  # the host column of these checks: they are the site's, not one host's
SHOWN = 4  # records named in a detail; the rest counted (`mailstack dns check` lists all)


def why_skipped(site: Site, resolver: Server | None) -> str | None:
    """Why the DNS checks cannot run here, or None when they can."""
    names = [site.config.hostname, *site.config.domains]
    if resolver is None and all(n.rstrip(".").rsplit(".", 1)[-1] in SPECIAL_USE for n in names):
        return (f"DNS not checked: {', '.join(sorted(set(names)))} are special-use names no "
                "public DNS serves (give --resolver to ask a DNS server that has them)")
    return None


def dns_checks(site: Site, resolver: Server | None, *, ns_port: int = 53) -> list[Check]:
    try:
        report = check(site, resolver, ns_port=ns_port)
    except MailstackError as exc:  # no resolver answered: the checks fail, the rest stands
        return [Check(LABEL, "DNS records published as printed", False, str(exc))]
    return [published(report), reverse_dns(report), *tlsa(report),
            *[mta_sts_covers_mx(site, report, d) for d in sorted(site.config.domains)]]


def _names(results: list[RecordResult]) -> str:
    named = [f"{r.record.type} {r.record.name}" for r in results[:SHOWN]]
    more = f" and {len(results) - SHOWN} more" if len(results) > SHOWN else ""
    return ", ".join(named) + more


def published(report: Report) -> Check:
    failing = [r for r in report.results if r.fails]
    not_ok = [r for r in report.results if r.status != "ok" and not r.fails]
    ok = sum(r.status == "ok" for r in report.results)
    if failing:
        by_status: dict[str, list[RecordResult]] = {}
        for r in failing:
            by_status.setdefault(r.status, []).append(r)
        detail = "; ".join(f"{status}: {_names(rs)}" for status, rs in by_status.items())
        return Check(LABEL, "DNS records published as printed", False,
                     f"{detail} (run `mailstack dns check` for both values)")
    detail = f"{ok} of {len(report.results)} records ok"
    if not_ok:
        detail += f"; not required, not as printed: {_names(not_ok)}"
    return Check(LABEL, "DNS records published as printed", True, detail)


def reverse_dns(report: Report) -> Check:
    return Check(LABEL, "reverse DNS (PTR) names the host", not report.ptr_warnings,
                 "; ".join(report.ptr_warnings) or "every address's PTR is the host name")


def tlsa(report: Report) -> list[Check]:
    record = next((r for r in report.results if r.record.type == "TLSA"), None)
    if record is None:
        return []
    name = f"TLSA {record.record.name} matches the key on port 25"
    if record.status != "ok":
        return [Check(LABEL, name, False, f"{record.status}: expected {record.record.value}"
                      + (f", found {'; '.join(record.found)}" if record.found else ""))]
    return [Check(LABEL, name, not report.tlsa_warnings,
                  "; ".join(report.tlsa_warnings) or f"published and served: {record.record.value}")]


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 section 4.1: a policy's mx is a name, or *.name matching one label more."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.count(".") > 0 and host.split(".", 1)[1] == pattern[2:]
    return host == pattern


def mta_sts_covers_mx(site: Site, report: Report, domain: str) -> Check:
    name = f"MTA-STS policy of {domain} covers its MX"
    patterns = mta_sts_policy(site.config)["mx"]
    fqdn = domain.rstrip(".").lower() + "."
    mx = next((r for r in report.results if r.record.kind == "mx" and r.record.name == fqdn), None)
    txt = next((r for r in report.results
                if r.record.kind == "mta-sts" and r.record.name == "_mta-sts." + fqdn), None)
    if mx is None or not mx.found:
        return Check(LABEL, name, False, f"{domain} has no MX in DNS")
    hosts = [value.split()[-1] for value in mx.found]
    outside = [h for h in hosts if not any(mx_matches(p, h) for p in patterns)]
    if outside:
        return Check(LABEL, name, False,
                     f"MX {', '.join(outside)} not in the policy (mx: {', '.join(patterns)}): "
                     "senders that enforce MTA-STS will not deliver there")
    if txt is not None and txt.status != "ok":
        return Check(LABEL, name, False,
                     f"_mta-sts.{domain} is {txt.status} (expected \"{txt.record.value}\"): "
                     "senders keep the old policy until it names the new id")
    return Check(LABEL, name, True, f"MX {', '.join(hosts)} in the policy")
