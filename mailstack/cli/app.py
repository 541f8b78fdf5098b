"""The ``mailstack`` command. Thin: parse options, call the modules, map errors to exit codes.

User mistakes raise MailstackError, caught in one place (``_Group.invoke``) and printed as
one clear message; a traceback appears only with ``--debug``. One module per command group
sits beside this one; the work itself happens in mailstack.site/render/deploy/verify.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from mailstack import __version__
from mailstack.cli import (
    accounts,
    backup,
    build,
    dns,
    groupware,
    init,
    probe,
    relay,
    sandbox,
    spam,
    storage,
    tls,
)
from mailstack.cli.common import CONTEXT, Options
from mailstack.errors import MailstackError

DEBUG_ENV = "MAILSTACK_DEBUG"


class _Group(TyperGroup):
    def invoke(self, ctx: typer.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except MailstackError as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            # The machine said no (a read-only directory, a full disk, a path that is a file):
            # not a bug to show a traceback for, and nothing was half-written (files.py).
            if os.environ.get(DEBUG_ENV):
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            typer.secho(f"error: {where}{exc.strerror or exc}; nothing was changed", err=True,
                        fg=typer.colors.RED)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Group, context_settings=CONTEXT, no_args_is_help=True, rich_markup_mode="rich",
    help="Turn a fresh Debian host into a complete, secure mail server, and keep it that way.",
    pretty_exceptions_enable=False,
)
# In the order `mailstack --help` lists them: the site, its files, the hosts, day 2.
for command in (init.init, build.render, build.deploy, probe.verify, storage.unlock,
                storage.lock, storage.status, storage.unban, backup.restore):
    app.command()(command)
app.add_typer(dns.dns_app, name="dns")
app.add_typer(accounts.user_app, name="user")
app.add_typer(accounts.alias_app, name="alias")
app.add_typer(accounts.domain_app, name="domain")
app.add_typer(relay.relay_app, name="relay")
app.add_typer(spam.spam_app, name="spam")
app.add_typer(groupware.groupware_app, name="groupware")
app.add_typer(tls.tls_app, name="tls")
app.add_typer(backup.backup_app, name="backup")
app.add_typer(sandbox.sandbox_app, name="sandbox")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mailstack {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    site_dir: Annotated[Path, typer.Option(
        "--site", "-C", envvar="MAILSTACK_SITE", help="The site directory.",
        show_default="current directory")] = Path("."),
    vault_password_file: Annotated[Path | None, typer.Option(
        help="Vault password file (default: ANSIBLE_VAULT_PASSWORD_FILE, then the site's "
             ".vault-password).")] = None,
    inventory: Annotated[str, typer.Option(
        help="Inventory environment under inventories/.")] = "production",
    debug: Annotated[bool, typer.Option(
        "--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"
    ctx.obj = Options(site_dir, vault_password_file, inventory)



def main() -> None:
    app()
