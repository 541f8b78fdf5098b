"""`mailstack status` judged: each fact the host tool reports (mailstack-storage status) and
the site's DNS, as ok, warning or critical against options.monitoring, and the exit code a
monitoring system reads (0 ok, 1 warning, 2 critical: the worst over every host and DNS).

Critical: the store locked (mail is accepted and sealed, but nobody can read it), a service
down, the spam filter or the resolver not answering, the certificate about to expire, the
queue's oldest message or the last backup far too old, the disk nearly full, a host that
cannot be asked. Warning: the same nearer to normal, records missing from or different in
DNS, a blocklist that lists the host or does not work.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from mailstack.site.config import Monitoring, duration_seconds
from mailstack.verify.dnsbl import answer_matches, judge

SCHEMA = 1
OK, INFO, WARNING, CRITICAL = "ok", "info", "warning", "critical"
# info: worth a line, no cause for alarm (no backup recorded, fail2ban off).
RANK = {OK: 0, INFO: 0, WARNING: 1, CRITICAL: 2}
EXIT_CODES = {OK: 0, WARNING: 1, CRITICAL: 2}


@dataclass(frozen=True)
class Finding:
    check: str  # storage, service postfix, queue, disk PATH, certificate, backup, bans, …
    level: str
    detail: str


@dataclass
class HostStatus:
    host: str
    data: dict[str, Any]  # the host tool's answer; {} when it could not be asked
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None  # why the host could not be asked

    @property
    def level(self) -> str:
        return worst(f.level for f in self.findings)


@dataclass
class DnsStatus:
    checked: bool
    finding: Finding
    records: list[dict[str, Any]] = field(default_factory=list)


def worst(levels: Any) -> str:
    found = OK
    for level in levels:
        if RANK[level] > RANK[found]:
            found = level
    return found


def exit_code(level: str) -> int:
    return EXIT_CODES[worst([level])]


def by_threshold(value: float, warning: float, critical: float) -> str:
    """ok below warning, warning from there, critical from critical (higher is worse)."""
    return CRITICAL if value >= critical else WARNING if value >= warning else OK


def by_days_left(days: float, warning: int, critical: int) -> str:
    return CRITICAL if days < critical else WARNING if days < warning else OK


def age(seconds: float) -> str:
    """A duration as people say it: 45 s, 12 min, 3 h 5 min, 2 d 4 h."""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def unreachable(host: str, error: str) -> HostStatus:
    return HostStatus(host, {}, [Finding("host", CRITICAL, f"not asked: {error}")], error)


def judge_host(host: str, data: dict[str, Any], m: Monitoring,
               filters: dict[str, str | None] | None = None, *, now: float | None = None,
               backup_configured: bool = False) -> HostStatus:
    """Every finding of one host's status answer. now: the host's clock when it answered
    (the queue's and the certificate's times are the host's). backup_configured: the site
    has options.backup, so a host without a successful backup is a warning."""
    now = data.get("time", time.time()) if now is None else now
    found = [*_storage(data), *_services(data), *_queue(data, m), *_filesystems(data, m),
             *_certificate(data, m, now), *_backup(data, m, now, backup_configured), *_answers(data),
             *_blocklists(data, filters or {})]
    return HostStatus(host, data, found)


def _storage(data: dict[str, Any]) -> list[Finding]:
    store = data.get("storage") or {}
    if store.get("locked"):
        return [Finding("storage", CRITICAL, "locked: mail is accepted and sealed, but no one "
                        "can read it; run `mailstack unlock`")]
    if store.get("encryption", "none") == "none":
        return [Finding("storage", OK, "not encrypted")]
    return [Finding("storage", OK, f"{store['encryption']}, unlocked")]


def _services(data: dict[str, Any]) -> list[Finding]:
    """A unit that is not active is critical; Dovecot, stopped while the store is locked,
    is the lock's finding, not one of its own."""
    locked = (data.get("storage") or {}).get("locked")
    out = []
    for unit, state in (data.get("services") or {}).items():
        if state in ("active", "reloading"):
            continue
        if locked and unit == "dovecot":
            continue
        out.append(Finding(f"service {unit}", CRITICAL, f"{unit} is {state or 'unknown'}"))
    return out


def _queue(data: dict[str, Any], m: Monitoring) -> list[Finding]:
    if "queue_oldest" not in data:
        return []  # a host tool from before this check: nothing invented
    n, oldest = data.get("queue", 0), data["queue_oldest"]
    if not n or oldest is None:
        return [Finding("queue", OK, "empty")]
    level = by_threshold(oldest, duration_seconds(m.queue_age.warning),
                         duration_seconds(m.queue_age.critical))
    return [Finding("queue", level, f"{n} message{'s' if n != 1 else ''}, the oldest "
                    f"{age(oldest)} old")]


def _filesystems(data: dict[str, Any], m: Monitoring) -> list[Finding]:
    out = []
    for fs in data.get("filesystems") or []:
        name = f"disk {fs['path']}"
        if "error" in fs:
            out.append(Finding(name, CRITICAL, f"not readable: {fs['error']}"))
            continue
        used, inodes = fs["used_percent"], fs.get("inodes_used_percent")
        level = by_threshold(max(used, inodes or 0), m.disk_percent.warning,
                             m.disk_percent.critical)
        shown = f"{used:g} % used, {fs['free_bytes'] / 1024**3:.1f} GiB free"
        if inodes is not None:
            shown += f", inodes {inodes:g} % used"
        out.append(Finding(name, level, shown))
    return out


def _certificate(data: dict[str, Any], m: Monitoring, now: float) -> list[Finding]:
    cert = data.get("certificate")
    if cert is None:
        return []
    if "error" in cert:
        return [Finding("certificate", CRITICAL, f"{cert['path']}: {cert['error']}")]
    days = (cert["not_after"] - now) / 86400
    until = time.strftime("%Y-%m-%d", time.gmtime(cert["not_after"]))
    level = by_days_left(days, m.certificate_days.warning, m.certificate_days.critical)
    if days < 0:
        return [Finding("certificate", level, f"EXPIRED on {until}")]
    return [Finding("certificate", level, f"{int(days)} days left (until {until})")]


def _backup(data: dict[str, Any], m: Monitoring, now: float,
            configured: bool = False) -> list[Finding]:
    backup = data.get("backup")
    if backup is None:
        return []
    if not backup.get("recorded") and configured:
        # Backups are set up, yet none has finished here (a new host before its first timer
        # run, or every run failing): nothing would restore this host's mail today.
        return [Finding("backup", WARNING, "none finished yet: run `mailstack backup now`, "
                        "or see `journalctl -u mailstack-backup` on the host")]
    if not backup.get("recorded"):
        return [Finding("backup", INFO, "none recorded (no backup configured)")]
    if "error" in backup:
        return [Finding("backup", WARNING, f"{backup['path']}: {backup['error']}")]
    ago = max(now - backup["finished"], 0)
    level = by_threshold(ago, duration_seconds(m.backup_age.warning),
                         duration_seconds(m.backup_age.critical))
    if not backup.get("ok"):
        return [Finding("backup", worst([level, WARNING]),
                        f"the last one recorded, {age(ago)} ago, did not succeed")]
    archive = f" ({backup['archive']})" if backup.get("archive") else ""
    return [Finding("backup", level, f"last success {age(ago)} ago{archive}")]


def _answers(data: dict[str, Any]) -> list[Finding]:
    """Bans, the spam filter, the resolver (their lines are checks_lines' in the text)."""
    out = []
    if "jails" in data:
        jails = data["jails"]
        if jails is None:
            out.append(Finding("bans", INFO, "fail2ban not running"))
        else:
            out.append(Finding("bans", OK, ", ".join(f"{j} {n} banned"
                                                     for j, n in jails.items()) or "no jails"))
    for key, name in (("spam_filter", "spam filter"), ("resolver", "resolver")):
        if key in data:
            out.append(Finding(name, OK, "answers") if data[key] == "ok" else
                       Finding(name, CRITICAL, f"not answering ({data[key]})"))
    return out


def _blocklists(data: dict[str, Any], filters: dict[str, str | None]) -> list[Finding]:
    """Each list: does it work (its test entry), does it list one of the host's addresses."""
    out = []
    for zone, answer in (data.get("blocklists") or {}).items():
        works, said = judge(zone, filters.get(zone), answer)
        out.append(Finding(f"blocklist {zone}", OK if works else WARNING,
                           "works" if works else said))
    for zone, per_address in (data.get("listed") or {}).items():
        listed = [a for a, found in per_address.items()
                  if any(answer_matches(filters.get(zone), x) for x in found.get("answers", []))]
        if listed:
            out.append(Finding(f"listed {zone}", WARNING,
                               f"{zone} lists {', '.join(listed)}: receivers that use it refuse "
                               "this server's mail; ask the list to remove it"))
        else:
            asked = ", ".join(per_address) or "no address of the host name"
            out.append(Finding(f"listed {zone}", OK, f"not listed ({asked})"))
    return out


# --------------------------------------------------------------------------- DNS


def dns_skipped(note: str) -> DnsStatus:
    return DnsStatus(False, Finding("dns", INFO, note))


def dns_failed(error: str) -> DnsStatus:
    return DnsStatus(False, Finding("dns", WARNING, f"not checked: {error}"))


def judge_dns(report: Any) -> DnsStatus:
    """`mailstack dns check`'s report: any record missing, different or unknown is drift."""
    drift = [r for r in report.results if r.status != "ok"]
    records = [{"name": r.record.name, "type": r.record.type, "status": r.status,
                "required": r.record.required} for r in report.results]
    if not drift:
        return DnsStatus(True, Finding("dns", OK, f"{len(report.results)} records as "
                                       f"printed (asked {report.resolver})"), records)
    shown = ", ".join(f"{r.status} {r.record.type} {r.record.name}" for r in drift[:4])
    more = f" and {len(drift) - 4} more" if len(drift) > 4 else ""
    return DnsStatus(True, Finding("dns", WARNING, f"{len(drift)} of {len(report.results)} "
                                   f"records not as printed: {shown}{more} (`mailstack dns "
                                   "check` shows both values)"), records)


# --------------------------------------------------------------------------- the report


def overall(hosts: list[HostStatus], dns: DnsStatus) -> str:
    return worst([*(h.level for h in hosts), dns.finding.level])


def problems(hosts: list[HostStatus], dns: DnsStatus) -> list[str]:
    """Each warning and critical finding, host first: the summary line's parts."""
    out = [f"{h.host}: {f.check} {f.detail}" if f.check != "host" else f"{h.host}: {f.detail}"
           for h in hosts for f in h.findings if RANK[f.level] > 0]
    if RANK[dns.finding.level] > 0:
        out.append(f"dns: {dns.finding.detail}")
    return out


def as_json(hosts: list[HostStatus], dns: DnsStatus) -> str:
    """Schema 1: {schema, level, exit_code, hosts: [{host, reachable, error, level,
    checks: [{check, level, detail}], status: the host tool's answer}], dns: {checked,
    level, detail, records: [{name, type, status, required}]}}."""
    level = overall(hosts, dns)
    data = {
        "schema": SCHEMA,
        "level": level,
        "exit_code": exit_code(level),
        "hosts": [{
            "host": h.host,
            "reachable": h.error is None,
            "error": h.error,
            "level": h.level,
            "checks": [{"check": f.check, "level": f.level, "detail": f.detail}
                       for f in h.findings],
            "status": {k: v for k, v in h.data.items() if k != "ok"},
        } for h in hosts],
        "dns": {"checked": dns.checked, "level": dns.finding.level,
                "detail": dns.finding.detail, "records": dns.records},
    }
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def summary(hosts: list[HostStatus], dns: DnsStatus) -> str:
    level = overall(hosts, dns)
    found = problems(hosts, dns)
    return f"status: {level.upper() if level != OK else OK}" + (
        f" ({'; '.join(found)})" if found else "")
