"""An Apple configuration profile (.mobileconfig) for one mailbox: iOS and macOS Mail set
the account up from it (IMAP over TLS, submission over TLS, the address as the login).

No password inside unless asked: a profile is a file that travels by mail or chat. The
identifiers are derived from the host and the address, so installing a newer profile for
the same mailbox replaces the old one instead of adding a second account.
"""

from __future__ import annotations

import plistlib
import uuid

from mailstack.errors import MailstackError
from mailstack.render.context import client_settings
from mailstack.site.directory import Site

NAMESPACE = uuid.UUID("6d61696c-7374-6163-6b00-70726f66696c")  # fixed: stable identifiers


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


def mobileconfig(site: Site, address: str, password: str | None = None) -> bytes:
    cfg = site.config
    if cfg.mailbox(address) is None:
        raise MailstackError(f"{address} is not a mailbox of this site (`mailstack user list`)")
    if password is not None:
        _check_password(site, address, password)
    client = client_settings(cfg)
    smtp = client["smtp"][0]  # TLS from the first byte (465)
    ident = f"{'.'.join(reversed(cfg.hostname.split('.')))}.mailstack.{address}"
    account = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{ident}.account",
        "PayloadUUID": str(uuid.uuid5(NAMESPACE, f"{ident}.account")).upper(),
        "PayloadDisplayName": address,
        "EmailAccountDescription": address,
        "EmailAccountType": "EmailTypeIMAP",
        "EmailAddress": address,
        "IncomingMailServerHostName": client["hostname"],
        "IncomingMailServerPortNumber": client["imap"]["port"],
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": client["hostname"],
        "OutgoingMailServerPortNumber": smtp["port"],
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    if password is not None:
        account["IncomingPassword"] = password
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": ident,
        "PayloadUUID": str(uuid.uuid5(NAMESPACE, ident)).upper(),
        "PayloadDisplayName": f"Mail: {address}",
        "PayloadDescription": f"The mail account {address} on {cfg.hostname}.",
        "PayloadOrganization": cfg.primary_domain,
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [account],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)
