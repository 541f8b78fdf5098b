"""`mailstack backup init|now|list|check` and `mailstack restore`."""

from __future__ import annotations

import signal
import sys
import time
from typing import Annotated

import typer

from mailstack.cli.common import opts

backup_app = typer.Typer(no_args_is_help=True, help="Encrypted backups with borg (options.backup).")

HostArg = Annotated[str | None, typer.Argument(help="Only this host (default: all).")]


def _size(value: object) -> str:
    if not isinstance(value, int):
        return "?"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"


@backup_app.command("init")
def init(
    ctx: typer.Context,
    rescan: Annotated[bool, typer.Option(
        "--rescan", help="Read the target's host keys again (after it changed them).")] = False,
) -> None:
    """Make the repository's passphrase and the host's SSH key (once, into the vault), pin
    the target's host keys, and print the line for the target's authorized_keys."""
    from mailstack.deploy.backup import init as run_init

    site = opts(ctx).site()
    result = run_init(site, rescan=rescan)
    typer.echo("made the repository's passphrase and the SSH key (in the vault); commit the "
               "site" if result.made else "the vault already holds the passphrase and the "
               "SSH key (never made again)")
    if result.scanned_from:
        typer.echo(f"pinned the target's host keys as {result.scanned_from} sees them; "
                   "compare them with the target's own (ssh-keygen -lf /etc/ssh/ssh_host_*.pub):")
    else:
        typer.echo("the target's pinned host keys (`--rescan` reads them again):")
    for line in result.fingerprints:
        typer.echo(f"  {line}")
    typer.echo("Add this line to ~/.ssh/authorized_keys of the target's user (it may run "
               "`borg serve` on the repository and nothing else):")
    typer.echo(result.authorized_keys)
    typer.echo("Then: `mailstack deploy` and `mailstack backup now`.")


@backup_app.command("now")
def now(
    ctx: typer.Context,
    host: HostArg = None,
    allow_dirty: Annotated[bool, typer.Option(
        "--allow-dirty", help="Run although the site has uncommitted changes.")] = False,
) -> None:
    """Run a backup now (what the timer runs): one archive, then prune and compact."""
    from mailstack.deploy.backup import now as run_now

    site = opts(ctx).site()
    started = time.monotonic()
    for r in run_now(site, host, allow_dirty=allow_dirty):
        d = r.data
        typer.echo(f"{r.host}: archive {d['archive']}: {d.get('files')} files, "
                   f"{_size(d.get('original_size'))} read, {_size(d.get('compressed_size'))} "
                   f"compressed, {_size(d.get('deduplicated_size'))} new in the repository, "
                   f"in {d.get('seconds')} s"
                   + (" (the repository was made)" if d.get("repository_created") else "")
                   + (" (with warnings: a file changed while it was read)" if d.get("warnings")
                      else ""))
    typer.echo(f"backup finished in {time.monotonic() - started:.0f} s")


@backup_app.command("list")
def list_(ctx: typer.Context, host: HostArg = None) -> None:
    """The archives in the repository, oldest first."""
    from mailstack.deploy.backup import archives

    for r in archives(opts(ctx).site(), host):
        for a in r.data["archives"]:
            typer.echo(f"{a['name']}  {a.get('time', '')}")
        if not r.data["archives"]:
            typer.echo(f"{r.host}: no archives yet (`mailstack backup now`)")


@backup_app.command("check")
def check(
    ctx: typer.Context,
    host: HostArg = None,
    verify_data: Annotated[bool, typer.Option(
        "--verify-data", help="Read back and verify every chunk (slow: reads it all).")] = False,
) -> None:
    """borg check of the repository (the timer runs it on options.backup.check_schedule)."""
    from mailstack.deploy.backup import check as run_check

    for r in run_check(opts(ctx).site(), host, verify_data=verify_data):
        typer.echo(f"{r.host}: the repository is consistent"
                   + (" and every chunk verified" if r.data.get("verified_data") else ""))


def restore(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(
        "--host", help="The new host's address (a fresh Debian 12 reached over SSH).")],
    archive: Annotated[str, typer.Option(
        help="The archive (`mailstack backup list`).")] = "latest",
) -> None:
    """Restore the site onto a new host (the old one is gone): deploy it there with the store
    from a backup, unlock, and deliver the mail that waited meanwhile. Only the inventory's
    address changes; DNS needs the new A record."""
    from mailstack.cli.build import show_result
    from mailstack.cli.progress import Progress
    from mailstack.deploy.backup import restore as run_restore
    from mailstack.deploy.runner import deploy as run_deploy

    site = opts(ctx).site()
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))

    def deploy(site, tags=None):
        result = run_deploy(site, tags=tags, progress=Progress())
        show_result(result)

    result = run_restore(site, host, archive=None if archive == "latest" else archive,
                         deploy=deploy, say=typer.echo)
    u = result.unlocked
    typer.echo(f"{result.host}: restored archive {result.archive} ({_size(result.staged_bytes)}) "
               f"onto {result.address}; delivered {u.get('delivered', 0)} message(s) that "
               "waited")
    for what, seconds in result.steps:
        typer.echo(f"  {seconds:6.0f} s  {what}")
    typer.echo(f"recovery time: {result.seconds:.0f} s. Point the A record of "
               f"{site.config.hostname} at {result.address}, and commit the site.")
