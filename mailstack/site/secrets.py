"""Secrets generated on the controller and kept in the site's vault.

A rebuild on a new VPS reuses them, so the DKIM key (and its DNS record) survives; an existing
secret is never regenerated. Layout, all ansible-vault encrypted, mode 0600:

- ``secrets/site.yml``: MariaDB lookup passwords, storage passphrase, verify mailbox password,
  relay (smarthost) password.
- ``secrets/dkim.yml``: one RSA 2048 key pair per domain, with its selector.
- ``secrets/accounts.yml``: mailbox password hashes (``{ARGON2ID}…``), by address.
"""

from __future__ import annotations

import base64
import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailstack.site.vault import Vault, new_password

SECRETS_DIR = "secrets"
SITE_FILE = "site.yml"
DKIM_FILE = "dkim.yml"
ACCOUNTS_FILE = "accounts.yml"


def generated_site_secrets() -> dict[str, Any]:
    return {
        "mariadb": {"postfix_password": new_password(), "dovecot_password": new_password()},
        "storage_passphrase": new_password(),
        "verify_password": new_password(),
        "relay_password": None,
    }


def new_dkim_key(today: _dt.date | None = None) -> dict[str, str]:
    """RSA 2048 (what every verifier accepts and fits a TXT record), selector ``sYYYY``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    year = (today or _dt.date.today()).year
    return {"selector": f"s{year}", "private_key": pem}


def dkim_public_key(private_pem: str) -> str:
    """The ``p=`` value of the DKIM TXT record: base64 of the DER SubjectPublicKeyInfo."""
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


@dataclass
class Secrets:
    """The decrypted secrets of one site; ``save`` writes back only the files that changed."""

    vault: Vault
    root: Path
    site: dict[str, Any] = field(default_factory=dict)
    dkim: dict[str, dict[str, str]] = field(default_factory=dict)
    accounts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path, vault: Vault) -> Secrets:
        d = root / SECRETS_DIR
        return cls(
            vault=vault,
            root=root,
            site=vault.read(d / SITE_FILE),
            dkim=vault.read(d / DKIM_FILE),
            accounts=vault.read(d / ACCOUNTS_FILE),
        )

    def ensure(self, domains: list[str]) -> None:
        """Fill in whatever is missing; never replace what exists."""
        for key, value in generated_site_secrets().items():
            if isinstance(value, dict):
                current = self.site.setdefault(key, {})
                for sub, subvalue in value.items():
                    current.setdefault(sub, subvalue)
            else:
                self.site.setdefault(key, value)
        # The verification mailbox's hash is stored, not recomputed, so rendering stays
        # deterministic (Argon2 salts are random).
        if not self.site.get("verify_password_hash"):
            from mailstack.site.passwords import hash_password

            self.site["verify_password_hash"] = hash_password(self.site["verify_password"])
        for domain in domains:
            if domain not in self.dkim:
                self.dkim[domain] = new_dkim_key()

    def save(self) -> None:
        d = self.root / SECRETS_DIR
        self.vault.write(d / SITE_FILE, self.site)
        self.vault.write(d / DKIM_FILE, self.dkim)
        self.vault.write(d / ACCOUNTS_FILE, self.accounts)
