"""`mailstack relay set|clear`: the outgoing relay host (smarthost)."""

from __future__ import annotations

from typing import Annotated

import typer

from mailstack.cli.common import opts, site_and_password, sub_app

relay_app = sub_app("Outgoing relay host (smarthost) and its credentials.")


@relay_app.command("set")
def relay_set(
    ctx: typer.Context,
    host: Annotated[str, typer.Argument(help="e.g. [email-smtp.eu-west-1.amazonaws.com]:587")],
    username: Annotated[str, typer.Argument()],
    password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
) -> None:
    """Send outgoing mail through a relay host; its password goes into the vault."""
    from mailstack.site.relay import set_relay

    site, password = site_and_password(ctx, username, password_stdin)
    set_relay(site, host, username, password)
    typer.echo(f"outgoing mail goes through {host}; run `mailstack deploy` to apply")


@relay_app.command("clear")
def relay_clear(ctx: typer.Context) -> None:
    """Send outgoing mail directly again (and forget the relay password)."""
    from mailstack.site.relay import clear_relay

    clear_relay(opts(ctx).site())
    typer.echo("outgoing mail goes out directly; run `mailstack deploy` to apply")
