"""`mailstack user|alias|domain …`: day-2 edits of the desired state."""

from __future__ import annotations

from typing import Annotated

import typer

from mailstack.cli.common import human_size, opts, site_and_password, sub_app

user_app = sub_app("Mailboxes: add, remove, list, change passwords.")
alias_app = sub_app("Aliases: addresses that forward to other addresses.")
domain_app = sub_app("Mail domains served by the site (each gets a DKIM key).")


@user_app.command("add")
def user_add(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument(help="The mailbox address, e.g. alice@example.org.")],
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the password from standard input.")] = False,
    quota: Annotated[str, typer.Option(help="Mailbox size limit, e.g. 2G (0 = none).")] = "0",
) -> None:
    """Add a mailbox. Prompts twice for the password (or reads it from stdin)."""
    from mailstack.site.accounts import add_user

    site, password = site_and_password(ctx, address, password_stdin)
    added = add_user(site, address, password, 0 if quota in ("0", "") else quota)
    typer.echo(f"added user {added.address}; run `mailstack deploy` to apply")
    if added.postmaster_alias:
        typer.echo(f"  and the alias {added.postmaster_alias} -> {added.address}: every domain "
                   "needs a postmaster (change it with `mailstack alias`)")


@user_app.command("remove")
def user_remove(ctx: typer.Context, address: Annotated[str, typer.Argument()]) -> None:
    """Remove a mailbox from the desired state (its mail on the server is kept)."""
    from mailstack.site.accounts import remove_user

    removed = remove_user(opts(ctx).site(), address)
    typer.echo(f"removed user {removed}; run `mailstack deploy` to apply")


@user_app.command("passwd")
def user_passwd(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument()],
    password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
) -> None:
    """Change a mailbox password."""
    from mailstack.site.accounts import set_password

    site, password = site_and_password(ctx, address, password_stdin)
    set_password(site, address, password)
    typer.echo(f"changed the password of {address}; run `mailstack deploy` to apply")


@user_app.command("list")
def user_list(ctx: typer.Context) -> None:
    """List mailboxes with their quotas and the aliases delivering to them."""
    from mailstack.site.accounts import list_users

    rows = list_users(opts(ctx).site())
    if not rows:
        typer.echo("no users yet: mailstack user add NAME@DOMAIN")
        return
    width = max(len(r.address) for r in rows)
    typer.echo(f"{'ADDRESS':<{width}}  {'QUOTA':>8}  ALIASES")
    for r in rows:
        quota = human_size(r.quota) if r.quota else "-"
        flag = "" if r.has_password else "  (no password set!)"
        typer.echo(f"{r.address:<{width}}  {quota:>8}  {', '.join(r.aliases) or '-'}{flag}")



@user_app.command("profile")
def user_profile(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument()],
    with_password: Annotated[bool, typer.Option(
        "--with-password", help="Put the password in the profile (asked, or --password-stdin); "
                                "it must be the mailbox's.")] = False,
    password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
    protocol: Annotated[str | None, typer.Option(
        "--protocol", metavar="activesync|imap",
        help="activesync (the default with options.groupware: mail, calendars and contacts "
             "with push) or imap (IMAP and submission; with the groupware also CalDAV and "
             "CardDAV).")] = None,
) -> None:
    """Print an Apple configuration profile for a mailbox (iPhone, iPad, Mac):
    `mailstack user profile alice@example.org > alice.mobileconfig`. No password inside
    unless --with-password: the phone asks for it."""
    import sys

    from mailstack.render.profile import choose_protocol, mobileconfig
    from mailstack.site.names import normalize_address

    site = opts(ctx).site()
    protocol = choose_protocol(site, protocol)
    password = None
    if with_password or password_stdin:
        site, password = site_and_password(ctx, address, password_stdin)
    data = mobileconfig(site, normalize_address(address), password, protocol)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


# --- aliases -----------------------------------------------------------------------------


@alias_app.command("add")
def alias_add(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="The alias address.")],
    destinations: Annotated[list[str], typer.Argument(help="Where its mail goes.")],
) -> None:
    """Add an alias (or more destinations to an existing one)."""
    from mailstack.site.accounts import add_alias

    src, dests = add_alias(opts(ctx).site(), source, destinations)
    typer.echo(f"alias {src} -> {', '.join(dests)}; run `mailstack deploy` to apply")


@alias_app.command("remove")
def alias_remove(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument()],
    destination: Annotated[str | None, typer.Argument(
        help="Remove only this destination.")] = None,
) -> None:
    """Remove an alias (or one of its destinations)."""
    from mailstack.site.accounts import remove_alias

    removed = remove_alias(opts(ctx).site(), source, destination)
    typer.echo(f"removed alias {removed}; run `mailstack deploy` to apply")


@alias_app.command("list")
def alias_list(ctx: typer.Context) -> None:
    """List aliases."""
    from mailstack.site.accounts import list_aliases

    aliases = list_aliases(opts(ctx).site())
    if not aliases:
        typer.echo("no aliases yet: mailstack alias add SOURCE DESTINATION")
    for source, dests in aliases.items():
        typer.echo(f"{source} -> {', '.join(dests)}")


# --- domains -----------------------------------------------------------------------------


@domain_app.command("add")
def domain_add(ctx: typer.Context, domain: Annotated[str, typer.Argument()]) -> None:
    """Declare a mail domain and generate its DKIM key."""
    from mailstack.site.accounts import add_domain

    added = add_domain(opts(ctx).site(), domain)
    typer.echo(f"added domain {added.domain} with a new DKIM key; publish its DNS records "
               "(`mailstack dns`), then `mailstack deploy`")
    if added.postmaster_alias:
        typer.echo(f"  and the alias {added.postmaster_alias}: every domain needs a postmaster")
    else:
        typer.echo(f"  its first user becomes postmaster@{added.domain} (every domain needs one)")


@domain_app.command("remove")
def domain_remove(ctx: typer.Context, domain: Annotated[str, typer.Argument()]) -> None:
    """Remove a domain that has no users or aliases left."""
    from mailstack.site.accounts import remove_domain

    removed = remove_domain(opts(ctx).site(), domain)
    typer.echo(f"removed domain {removed} (its DKIM key stays in secrets in case it returns)")


@domain_app.command("list")
def domain_list(ctx: typer.Context) -> None:
    """List domains with their user and alias counts and DKIM selector."""
    from mailstack.site.accounts import list_domains

    rows = list_domains(opts(ctx).site())
    width = max(len(r[0]) for r in rows)
    typer.echo(f"{'DOMAIN':<{width}}  USERS  ALIASES  DKIM")
    for domain, users, aliases, selector in rows:
        typer.echo(f"{domain:<{width}}  {users:>5}  {aliases:>7}  {selector}")
