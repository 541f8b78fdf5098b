"""`mailstack verify`: prove the hosts work (`mailstack dns check` proves DNS: cli/dns.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from mailstack.cli.common import opts


def verify(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")
                        ] = False,
    host: Annotated[str | None, typer.Option(help="Only this inventory host.")] = None,
    resolver: Annotated[str | None, typer.Option(
        help="The resolver the DNS checks ask, IP[:PORT] (default: this machine's).")] = None,
    dns: Annotated[bool, typer.Option(
        "--dns/--no-dns", help="Also check the site's DNS, as `mailstack dns check` does.")
    ] = True,
) -> None:
    """Prove each host works: ports, TLS, AUTH rules, relay refusal, round trip, DKIM; then
    the DNS: every record published, PTR, TLSA matching the served key, MTA-STS covering
    the MX."""
    from mailstack.dnsquery import parse_resolver
    from mailstack.verify.published import why_skipped
    from mailstack.verify.report import as_json, table
    from mailstack.verify.run import verify as run_verify

    site = opts(ctx).site()
    server = parse_resolver(resolver) if resolver is not None else None
    skipped = why_skipped(site, server) if dns else "DNS not checked (--no-dns)"
    results = run_verify(site, host, dns=skipped is None, resolver=server)
    if skipped:
        typer.secho(f"note: {skipped}", err=True, fg=typer.colors.YELLOW)
    typer.echo(as_json(results) if json_out else table(results))
    if not all(r.passed for r in results):
        raise typer.Exit(1)
