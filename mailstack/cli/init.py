"""`mailstack init`: create a site."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from mailstack.cli.common import opts
from mailstack.errors import ConfigError


def init(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(help="Where to create the site (must be new).")],
    domain: Annotated[str | None, typer.Option(help="The first mail domain, e.g. example.org.")
                      ] = None,
    hostname: Annotated[str | None, typer.Option(
        help="The server's full host name, e.g. mail.example.org.")] = None,
    host: Annotated[str | None, typer.Option(
        help="The address to reach the server over SSH (IP or name).")] = None,
    ssh_user: Annotated[str, typer.Option(help="SSH user (root or a sudoer).")] = "root",
    ssh_port: Annotated[int, typer.Option(help="SSH port.")] = 22,
    ssh_key: Annotated[str | None, typer.Option(help="SSH private key file.")] = None,
    admin_email: Annotated[str | None, typer.Option(
        help="Where delivery problems go.", show_default="postmaster@DOMAIN")] = None,
) -> None:
    """Create a site: mailstack.yml, inventory and freshly generated, vault-encrypted secrets."""
    from mailstack.site.directory import InitOptions, init_site

    missing = [n for n, v in (("--domain", domain), ("--hostname", hostname),
                              ("--host", host)) if not v]
    if missing and sys.stdin.isatty():
        domain = domain or typer.prompt("Mail domain (e.g. example.org)")
        hostname = hostname or typer.prompt("Server host name", default=f"mail.{domain}")
        host = host or typer.prompt("Server address for SSH (IP or name)")
    elif missing:
        raise ConfigError(f"missing {', '.join(missing)} (no terminal to ask on); pass "
                          "them as options")
    assert domain and hostname and host
    wanted = InitOptions(domain, hostname, host, ssh_user, ssh_port, ssh_key, admin_email)
    root = init_site(directory, wanted, vault_password_file=opts(ctx).vault_password_file)
    typer.echo(f"created site {root}")
    typer.echo("  mailstack.yml              desired state (domains, users, aliases, options)")
    typer.echo("  inventories/production/    where it is deployed")
    typer.echo("  secrets/                   vault-encrypted: DB passwords, DKIM keys, passphrase")
    typer.echo("  .vault-password            unlocks the secrets: git-ignored, back it up!")
    typer.echo("next: cd into it, `mailstack user add you@DOMAIN`, `mailstack render`")
