"""`mailstack tls`: the server's TLS key and an imported certificate, kept in the vault."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mailstack.cli.common import opts, sub_app

tls_app = sub_app("The server's TLS key and certificate (options.tls).")


@tls_app.command("import")
def tls_import(
    ctx: typer.Context,
    certificate: Annotated[Path, typer.Argument(
        help="The certificate chain (PEM), the server's certificate first.")],
    key: Annotated[Path, typer.Argument(help="Its private key (PEM, unencrypted).")],
) -> None:
    """Serve your own certificate (options.tls.certificate: files): the chain and its key go
    into the vault, and `mailstack deploy` puts them on the hosts. Import again to renew."""
    from mailstack.site.tls import import_files

    site = opts(ctx).site()
    for warning in import_files(site, certificate, key):
        typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
    typer.echo("imported into secrets/site.yml", err=True)
    if site.config.options.tls.certificate != "files":
        typer.echo("set options.tls.certificate to files in mailstack.yml to serve it; then "
                   "`mailstack deploy`", err=True)
    else:
        typer.echo("run `mailstack deploy` to serve it", err=True)


@tls_app.command("new-key")
def tls_new_key(
    ctx: typer.Context,
    replace: Annotated[bool, typer.Option(
        "--replace", help="Replace the existing key (the published TLSA record must change).")
    ] = False,
) -> None:
    """Make the server's TLS key (sites made before the key lived in the vault), or a new
    one. Prints the TLSA record data for the new key."""
    from mailstack.site.tls import make_new_key

    site = opts(ctx).site()
    _ = site.config  # a broken site is reported before anything is written
    typer.echo(make_new_key(site, replace=replace))
    typer.echo("a new key is in the vault: `mailstack deploy`, then publish the TLSA record "
               "(`mailstack dns`)", err=True)
