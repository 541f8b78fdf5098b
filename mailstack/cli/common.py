"""What the command modules share: the global options, the site they name, and the few
prompts and warnings several commands print."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import typer

from mailstack.errors import MailstackError

CONTEXT = {"help_option_names": ["-h", "--help"]}


def sub_app(help: str) -> typer.Typer:
    """A command group (user, alias, …) with the app's help options."""
    return typer.Typer(context_settings=CONTEXT, no_args_is_help=True, help=help)


@dataclass
class Options:
    site_dir: Path
    vault_password_file: Path | None
    inventory: str

    def site(self):  # -> Site (imported lazily: the CLI starts fast)
        from mailstack.site.directory import Site
        from mailstack.site.migrate import migrate_and_tell

        site = Site(self.site_dir, vault_password_file=self.vault_password_file,
                    inventory=self.inventory)
        migrate_and_tell(site)  # a site from an older mailstack, brought up to this one
        return site


def site_and_password(ctx: typer.Context, for_whom: str, from_stdin: bool):
    """The site, validated before the user is asked for a password, and that password."""
    site = opts(ctx).site()
    _ = site.config
    return site, read_password(for_whom, from_stdin)


def opts(ctx: typer.Context) -> Options:
    """The global options, set by the root callback."""
    return ctx.find_root().obj


ENCFS_WARNING = (
    "warning: options.storage.encryption is encfs. EncFS has known weaknesses (a 2014 audit: "
    "an attacker who sees several versions of the encrypted files can learn about their "
    "content, and file sizes and structure leak). Prefer gocryptfs unless you need EncFS."
)


def warn_storage(site) -> None:
    if site.config.options.storage.encryption == "encfs":
        typer.secho(ENCFS_WARNING, err=True, fg=typer.colors.YELLOW)


def read_password(address: str, from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise MailstackError("--password-stdin: standard input was empty")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise MailstackError(
            "no terminal to prompt for the password on; pipe it in with --password-stdin"
        )
    return typer.prompt(f"Password for {address}", hide_input=True, confirmation_prompt=True)



def human_size(size: int) -> str:
    for unit, factor in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)

