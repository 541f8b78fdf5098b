"""An Apple configuration profile (.mobileconfig) for one mailbox: iOS and macOS set the
account up from it, the address as the login.

- With the groupware (options.groupware), an Exchange ActiveSync account by default: mail,
  calendars and contacts, and push, which iOS Mail never does over IMAP for an account
  that is not iCloud's (it fetches every 15 minutes at best).
- Otherwise, or asked for (`--protocol imap`), IMAP over TLS and submission over TLS; with
  the groupware also CalDAV and CardDAV accounts for the calendars and contacts.

No password inside unless asked: a profile is a file that travels by mail or chat. The
identifiers are derived from the host and the address, so installing a newer profile for
the same mailbox replaces the old one instead of adding a second account.
"""

from __future__ import annotations

import plistlib
import uuid

from mailstack.errors import MailstackError
from mailstack.render.context import SOGO, WEB, client_settings
from mailstack.site.directory import Site

NAMESPACE = uuid.UUID("6d61696c-7374-6163-6b00-70726f66696c")  # fixed: stable identifiers
PROTOCOLS = ("activesync", "imap")


def _check_password(site: Site, address: str, password: str) -> None:
    """The password must be the mailbox's: a profile with a wrong one fails on the phone."""
    from argon2 import PasswordHasher
    from argon2.exceptions import InvalidHashError, VerificationError

    stored = str(site.secrets.accounts.get(address, ""))
    try:
        PasswordHasher().verify(stored.removeprefix("{ARGON2ID}"), password)
    except (VerificationError, InvalidHashError):
        raise MailstackError(f"that is not the password of {address}: the profile would not "
                             f"log in (change it with `mailstack user passwd {address}`)") from None


def _payload(ident: str, kind: str, payload_type: str, name: str, **keys: object) -> dict:
    return {"PayloadType": payload_type, "PayloadVersion": 1,
            "PayloadIdentifier": f"{ident}.{kind}",
            "PayloadUUID": str(uuid.uuid5(NAMESPACE, f"{ident}.{kind}")).upper(),
            "PayloadDisplayName": name, **keys}


def _imap(ident: str, address: str, client: dict, password: str | None) -> dict:
    smtp = client["smtp"][0]  # TLS from the first byte (465)
    account = _payload(
        ident, "account", "com.apple.mail.managed", address,
        EmailAccountDescription=address, EmailAccountType="EmailTypeIMAP", EmailAddress=address,
        IncomingMailServerHostName=client["hostname"],
        IncomingMailServerPortNumber=client["imap"]["port"], IncomingMailServerUseSSL=True,
        IncomingMailServerUsername=address, IncomingMailServerAuthentication="EmailAuthPassword",
        OutgoingMailServerHostName=client["hostname"], OutgoingMailServerPortNumber=smtp["port"],
        OutgoingMailServerUseSSL=True, OutgoingMailServerUsername=address,
        OutgoingMailServerAuthentication="EmailAuthPassword",
        OutgoingPasswordSameAsIncomingPassword=True)
    if password is not None:
        account["IncomingPassword"] = password
    return account


def _dav(ident: str, address: str, hostname: str, password: str | None) -> list[dict]:
    """CalDAV and CardDAV accounts: SOGo's principal of the mailbox, over HTTPS."""
    principal = f"https://{hostname}{SOGO['paths']['webmail']}/dav/{address}/"
    accounts = []
    for kind, prefix in (("caldav", "CalDAV"), ("carddav", "CardDAV")):
        account = _payload(ident, kind, f"com.apple.{kind}.account", f"{address} ({prefix})",
                           **{f"{prefix}AccountDescription": address,
                              f"{prefix}HostName": hostname, f"{prefix}Port": WEB["https_port"],
                              f"{prefix}UseSSL": True, f"{prefix}Username": address,
                              f"{prefix}PrincipalURL": principal})
        if password is not None:
            account[f"{prefix}Password"] = password
        accounts.append(account)
    return accounts


def _activesync(ident: str, address: str, hostname: str, password: str | None) -> dict:
    """Exchange ActiveSync: iOS takes https://Host/Microsoft-Server-ActiveSync."""
    account = _payload(ident, "eas", "com.apple.eas.account", address,
                       EmailAddress=address, Host=hostname, SSL=True, UserName=address,
                       MailNumberOfPastDaysToSync=0)  # 0: all of it
    if password is not None:
        account["Password"] = password
    return account


def choose_protocol(site: Site, protocol: str | None) -> str:
    """The profile's kind, checked before anything is asked for."""
    groupware = site.config.options.groupware
    protocol = protocol or ("activesync" if groupware else "imap")
    if protocol not in PROTOCOLS:
        raise MailstackError(f"--protocol {protocol!r}: it is one of {', '.join(PROTOCOLS)}")
    if protocol == "activesync" and not groupware:
        raise MailstackError("--protocol activesync needs the groupware, which serves "
                             "ActiveSync: set `options.groupware: true` in mailstack.yml and "
                             "deploy, or use --protocol imap")
    return protocol


def mobileconfig(site: Site, address: str, password: str | None = None,
                 protocol: str | None = None) -> bytes:
    """The profile; `protocol` is "activesync" or "imap", by default ActiveSync when the
    site has the groupware."""
    cfg = site.config
    if cfg.mailbox(address) is None:
        raise MailstackError(f"{address} is not a mailbox of this site (`mailstack user list`)")
    groupware = cfg.options.groupware
    protocol = choose_protocol(site, protocol)
    if password is not None:
        _check_password(site, address, password)
    client = client_settings(cfg)
    ident = f"{'.'.join(reversed(cfg.hostname.split('.')))}.mailstack.{address}"
    if protocol == "activesync":
        content = [_activesync(ident, address, client["hostname"], password)]
    else:
        content = [_imap(ident, address, client, password)]
        if groupware:
            content += _dav(ident, address, client["hostname"], password)
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": ident,
        "PayloadUUID": str(uuid.uuid5(NAMESPACE, ident)).upper(),
        "PayloadDisplayName": f"Mail: {address}",
        "PayloadDescription": f"The mail account {address} on {cfg.hostname}.",
        "PayloadOrganization": cfg.primary_domain,
        "PayloadRemovalDisallowed": False,
        "PayloadContent": content,
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)
