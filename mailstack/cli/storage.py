"""`mailstack unlock`, `lock`, `status` and `unban`: day-2 commands run on each host over SSH."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from mailstack.cli.common import opts
from mailstack.errors import MailstackError

if TYPE_CHECKING:
    from mailstack.dnsquery import Server
    from mailstack.site.config import Relay
    from mailstack.site.directory import Site
    from mailstack.verify.health import DnsStatus, HostStatus


def unlock(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Argument(help="Only this host (default: all).")] = None,
    passphrase_stdin: Annotated[bool, typer.Option(
        "--passphrase-stdin", help="Read the passphrase from stdin instead of the secrets.")
    ] = False,
) -> None:
    """Unlock the encrypted mail store after a reboot: mount it, start Dovecot, deliver the
    mail sealed while it was locked and the mail that waited in the queue."""
    from mailstack.deploy.storage import unlock as run_unlock

    site = opts(ctx).site()
    secret = None
    if passphrase_stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
        if not secret:
            raise MailstackError("--passphrase-stdin: standard input was empty")
    stuck = False
    for r in run_unlock(site, host, secret):
        d = r.data
        state = "was already unlocked" if d.get("already_unlocked") else "unlocked"
        typer.echo(f"{r.host}: {state}; delivered {d.get('delivered', 0)} queued message(s)"
                   f"{_still(d)}")
        if d.get("still_sealed"):
            stuck = True
            typer.echo(f"{r.host}: {d['still_sealed']} message(s) sealed while locked could "
                       "not be handed back to Postfix yet; they are kept: "
                       + "; ".join(d.get("unseal_errors") or ["see journalctl -u postfix@-"])
                       + ". Run `mailstack unlock` again once that is fixed.", err=True)
    if stuck:
        raise typer.Exit(1)


def lock(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Argument(help="Only this host (default: all).")] = None,
) -> None:
    """Lock the encrypted mail store now, as a reboot would (before maintenance, or before
    someone else gets the disk): stop Dovecot, unmount, seal the mail waiting in the queue.
    Mail keeps arriving and is sealed until `mailstack unlock`."""
    from mailstack.deploy.storage import lock as run_lock

    site = opts(ctx).site()
    if site.config.options.storage.encryption == "none":
        raise MailstackError("options.storage.encryption is none: there is no store to lock")
    for r in run_lock(site, host):
        d = r.data
        state = "was already locked" if d.get("already_locked") else "locked"
        typer.echo(f"{r.host}: {state}; sealed {d.get('sealed', 0)} message(s) from the queue")


def _still(data: dict) -> str:
    return f", {data['still_queued']} still queued" if data.get("still_queued") else ""


def status(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document (README).")
                        ] = False,
    host: Annotated[str | None, typer.Option(help="Only this inventory host.")] = None,
    resolver: Annotated[str | None, typer.Option(
        help="The resolver the DNS check asks, IP[:PORT] (default: this machine's).")] = None,
    dns: Annotated[bool, typer.Option(
        "--dns/--no-dns", help="Also compare the site's DNS with `mailstack dns`.")] = True,
) -> None:
    """Per host: the store (locked or not), services, the queue and its oldest message (and
    why mail waits), disk and inodes of the store, the certificate's days left, bans, the
    spam filter, the resolver, the DNS blocklists (working, listing this host), the last
    backup; then the site's DNS. Exit 0 ok, 1 warning, 2 critical (for monitoring)."""
    from mailstack.deploy.storage import statuses
    from mailstack.dnsquery import parse_resolver
    from mailstack.verify import health

    try:
        site = opts(ctx).site()
        options = site.config.options
        server = parse_resolver(resolver) if resolver is not None else None
        answers = statuses(site, host)  # each host's answer, or why there is none
    except MailstackError as exc:
        # Not even asked is no "warning" (exit 1) to a monitoring system: critical.
        exc.exit_code = health.EXIT_CODES[health.CRITICAL]
        raise
    filters = {dl.zone: dl.answers for dl in options.blocklists.lists}
    found = []
    for name, answer in answers:
        if isinstance(answer, MailstackError):
            found.append(health.unreachable(name, str(answer).removeprefix(f"{name}: ")))
        else:
            found.append(health.judge_host(name, answer.data, options.monitoring, filters,
                                           backup_configured=options.backup is not None))
    dns_status = _dns_status(site, server) if dns else health.dns_skipped(
        "DNS not checked (--no-dns)")
    if json_out:
        typer.echo(health.as_json(found, dns_status).rstrip("\n"))
    else:
        for h in found:
            for line in host_lines(h, options.relay, filters):
                typer.echo(line)
        typer.echo(f"dns: {dns_status.finding.detail}{_flag(dns_status.finding.level)}")
        typer.echo(health.summary(found, dns_status))
    raise typer.Exit(health.exit_code(health.overall(found, dns_status)))


def _dns_status(site: Site, server: Server | None) -> DnsStatus:
    from mailstack.verify import health
    from mailstack.verify.dns import check
    from mailstack.verify.published import why_skipped

    if note := why_skipped(site, server):
        return health.dns_skipped(note)
    try:
        return health.judge_dns(check(site, server))
    except MailstackError as exc:
        return health.dns_failed(str(exc))


def _flag(level: str) -> str:
    return {"warning": "  [WARNING]", "critical": "  [CRITICAL]"}.get(level, "")


# The findings that have lines of their own below the host's first line (the first line
# shows the store and the services; checks_lines the bans, filter, resolver and lists).
OWN_LINES = ("queue", "disk ", "certificate", "backup", "listed ")


def host_lines(h: HostStatus, relay: Relay | None, filters: dict[str, str | None]
               ) -> list[str]:
    """`mailstack status`'s lines for one host: the first line as always (store, queue,
    sealed, services), why mail waits, the answers, then each finding with a line of its
    own, marked when it is a warning or critical."""
    from mailstack.verify.health import worst

    if h.error is not None:
        return [f"{h.host}: UNREACHABLE: {h.error}  [CRITICAL]"]
    data = h.data
    store = data["storage"]
    lock = ("LOCKED (run `mailstack unlock`)" if store["locked"] else
            "unlocked" if store["encryption"] != "none" else "not encrypted")
    services = ", ".join(f"{k} {v}" for k, v in data["services"].items())
    sealed = f"sealed {data['sealed']}; " if "sealed" in data else ""
    down = worst(f.level for f in h.findings
                 if f.check == "storage" or f.check.startswith("service "))
    lines = [f"{h.host}: storage {store['encryption']} {lock}; queue {data['queue']}; "
             f"{sealed}{services}{_flag(down)}"]
    lines += [f"  {line}" for line in queue_lines(data, relay)]
    lines += [f"  {line}" for line in checks_lines(data, filters)]
    for f in h.findings:
        if f.check.startswith(OWN_LINES):
            lines.append(f"  {f.check}: {f.detail}{_flag(f.level)}")
    return lines


def queue_lines(data: dict, relay: Relay | None = None) -> list[str]:
    """Why deferred mail waits, one line per reason Postfix gave (the host tool's `deferred`):
    a relay host that refuses the login, or takes no mail, is named with what to do."""
    lines = []
    for item in data.get("deferred") or []:
        reason, n = item["reason"], item["messages"]
        waits = f"{n} message{'s wait' if n != 1 else ' waits'}"
        if relay is None or f"{relay.name}[" not in reason:
            lines.append(f"deferred: {waits}: {reason}")
        elif "SASL authentication failed" in reason:
            said = reason.split(" said: ", 1)[1] if " said: " in reason else reason
            lines.append(f"relay: {relay.host} refuses the login ({said}); {waits}: run "
                         f"`mailstack relay set {relay.host} {relay.username}` with the right "
                         "password, then `mailstack deploy`")
        else:
            lines.append(f"relay: {relay.host} does not take the mail ({reason}); {waits}")
    return lines


def checks_lines(data: dict, filters: dict[str, str | None] | None = None) -> list[str]:
    """The ban jails, the spam filter, the resolver and the DNS blocklists (judged against
    their answer filters: zone -> answers), as `status` shows them."""
    lines = []
    jails = data.get("jails")
    if "jails" not in data:
        pass  # a host tool from before this check: nothing invented
    elif jails is None:
        lines.append("bans: fail2ban not running (off in mailstack.yml, or a container "
                     "without CAP_NET_ADMIN)")
    else:
        lines.append("bans: " + (", ".join(f"{name} {n} banned" for name, n in jails.items())
                                 or "no jails"))
    for key, label in (("spam_filter", "spam filter"), ("resolver", "resolver")):
        if key in data:
            lines.append(f"{label}: " + ("answers" if data[key] == "ok" else
                                         f"NOT answering ({data[key]})"))
    from mailstack.verify.dnsbl import judge

    # Each DNS blocklist the host asked for its test entry.
    for zone, answer in (data.get("blocklists") or {}).items():
        works, said = judge(zone, (filters or {}).get(zone), answer)
        lines.append(f"blocklist {said}" if works else f"blocklist NOT WORKING: {said}")
    return lines


def unban(
    ctx: typer.Context,
    address: Annotated[str | None, typer.Argument(
        help="The IP address to let in again.", show_default=False)] = None,
    all_addresses: Annotated[bool, typer.Option("--all", help="Lift every ban.")] = False,
    host: Annotated[str | None, typer.Option("--host", help="Only this host (default: all).")
                    ] = None,
) -> None:
    """Lift the brute-force bans (fail2ban) of an address, e.g. a user who mistyped a
    password too often, at once instead of after options.bans.ban_time."""
    import ipaddress

    from mailstack.deploy.storage import unban as run_unban

    if all_addresses == (address is not None):
        raise MailstackError("give one IP address to unban, or --all")
    if address is not None:
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            raise MailstackError(f"not an IP address: {address!r} (e.g. 192.0.2.10 or "
                                 "2001:db8::10)") from None
    site = opts(ctx).site()
    for r in run_unban(site, address or "all", host):
        d = r.data
        typer.echo(f"{r.host}: {'every address' if address is None else address} unbanned; "
                   f"{d.get('banned_now', 0)} ban(s) left")
