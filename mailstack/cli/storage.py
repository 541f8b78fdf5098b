"""`mailstack unlock` and `mailstack status`: the encrypted store of each host."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from mailstack.cli.common import opts
from mailstack.errors import MailstackError


def unlock(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Argument(help="Only this host (default: all).")] = None,
    passphrase_stdin: Annotated[bool, typer.Option(
        "--passphrase-stdin", help="Read the passphrase from stdin instead of the secrets.")
    ] = False,
) -> None:
    """Unlock the encrypted mail store after a reboot: mount it, start Dovecot, deliver the
    mail that waited in the queue."""
    from mailstack.deploy.storage import unlock as run_unlock

    site = opts(ctx).site()
    secret = None
    if passphrase_stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
        if not secret:
            raise MailstackError("--passphrase-stdin: standard input was empty")
    for r in run_unlock(site, host, secret):
        d = r.data
        state = "was already unlocked" if d.get("already_unlocked") else "unlocked"
        typer.echo(f"{r.host}: {state}; delivered {d.get('delivered', 0)} queued message(s)"
                   f"{_still(d)}")


def _still(data: dict) -> str:
    return f", {data['still_queued']} still queued" if data.get("still_queued") else ""


def status(ctx: typer.Context) -> None:
    """Per host: store locked/unlocked, services, queue size."""
    from mailstack.deploy.storage import status as run_status

    for r in run_status(opts(ctx).site()):
        store = r.data["storage"]
        lock = ("LOCKED (run `mailstack unlock`)" if store["locked"] else
                "unlocked" if store["encryption"] != "none" else "not encrypted")
        services = ", ".join(f"{k} {v}" for k, v in r.data["services"].items())
        typer.echo(f"{r.host}: storage {store['encryption']} {lock}; queue {r.data['queue']}; "
                   f"{services}")
        for line in checks_lines(r.data):
            typer.echo(f"  {line}")


def checks_lines(data: dict) -> list[str]:
    """The ban jails, the spam filter and the resolver, as `status` shows them."""
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
    return lines
