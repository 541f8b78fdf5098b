"""`mailstack groupware secret`: SOGo's database password (options.groupware)."""

from __future__ import annotations

import typer

from mailstack.cli.common import opts, sub_app

groupware_app = sub_app("The groupware (SOGo: webmail, calendars, ActiveSync).")


@groupware_app.command("secret")
def groupware_secret(ctx: typer.Context) -> None:
    """Add SOGo's database password to the vault, for a site made before options.groupware
    existed (new sites have it). An existing password is kept."""
    from mailstack.site.groupware import add_db_password

    site = opts(ctx).site()
    _ = site.config  # a broken site is reported before anything is written
    if add_db_password(site):
        typer.echo("SOGo's database password is in the vault; run `mailstack deploy` to apply",
                   err=True)
    else:
        typer.echo("the vault already holds SOGo's database password; nothing changed",
                   err=True)
