"""`mailstack render` and `mailstack deploy`: the site's files, and the hosts converged to them."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mailstack.cli.common import opts, warn_storage
from mailstack.errors import MailstackError


def render(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="Output directory.",
                                             show_default="SITE/build")] = None,
    host: Annotated[str | None, typer.Option(help="Render only this inventory host.")] = None,
) -> None:
    """Render every config file for every host, exactly as it will land (build/HOST/etc/…)."""
    from mailstack.render.renderer import render_site, write_tree

    site = opts(ctx).site()
    warn_storage(site)
    default = site.root / "build"
    out = out or default
    if out.exists() and not out.is_dir():
        raise MailstackError(f"--out {out} is a file; give a directory to render into")
    # The files hold DB passwords and DKIM keys in clear: build/ is the owner's only (a
    # directory of the user's own choosing keeps its mode; each host's tree is 0700 anyway).
    rendered = render_site(site, host)  # everything checked before anything is written
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    if out == default:
        out.chmod(0o700)
    for name, files in rendered.items():
        write_tree(files, out / name)
        secret = sum(f.secret for f in files)
        typer.echo(f"{name}: {len(files)} files in {out / name} ({secret} holding secrets, "
                   "mode 0600)")


def deploy(
    ctx: typer.Context,
    check: Annotated[bool, typer.Option(
        "--check", help="Show what would change (with diffs) without changing anything.")
    ] = False,
    limit: Annotated[str | None, typer.Option(help="Only this inventory host.")] = None,
    tags: Annotated[str | None, typer.Option(
        help="Only these parts, e.g. accounts (fast user/alias sync).")] = None,
) -> None:
    """Render, then converge every host over SSH (Ansible), with live progress."""
    from mailstack.cli.progress import Progress
    from mailstack.deploy.runner import deploy as run_deploy

    site = opts(ctx).site()
    warn_storage(site)
    # A plain `kill` must not leave the rendered secrets and the runner's files behind: turn
    # it into an exit, so every cleanup on the way out runs.
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))
    progress = Progress()
    result = run_deploy(
        site, check=check, limit=limit, tags=tags, progress=progress,
        on_rendered=lambda n: progress.line(f"rendered {n} files (kept for this run only; "
                                            "`mailstack render` shows them)"),
    )
    show_result(result, check=check)


def show_result(result: Any, *, check: bool = False) -> None:
    """What a deploy did, host by host; a MailstackError when it failed."""
    for key in result.new_host_keys:
        typer.echo(f"first contact: trusted the host key {key}; compare it with your "
                   "provider's console (later changes are refused)")
    for host, task, diff in result.diffs:
        typer.echo(f"--- {host}: {task}")
        typer.echo(diff.rstrip())
    for host, warning in result.warnings:
        typer.secho(f"warning: {host}: {warning}", err=True, fg=typer.colors.YELLOW)
    typer.echo(f"{'check' if check else 'deploy'} finished in {result.elapsed:.0f} s")
    for host, st in sorted(result.hosts.items()):
        typer.echo(f"  {host}: ok={st.ok} changed={st.changed} failed={st.failed} "
                   f"unreachable={st.unreachable} skipped={st.skipped}")
        # What changed, task by task (files placed, services reloaded): after an upgrade of
        # mailstack, this is what the new version did to the server.
        for change in result.changed_on(host):
            typer.echo(f"    {'would change' if check else 'changed'}: {change.line()}")
    if not result.ok:
        details = [f"{host or 'ansible'}: {task}: {why}" if task else f"{host}: {why}"
                   for host, task, why in result.failures]
        raise MailstackError("deploy failed:", details=details)
    if check:
        typer.echo(f"{result.changed} change(s) would be made" if result.changed
                   else "no changes needed")
    else:
        typer.echo(f"{result.changed} change(s) made" if result.changed
                   else "no changes: the hosts already match the site")
