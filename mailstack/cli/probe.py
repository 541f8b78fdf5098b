"""`mailstack verify` and `mailstack dns`: prove the hosts work; the records DNS needs."""

from __future__ import annotations

from typing import Annotated

import typer

from mailstack.cli.common import opts
from mailstack.errors import MailstackError


def verify(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")
                        ] = False,
    host: Annotated[str | None, typer.Option(help="Only this inventory host.")] = None,
) -> None:
    """Prove each host works: ports, TLS, AUTH rules, relay refusal, round trip, DKIM."""
    from mailstack.verify.report import as_json, table
    from mailstack.verify.run import verify as run_verify

    results = run_verify(opts(ctx).site(), host)
    typer.echo(as_json(results) if json_out else table(results))
    if not all(r.passed for r in results):
        raise typer.Exit(1)


def dns(
    ctx: typer.Context,
    format: Annotated[str, typer.Option(
        "--format", help="zone (for a zone file or to read) or json (for APIs).")] = "zone",
) -> None:
    """The DNS records the site needs: address, DANE, MX, SPF, DKIM, DMARC, MTA-STS,
    TLS-RPT, the web names and the mail clients' SRV records, and the PTR to ask for."""
    from mailstack.render.dns import as_json, site_records, zone

    if format not in ("zone", "json"):
        raise MailstackError(f"--format {format!r}: choose zone or json")
    recs, notes = site_records(opts(ctx).site())
    for note in notes:
        typer.secho(f"warning: {note}", err=True, fg=typer.colors.YELLOW)
    typer.echo((zone(recs, notes) if format == "zone" else as_json(recs)).rstrip("\n"))
