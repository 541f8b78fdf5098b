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
) -> None:
    """Prove each host works: ports, TLS, AUTH rules, relay refusal, round trip, DKIM."""
    from mailstack.verify.report import as_json, table
    from mailstack.verify.run import verify as run_verify

    results = run_verify(opts(ctx).site(), host)
    typer.echo(as_json(results) if json_out else table(results))
    if not all(r.passed for r in results):
        raise typer.Exit(1)
