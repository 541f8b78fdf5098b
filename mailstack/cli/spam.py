"""`mailstack spam password`: the spam filter's web interface password."""

from __future__ import annotations

from typing import Annotated

import typer

from mailstack.cli.common import opts, sub_app

spam_app = sub_app("The spam filter (rspamd): its web interface.")


@spam_app.command("password")
def spam_password(
    ctx: typer.Context,
    new: Annotated[bool, typer.Option("--new", help="Make a new password (the old one stops "
                                                   "working at the next deploy).")] = False,
) -> None:
    """Print the password of rspamd's web interface, kept in the vault.

    The interface listens on the host's loopback only: open an SSH tunnel
    (`ssh -L 11334:127.0.0.1:11334 root@HOST`) and browse http://localhost:11334.
    """
    from mailstack.site.spam_ui import set_ui_password, ui_password

    site = opts(ctx).site()
    if new:
        _ = site.config  # a broken site is reported before anything is written
        password = set_ui_password(site)
        typer.echo(password)
        typer.echo("a new password is in the vault; run `mailstack deploy` to apply", err=True)
    else:
        typer.echo(ui_password(site))
