"""The ``mailstack`` command. Thin: parse options, call the modules, map errors to exit codes.

User mistakes raise MailstackError, caught in one place (``_Group.invoke``) and printed as
one clear message; a traceback appears only with ``--debug``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from . import __version__
from .errors import EXIT_INVALID_CONFIG, MailstackError

DEBUG_ENV = "MAILSTACK_DEBUG"


class _Group(TyperGroup):
    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except MailstackError as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
            raise typer.Exit(exc.exit_code) from None


CONTEXT = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    cls=_Group, context_settings=CONTEXT, no_args_is_help=True, rich_markup_mode="rich",
    help="Turn a fresh Debian host into a complete, secure mail server, and keep it that way.",
    pretty_exceptions_enable=False,
)
user_app = typer.Typer(context_settings=CONTEXT, no_args_is_help=True,
                       help="Mailboxes: add, remove, list, change passwords.")
alias_app = typer.Typer(context_settings=CONTEXT, no_args_is_help=True,
                        help="Aliases: addresses that forward to other addresses.")
domain_app = typer.Typer(context_settings=CONTEXT, no_args_is_help=True,
                         help="Mail domains served by the site (each gets a DKIM key).")
relay_app = typer.Typer(context_settings=CONTEXT, no_args_is_help=True,
                        help="Outgoing relay host (smarthost) and its credentials.")
sandbox_app = typer.Typer(context_settings=CONTEXT, no_args_is_help=True,
                          help="A local Debian host (systemd container) to try mailstack on.")
app.add_typer(user_app, name="user")
app.add_typer(alias_app, name="alias")
app.add_typer(domain_app, name="domain")
app.add_typer(relay_app, name="relay")
app.add_typer(sandbox_app, name="sandbox")


@dataclass
class Options:
    site_dir: Path
    vault_password_file: Path | None
    inventory: str

    def site(self):
        from .site import Site

        return Site(self.site_dir, vault_password_file=self.vault_password_file,
                    inventory=self.inventory)


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


def _opts(ctx: typer.Context) -> Options:
    return ctx.find_root().obj


ENCFS_WARNING = (
    "warning: options.storage.encryption is encfs. EncFS has known weaknesses (a 2014 audit: "
    "an attacker who sees several versions of the encrypted files can learn about their "
    "content, and file sizes and structure leak). Prefer gocryptfs unless you need EncFS."
)


def _warn_storage(site) -> None:
    if site.config.options.storage.encryption == "encfs":
        typer.secho(ENCFS_WARNING, err=True, fg=typer.colors.YELLOW)


def _read_password(address: str, from_stdin: bool) -> str:
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


# --- init --------------------------------------------------------------------------------


@app.command()
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
    from .site import InitOptions, init_site

    missing = [n for n, v in (("--domain", domain), ("--hostname", hostname),
                              ("--host", host)) if not v]
    if missing and sys.stdin.isatty():
        domain = domain or typer.prompt("Mail domain (e.g. example.org)")
        hostname = hostname or typer.prompt("Server host name", default=f"mail.{domain}")
        host = host or typer.prompt("Server address for SSH (IP or name)")
    elif missing:
        typer.secho(f"error: missing {', '.join(missing)} (no terminal to ask on)", err=True,
                    fg=typer.colors.RED)
        raise typer.Exit(EXIT_INVALID_CONFIG)
    assert domain and hostname and host
    opts = InitOptions(domain, hostname, host, ssh_user, ssh_port, ssh_key, admin_email)
    root = init_site(directory, opts, vault_password_file=_opts(ctx).vault_password_file)
    typer.echo(f"created site {root}")
    typer.echo("  mailstack.yml              desired state (domains, users, aliases, options)")
    typer.echo("  inventories/production/    where it is deployed")
    typer.echo("  secrets/                   vault-encrypted: DB passwords, DKIM keys, passphrase")
    typer.echo("  .vault-password            unlocks the secrets: git-ignored, back it up!")
    typer.echo("next: cd into it, `mailstack user add you@DOMAIN`, `mailstack render`")


# --- render ------------------------------------------------------------------------------


@app.command()
def render(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="Output directory.",
                                             show_default="SITE/build")] = None,
    host: Annotated[str | None, typer.Option(help="Render only this inventory host.")] = None,
) -> None:
    """Render every config file for every host, exactly as it will land (build/HOST/etc/…)."""
    from .render import render_site, write_tree

    site = _opts(ctx).site()
    _warn_storage(site)
    out = out or site.root / "build"
    for name, files in render_site(site, host).items():
        write_tree(files, out / name)
        secret = sum(f.secret for f in files)
        typer.echo(f"{name}: {len(files)} files in {out / name} ({secret} holding secrets, "
                   "mode 0600)")


# --- deploy, verify, dns ---------------------------------------------------------------


@app.command()
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
    from .deploy import Progress
    from .deploy import deploy as run_deploy

    site = _opts(ctx).site()
    _warn_storage(site)
    progress = Progress()
    result = run_deploy(
        site, check=check, limit=limit, tags=tags, progress=progress,
        on_rendered=lambda n: progress.line(f"rendered {n} files into {site.root / 'build'}"),
    )
    for host, task, diff in result.diffs:
        typer.echo(f"--- {host}: {task}")
        typer.echo(diff.rstrip())
    typer.echo(f"{'check' if check else 'deploy'} finished in {result.elapsed:.0f} s")
    for host, st in sorted(result.hosts.items()):
        typer.echo(f"  {host}: ok={st.ok} changed={st.changed} failed={st.failed} "
                   f"unreachable={st.unreachable} skipped={st.skipped}")
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


@app.command()
def verify(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")
                        ] = False,
    host: Annotated[str | None, typer.Option(help="Only this inventory host.")] = None,
) -> None:
    """Prove each host works: ports, TLS, AUTH rules, relay refusal, round trip, DKIM."""
    from .verify import as_json, table
    from .verify import verify as run_verify

    results = run_verify(_opts(ctx).site(), host)
    typer.echo(as_json(results) if json_out else table(results))
    if not all(r.passed for r in results):
        raise typer.Exit(1)


@app.command()
def dns(
    ctx: typer.Context,
    format: Annotated[str, typer.Option(
        "--format", help="zone (for a zone file or to read) or json (for APIs).")] = "zone",
) -> None:
    """The DNS records the site needs: A, MX, SPF, DKIM, DMARC, and the PTR to ask for."""
    from .dns import as_json, records, zone
    from .inventory import load_hosts

    if format not in ("zone", "json"):
        raise MailstackError(f"--format {format!r}: choose zone or json")
    site = _opts(ctx).site()
    recs = records(site.config, site.secrets.dkim, load_hosts(site.root, site.inventory))
    typer.echo((zone(recs) if format == "zone" else as_json(recs)).rstrip("\n"))


# --- encrypted storage -----------------------------------------------------------------


@app.command()
def unlock(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Argument(help="Only this host (default: all).")] = None,
    passphrase_stdin: Annotated[bool, typer.Option(
        "--passphrase-stdin", help="Read the passphrase from stdin instead of the secrets.")
    ] = False,
) -> None:
    """Unlock the encrypted mail store after a reboot: mount it, start Dovecot, deliver the
    mail that waited in the queue."""
    from .storage import unlock as run_unlock

    site = _opts(ctx).site()
    secret = None
    if passphrase_stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
        if not secret:
            raise MailstackError("--passphrase-stdin: standard input was empty")
    for r in run_unlock(site, host, secret):
        d = r.data
        state = "was already unlocked" if d.get("already_unlocked") else "unlocked"
        typer.echo(f"{r.host}: {state}; delivered {d.get('delivered', 0)} queued message(s)"
                   f"{_still(d)}")


def _still(data: dict) -> str:
    return f", {data['still_queued']} still queued" if data.get("still_queued") else ""


@app.command()
def status(ctx: typer.Context) -> None:
    """Per host: store locked/unlocked, services, queue size."""
    from .storage import status as run_status

    for r in run_status(_opts(ctx).site()):
        store = r.data["storage"]
        lock = ("LOCKED (run `mailstack unlock`)" if store["locked"] else
                "unlocked" if store["encryption"] != "none" else "not encrypted")
        services = ", ".join(f"{k} {v}" for k, v in r.data["services"].items())
        typer.echo(f"{r.host}: storage {store['encryption']} {lock}; queue {r.data['queue']}; "
                   f"{services}")


# --- users -------------------------------------------------------------------------------


@user_app.command("add")
def user_add(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument(help="The mailbox address, e.g. alice@example.org.")],
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the password from standard input.")] = False,
    quota: Annotated[str, typer.Option(help="Mailbox size limit, e.g. 2G (0 = none).")] = "0",
) -> None:
    """Add a mailbox. Prompts twice for the password (or reads it from stdin)."""
    from .accounts import add_user

    site = _opts(ctx).site()
    _ = site.config  # validate the site before asking for a password
    password = _read_password(address, password_stdin)
    added = add_user(site, address, password, 0 if quota in ("0", "") else quota)
    typer.echo(f"added user {added}; run `mailstack deploy` to apply")


@user_app.command("remove")
def user_remove(ctx: typer.Context, address: Annotated[str, typer.Argument()]) -> None:
    """Remove a mailbox from the desired state (its mail on the server is kept)."""
    from .accounts import remove_user

    removed = remove_user(_opts(ctx).site(), address)
    typer.echo(f"removed user {removed}; run `mailstack deploy` to apply")


@user_app.command("passwd")
def user_passwd(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument()],
    password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
) -> None:
    """Change a mailbox password."""
    from .accounts import set_password

    site = _opts(ctx).site()
    _ = site.config  # validate the site before asking for a password
    password = _read_password(address, password_stdin)
    set_password(site, address, password)
    typer.echo(f"changed the password of {address}; run `mailstack deploy` to apply")


@user_app.command("list")
def user_list(ctx: typer.Context) -> None:
    """List mailboxes with their quotas and the aliases delivering to them."""
    from .accounts import list_users

    rows = list_users(_opts(ctx).site())
    if not rows:
        typer.echo("no users yet: mailstack user add NAME@DOMAIN")
        return
    width = max(len(r.address) for r in rows)
    typer.echo(f"{'ADDRESS':<{width}}  {'QUOTA':>8}  ALIASES")
    for r in rows:
        quota = _human(r.quota) if r.quota else "-"
        flag = "" if r.has_password else "  (no password set!)"
        typer.echo(f"{r.address:<{width}}  {quota:>8}  {', '.join(r.aliases) or '-'}{flag}")


def _human(size: int) -> str:
    for unit, factor in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


# --- aliases -----------------------------------------------------------------------------


@alias_app.command("add")
def alias_add(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="The alias address.")],
    destinations: Annotated[list[str], typer.Argument(help="Where its mail goes.")],
) -> None:
    """Add an alias (or more destinations to an existing one)."""
    from .accounts import add_alias

    src, dests = add_alias(_opts(ctx).site(), source, destinations)
    typer.echo(f"alias {src} -> {', '.join(dests)}; run `mailstack deploy` to apply")


@alias_app.command("remove")
def alias_remove(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument()],
    destination: Annotated[str | None, typer.Argument(
        help="Remove only this destination.")] = None,
) -> None:
    """Remove an alias (or one of its destinations)."""
    from .accounts import remove_alias

    removed = remove_alias(_opts(ctx).site(), source, destination)
    typer.echo(f"removed alias {removed}; run `mailstack deploy` to apply")


@alias_app.command("list")
def alias_list(ctx: typer.Context) -> None:
    """List aliases."""
    from .accounts import list_aliases

    aliases = list_aliases(_opts(ctx).site())
    if not aliases:
        typer.echo("no aliases yet: mailstack alias add SOURCE DESTINATION")
    for source, dests in aliases.items():
        typer.echo(f"{source} -> {', '.join(dests)}")


# --- domains -----------------------------------------------------------------------------


@domain_app.command("add")
def domain_add(ctx: typer.Context, domain: Annotated[str, typer.Argument()]) -> None:
    """Declare a mail domain and generate its DKIM key."""
    from .accounts import add_domain

    added = add_domain(_opts(ctx).site(), domain)
    typer.echo(f"added domain {added} with a new DKIM key; publish its DNS records, then "
               "`mailstack deploy`")


@domain_app.command("remove")
def domain_remove(ctx: typer.Context, domain: Annotated[str, typer.Argument()]) -> None:
    """Remove a domain that has no users or aliases left."""
    from .accounts import remove_domain

    removed = remove_domain(_opts(ctx).site(), domain)
    typer.echo(f"removed domain {removed} (its DKIM key stays in secrets in case it returns)")


@domain_app.command("list")
def domain_list(ctx: typer.Context) -> None:
    """List domains with their user and alias counts and DKIM selector."""
    from .accounts import list_domains

    rows = list_domains(_opts(ctx).site())
    width = max(len(r[0]) for r in rows)
    typer.echo(f"{'DOMAIN':<{width}}  USERS  ALIASES  DKIM")
    for domain, users, aliases, selector in rows:
        typer.echo(f"{domain:<{width}}  {users:>5}  {aliases:>7}  {selector}")


# --- relay -------------------------------------------------------------------------------


@relay_app.command("set")
def relay_set(
    ctx: typer.Context,
    host: Annotated[str, typer.Argument(help="e.g. [email-smtp.eu-west-1.amazonaws.com]:587")],
    username: Annotated[str, typer.Argument()],
    password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
) -> None:
    """Send outgoing mail through a relay host; its password goes into the vault."""
    from .relay import set_relay

    site = _opts(ctx).site()
    _ = site.config  # validate the site before asking for a password
    password = _read_password(username, password_stdin)
    set_relay(site, host, username, password)
    typer.echo(f"outgoing mail goes through {host}; run `mailstack deploy` to apply")


@relay_app.command("clear")
def relay_clear(ctx: typer.Context) -> None:
    """Send outgoing mail directly again (and forget the relay password)."""
    from .relay import clear_relay

    clear_relay(_opts(ctx).site())
    typer.echo("outgoing mail goes out directly; run `mailstack deploy` to apply")


# --- sandbox -----------------------------------------------------------------------------


@sandbox_app.command("up")
def sandbox_up(
    directory: Annotated[Path, typer.Argument(help="The site to create for the sandbox.")
                         ] = Path("sandbox"),
) -> None:
    """Start a local Debian host (systemd container with SSH) and a site pointing at it."""
    from .sandbox_site import sandbox_site_up

    info, created = sandbox_site_up(directory)
    typer.echo(f"sandbox host {info.hostname} is up at {info.ip} (container {info.container})")
    typer.echo(f"site {directory}: {'created' if created else 'inventory updated'}")


@sandbox_app.command("down")
def sandbox_down() -> None:
    """Remove the sandbox host (the site directory is kept)."""
    from .sandbox import sandbox_down as down
    from .testbed import TestbedError

    try:
        removed = down()
    except TestbedError as exc:
        raise MailstackError(f"sandbox host: {exc}") from None
    typer.echo("sandbox removed" if removed else "no sandbox was running")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
