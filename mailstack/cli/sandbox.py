"""`mailstack sandbox up|down`: a local Debian host to try mailstack on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mailstack.cli.common import sub_app

sandbox_app = sub_app("A local Debian host (systemd container) to try mailstack on.")


@sandbox_app.command("up")
def sandbox_up(
    directory: Annotated[Path, typer.Argument(help="The site to create for the sandbox.")
                         ] = Path("sandbox"),
) -> None:
    """Start a local Debian host (systemd container with SSH) and a site pointing at it."""
    from mailstack.sandbox.site import sandbox_site_up

    info, created = sandbox_site_up(directory)
    typer.echo(f"sandbox host {info.hostname} is up at {info.ip} (container {info.container})")
    typer.echo(f"site {directory}: {'created' if created else 'inventory updated'}")


@sandbox_app.command("down")
def sandbox_down() -> None:
    """Remove the sandbox host (the site directory is kept)."""
    from mailstack.sandbox.host import sandbox_down as down

    removed = down()
    typer.echo("sandbox removed" if removed else "no sandbox was running")
