"""`mailstack dns [check|push|key]`: the records the site needs; whether DNS has them;
publishing them by dynamic update; the TSIG key that signs the updates."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from mailstack.cli.common import CONTEXT, opts, sub_app
from mailstack.errors import MailstackError

dns_app = typer.Typer(context_settings=CONTEXT, invoke_without_command=True,
                      no_args_is_help=False)
key_app = sub_app("The TSIG key `mailstack dns push` signs its updates with.")
dns_app.add_typer(key_app, name="key")

RESOLVER_HELP = ("The resolver to ask, IP[:PORT] (default: this machine's, from "
                 "/etc/resolv.conf).")


@dns_app.callback()
def dns(
    ctx: typer.Context,
    format: Annotated[str, typer.Option(
        "--format", help="zone (for a zone file or to read) or json (for APIs).")] = "zone",
) -> None:
    """The DNS records the site needs: address, DANE, MX, SPF, DKIM, DMARC, MTA-STS,
    TLS-RPT, the web names and the mail clients' SRV records, and the PTR to ask for.

    `mailstack dns check` compares them with what DNS serves; `mailstack dns push`
    publishes them (RFC 2136, TSIG)."""
    if ctx.invoked_subcommand is not None:
        return
    from mailstack.render.dns import as_json, site_records, zone

    if format not in ("zone", "json"):
        raise MailstackError(f"--format {format!r}: choose zone or json")
    recs, notes = site_records(opts(ctx).site())
    for note in notes:
        typer.secho(f"warning: {note}", err=True, fg=typer.colors.YELLOW)
    typer.echo((zone(recs, notes) if format == "zone" else as_json(recs)).rstrip("\n"))


@dns_app.command("check")
def dns_check(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    resolver: Annotated[str | None, typer.Option(help=RESOLVER_HELP)] = None,
) -> None:
    """Is every record published? ok, missing or different, per record.

    Asks each zone's name servers (found through the resolver) and the resolver for every
    record `mailstack dns` prints. Warns about the PTR and about a TLSA record that does not
    match the key port 25 presents. Exit 1 when a required record (address, MX, SPF, DKIM,
    DMARC) is missing, or the address, MX or DKIM key is different."""
    from mailstack.dnsquery import parse_resolver
    from mailstack.verify.dns import as_json, check, table

    server = parse_resolver(resolver) if resolver is not None else None
    report = check(opts(ctx).site(), server)
    typer.echo(as_json(report).rstrip("\n") if json_out else table(report))
    if not report.passed:
        raise typer.Exit(1)


@dns_app.command("push")
def dns_push(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the update messages; send nothing (no key needed).")] = False,
    resolver: Annotated[str | None, typer.Option(help=RESOLVER_HELP)] = None,
) -> None:
    """Publish the records by dynamic update (RFC 2136, TSIG-signed).

    Exactly what `mailstack dns` prints, the PTR aside, signed with the key of
    options.dns_update: one atomic update per zone, sent to the zone's primary (its SOA) or
    options.dns_update.server."""
    from mailstack.deploy.dns import dry_run_text, plan, send
    from mailstack.dnsquery import parse_resolver

    server = parse_resolver(resolver) if resolver is not None else None
    p = plan(opts(ctx).site(), server, signed=not dry_run)
    for note in p.notes:
        typer.secho(f"warning: {note}", err=True, fg=typer.colors.YELLOW)
    if p.skipped:
        typer.secho("not in options.dns_update.zones, publish these yourself:", err=True,
                    fg=typer.colors.YELLOW)
        for r in p.skipped:
            typer.echo(f"  {r.name} {r.type} {r.value}", err=True)
    if dry_run:
        typer.echo(dry_run_text(p))
        return
    for line in send(p):
        typer.echo(line)


@key_app.command("set")
def key_set(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The key's name, as the DNS server knows it.")],
    algorithm: Annotated[str, typer.Option(
        help="hmac-sha256, hmac-sha384 or hmac-sha512.")] = "hmac-sha256",
    server: Annotated[str | None, typer.Option(
        help="The server that takes the updates, HOST[:PORT] (default: each zone's primary, "
             "from its SOA).")] = None,
) -> None:
    """Keep the TSIG key `mailstack dns push` signs with.

    Its secret (base64, as tsig-keygen or `keymgr -t` print it) is read from standard input
    into the vault, never printed; its name, algorithm and server go into
    options.dns_update."""
    from mailstack.site.dns_key import checked_options, set_key

    site = opts(ctx).site()
    _ = site.config  # a broken site is reported before the secret is read
    name, algorithm, server = checked_options(name, algorithm, server)
    secret = _read_secret(name)
    replaced = set_key(site, name, algorithm, secret, server)
    typer.echo(f"the secret of TSIG key {name} ({algorithm}) is in the vault"
               + (" (it replaced the old one)" if replaced else "")
               + "; `mailstack dns push` signs with it", err=True)


@key_app.command("clear")
def key_clear(ctx: typer.Context) -> None:
    """Forget the TSIG key (options.dns_update back to null, the secret out of the vault)."""
    from mailstack.site.dns_key import clear_key

    clear_key(opts(ctx).site())
    typer.echo("the DNS update key is forgotten", err=True)


def _read_secret(name: str) -> str:
    if sys.stdin.isatty():
        return typer.prompt(f"Secret of TSIG key {name}", hide_input=True)
    line = sys.stdin.readline()
    if not line.strip():
        raise MailstackError("standard input was empty: pipe the key's secret in (base64)")
    return line.strip()
