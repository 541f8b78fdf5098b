"""Day-2 edits of the desired state: users, aliases, domains.

Each operation checks the request, edits the round-trip document, re-validates the whole
site, and only then writes (secrets first, then mailstack.yml, each atomically). A refused
change writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from mailstack.errors import MailstackError
from mailstack.site.directory import Site, edits_site
from mailstack.site.names import (
    address_problem,
    control_problem,
    domain_problem,
    normalize_address,
)
from mailstack.site.passwords import check_password, hash_password
from mailstack.site.secrets import new_dkim_key


def _address(value: str, what: str = "address") -> str:
    if problem := control_problem(value):
        raise MailstackError(f"{what} {value!r} {problem}")
    address = normalize_address(value)
    problem = address_problem(address)
    if problem:
        raise MailstackError(f"{what} {value!r} {problem}")
    return address


def _domain(value: str) -> str:
    if problem := control_problem(value):
        raise MailstackError(f"domain {value!r} {problem}")
    domain = value.strip().lower().rstrip(".")
    problem = domain_problem(domain)
    if problem:
        raise MailstackError(f"domain {value!r} {problem}")
    return domain


def _require_domain(site: Site, address: str) -> None:
    domain = address.split("@")[1]
    if domain not in site.config.domains:
        raise MailstackError(
            f"domain {domain!r} of {address} is not declared in this site; add it first: "
            f"mailstack domain add {domain}"
        )


def _block(data: CommentedMap, key: str, kind: type) -> CommentedMap | CommentedSeq:
    """The block-style map/list under ``key`` (an empty ``{}``/``[]`` becomes block style)."""
    current = data.get(key)
    if not current:
        current = kind()
        data[key] = current
    return current


# --- users ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserAdded:
    address: str
    postmaster_alias: str | None  # the postmaster alias made for it, if the domain had none


@dataclass(frozen=True)
class DomainAdded:
    domain: str
    postmaster_alias: str | None  # "postmaster@new -> postmaster@primary", when made


@dataclass(frozen=True)
class UserRow:
    address: str
    quota: int
    aliases: list[str]
    has_password: bool


@edits_site
def add_user(site: Site, address: str, password: str, quota: int | str = 0) -> UserAdded:
    address = _address(address)
    _require_domain(site, address)
    if site.config.mailbox(address):
        raise MailstackError(
            f"user {address} already exists; to change the password use "
            f"`mailstack user passwd {address}`"
        )
    if address in site.config.aliases:
        raise MailstackError(
            f"{address} is an alias; remove it first (`mailstack alias remove {address}`) or "
            "choose another address"
        )
    check_password(password, address)
    entry = CommentedMap(address=address)
    if quota:
        entry["quota"] = quota
    _block(site.doc.data, "users", CommentedSeq).append(entry)
    # Every domain must accept mail for its postmaster (RFC 5321), and the server's own
    # reports go there: the domain's first mailbox receives it until the user says otherwise.
    postmaster = f"postmaster@{address.split('@')[1]}"
    gets_postmaster = (address != postmaster and not site.config.mailbox(postmaster)
                       and postmaster not in site.config.aliases)
    if gets_postmaster:
        _block(site.doc.data, "aliases", CommentedMap)[postmaster] = address
    site.secrets.accounts[address] = hash_password(password)
    site.commit(secrets=True)
    return UserAdded(address, postmaster if gets_postmaster else None)


@edits_site
def remove_user(site: Site, address: str) -> str:
    address = _address(address)
    if not site.config.mailbox(address):
        raise MailstackError(f"user {address} does not exist (see `mailstack user list`)")
    pointing = sorted(s for s, dests in site.config.aliases.items() if address in dests)
    if pointing:
        raise MailstackError(
            f"cannot remove {address}: aliases still deliver to it ({', '.join(pointing)}). "
            "Remove or change them first (`mailstack alias remove SOURCE`)"
        )
    users = site.doc.data["users"]
    for i, entry in enumerate(users):
        if normalize_address(str(entry.get("address", ""))) == address:
            del users[i]
            break
    site.secrets.accounts.pop(address, None)
    site.commit(secrets=True)
    return address


@edits_site
def set_password(site: Site, address: str, password: str) -> str:
    address = _address(address)
    if not site.config.mailbox(address):
        raise MailstackError(
            f"user {address} does not exist; create it with `mailstack user add {address}`"
        )
    check_password(password, address)
    site.secrets.accounts[address] = hash_password(password)
    site.commit(config=False)
    return address


def list_users(site: Site) -> list[UserRow]:
    cfg = site.config
    accounts = site.secrets.accounts
    return [
        UserRow(
            address=u.address,
            quota=u.quota,
            aliases=sorted(s for s, d in cfg.aliases.items() if u.address in d),
            has_password=u.address in accounts,
        )
        for u in cfg.users
    ]


# --- aliases -------------------------------------------------------------------------------


@edits_site
def add_alias(site: Site, source: str, destinations: list[str]) -> tuple[str, list[str]]:
    source = _address(source, "alias")
    _require_domain(site, source)
    if not destinations:
        raise MailstackError("give at least one destination address")
    dests = [_address(d, "destination") for d in destinations]
    if source in dests:
        raise MailstackError(f"alias {source} cannot point to itself")
    if site.config.mailbox(source):
        raise MailstackError(
            f"{source} is a mailbox; an alias with the same address would hide it. Choose "
            "another address, or remove the user first"
        )
    current = list(site.config.aliases.get(source, []))
    new = [d for d in dests if d not in current]
    if not new:
        raise MailstackError(f"alias {source} -> {', '.join(dests)} already exists")
    combined = current + new
    aliases = _block(site.doc.data, "aliases", CommentedMap)
    aliases[source] = combined[0] if len(combined) == 1 else CommentedSeq(combined)
    site.commit(secrets=False)
    return source, combined


@edits_site
def remove_alias(site: Site, source: str, destination: str | None = None) -> str:
    source = _address(source, "alias")
    current = site.config.aliases.get(source)
    if current is None:
        raise MailstackError(f"alias {source} does not exist (see `mailstack alias list`)")
    aliases = site.doc.data["aliases"]
    key = next(k for k in aliases if normalize_address(str(k)) == source)
    if destination is None:
        remaining = []
    else:
        dest = _address(destination, "destination")
        if dest not in current:
            raise MailstackError(f"alias {source} does not point to {dest}")
        remaining = [d for d in current if d != dest]
    if remaining:
        aliases[key] = remaining[0] if len(remaining) == 1 else CommentedSeq(remaining)
    else:
        del aliases[key]
    site.commit(secrets=False)
    return source


def list_aliases(site: Site) -> dict[str, list[str]]:
    return dict(sorted(site.config.aliases.items()))


# --- domains -------------------------------------------------------------------------------


@edits_site
def add_domain(site: Site, domain: str) -> DomainAdded:
    domain = _domain(domain)
    cfg = site.config
    if domain in cfg.domains:
        raise MailstackError(f"domain {domain} is already declared")
    _block(site.doc.data, "domains", CommentedSeq).append(domain)
    # Its postmaster (every domain needs one) reads the site's postmaster mail, if that exists
    # yet; otherwise the domain's first user becomes it (add_user).
    site_postmaster = f"postmaster@{cfg.primary_domain}"
    postmaster = None
    if cfg.mailbox(site_postmaster) or site_postmaster in cfg.aliases:
        postmaster = f"postmaster@{domain}"
        _block(site.doc.data, "aliases", CommentedMap)[postmaster] = site_postmaster
    secrets_changed = False
    # An existing key is kept (re-adding a domain must not force a DNS change).
    if domain not in site.secrets.dkim:
        site.secrets.dkim[domain] = new_dkim_key()
        secrets_changed = True
    site.commit(secrets=secrets_changed)
    return DomainAdded(domain, f"{postmaster} -> {site_postmaster}" if postmaster else None)


@edits_site
def remove_domain(site: Site, domain: str) -> str:
    domain = _domain(domain)
    cfg = site.config
    if domain not in cfg.domains:
        raise MailstackError(f"domain {domain} is not declared (see `mailstack domain list`)")
    users = [u.address for u in cfg.users if u.address.endswith("@" + domain)]
    aliases = [s for s in cfg.aliases if s.endswith("@" + domain)]
    if users or aliases:
        held = ", ".join(users + aliases)
        raise MailstackError(
            f"cannot remove domain {domain}: it still has users or aliases ({held}). Remove "
            "them first"
        )
    if len(cfg.domains) == 1:
        raise MailstackError(f"cannot remove {domain}: a site needs at least one domain")
    seq = site.doc.data["domains"]
    for i, value in enumerate(seq):
        if str(value).strip().lower().rstrip(".") == domain:
            del seq[i]
            break
    site.commit(secrets=False)
    return domain


def list_domains(site: Site) -> list[tuple[str, int, int, str]]:
    """(domain, users, aliases, DKIM selector) per declared domain."""
    cfg = site.config
    dkim = site.secrets.dkim
    return [
        (
            d,
            sum(u.address.endswith("@" + d) for u in cfg.users),
            sum(s.endswith("@" + d) for s in cfg.aliases),
            dkim.get(d, {}).get("selector", "(missing)"),
        )
        for d in cfg.domains
    ]
