"""Secrets generated on the controller and kept in the site's vault.

A rebuild on a new VPS reuses them, so the DKIM key (and its DNS record) survives; an existing
secret is never regenerated. Layout, all ansible-vault encrypted, mode 0600:

- ``secrets/site.yml``: MariaDB lookup passwords, storage passphrase, relay (smarthost)
  password, the spam filter's web interface password (and its hash), the server's TLS key
  (and an imported certificate: mailstack.site.tls), the TSIG secret `mailstack dns push`
  signs with (mailstack.site.dns_key). The verify mailbox has
  none: `mailstack verify` sets a one-time password for each run.
- ``secrets/dkim.yml``: one RSA 2048 key pair per domain, with its selector.
- ``secrets/accounts.yml``: mailbox password hashes (``{ARGON2ID}…``), by address.
"""

from __future__ import annotations

import base64
import datetime as _dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailstack.errors import MailstackError
from mailstack.files import write_all_atomic
from mailstack.site.vault import Vault, new_password

SECRETS_DIR = "secrets"
SITE_FILE = "site.yml"
DKIM_FILE = "dkim.yml"
ACCOUNTS_FILE = "accounts.yml"
# What each file holds, for the message that says how to restore a lost one.
HOLDS = {
    SITE_FILE: "the storage passphrase (without it the encrypted mail store never opens again), "
               "the database passwords, the TLS key",
    DKIM_FILE: "the DKIM keys (a new key would no longer match the published DNS records)",
    ACCOUNTS_FILE: "the mailbox password hashes",
}
REQUIRED_SITE_SECRETS = (("mariadb", "postfix_password"), ("mariadb", "dovecot_password"),
                         ("storage_passphrase",))


_SELECTOR = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# What mailstack.site.spam_ui makes: it goes between quotes in rspamd's settings.
_Z32 = "[ybndrfg8ejkmcpqxot1uwisza345h769]"
_RSPAMD_HASH = re.compile(rf"\$1\${_Z32}{{32}}\${_Z32}{{52}}")


def generated_site_secrets() -> dict[str, Any]:
    return {
        "mariadb": {"postfix_password": new_password(), "dovecot_password": new_password(),
                    # SOGo's database account (options.groupware).
                    "sogo_password": new_password()},
        "storage_passphrase": new_password(),
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
        """The site's secrets, checked. A missing file or value is never made up again here:
        only `init` and explicit commands (`domain add`) generate secrets."""
        d = root / SECRETS_DIR
        for name in (SITE_FILE, DKIM_FILE, ACCOUNTS_FILE):
            if not (d / name).is_file():
                raise MailstackError(
                    f"{d / name} is missing. It held {HOLDS[name]}; mailstack never makes these "
                    "up again. Restore it from the site's git history (`git -C "
                    f"{root} checkout -- {SECRETS_DIR}/{name}`) or from your backup")
        secrets = cls(vault=vault, root=root, site=vault.read(d / SITE_FILE),
                      dkim=vault.read(d / DKIM_FILE), accounts=vault.read(d / ACCOUNTS_FILE))
        secrets.check()
        return secrets

    def check(self) -> None:
        """Every value the renderer needs, of the right kind: a damaged file is named here,
        not met as a traceback later."""
        d = self.root / SECRETS_DIR
        problems = []
        for path in REQUIRED_SITE_SECRETS:
            value: Any = self.site
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if not isinstance(value, str) or not value:
                problems.append(f"{d / SITE_FILE}: {'.'.join(path)} is missing or empty")
        ui_hash = self.site.get("spam_ui_password_hash")
        if ui_hash is not None and not (isinstance(ui_hash, str)
                                        and _RSPAMD_HASH.fullmatch(ui_hash)):
            problems.append(f"{d / SITE_FILE}: spam_ui_password_hash is not an rspamd $1$ hash "
                            "(set a new password with `mailstack spam password --new`)")
        from mailstack.site.tls import CERTIFICATE, KEY, chain_problem, key_problem

        tls_key = self.site.get(KEY)
        if tls_key is not None and (p := key_problem(tls_key)):
            problems.append(f"{d / SITE_FILE}: {KEY} {p}")
        elif tls_key is not None and self.site.get(CERTIFICATE) is not None and (
                p := chain_problem(self.site[CERTIFICATE], tls_key)):
            problems.append(f"{d / SITE_FILE}: {CERTIFICATE} {p} (import both again with "
                            "`mailstack tls import`)")
        from mailstack.site.dns_key import SECRET as DNS_SECRET
        from mailstack.site.dns_key import secret_problem

        dns_secret = self.site.get(DNS_SECRET)
        if dns_secret is not None and (p := secret_problem(dns_secret)):
            problems.append(f"{d / SITE_FILE}: {DNS_SECRET} {p} (set it again with `mailstack "
                            "dns key set NAME`)")
        for domain, key in self.dkim.items():
            if not isinstance(key, dict) or not isinstance(key.get("selector"), str) \
                    or not _SELECTOR.fullmatch(key["selector"]):
                problems.append(f"{d / DKIM_FILE}: {domain}: no valid selector")
                continue
            try:
                dkim_public_key(str(key.get("private_key", "")))
            except (ValueError, TypeError):
                problems.append(f"{d / DKIM_FILE}: {domain}: the private key is not a PEM key")
        for address, hashed in self.accounts.items():
            if not isinstance(hashed, str) or not hashed.startswith("{ARGON2ID}"):
                problems.append(f"{d / ACCOUNTS_FILE}: {address}: not an {{ARGON2ID}} hash "
                                f"(set one with `mailstack user passwd {address}`)")
        if problems:
            raise MailstackError(
                "the site's secrets are damaged; restore the file from the site's git history "
                f"(`git -C {self.root} log -- {SECRETS_DIR}`) or your backup:", details=problems)

    def dkim_key(self, domain: str) -> dict[str, str]:
        """The DKIM key of a declared domain, or a message that says how to get one."""
        key = self.dkim.get(domain)
        if key is None:
            raise MailstackError(
                f"{self.root / SECRETS_DIR / DKIM_FILE} has no DKIM key for {domain}. A domain "
                "declared by hand gets none: remove it from mailstack.yml and run `mailstack "
                f"domain add {domain}` (which makes its key), or restore the key from the site's "
                "git history or your backup")
        return key

    def ensure(self, domains: list[str]) -> None:
        """Fill in whatever is missing; never replace what exists."""
        for key, value in generated_site_secrets().items():
            if isinstance(value, dict):
                current = self.site.setdefault(key, {})
                for sub, subvalue in value.items():
                    current.setdefault(sub, subvalue)
            else:
                self.site.setdefault(key, value)
        # The spam filter's web interface: its password, and the hash rspamd compares.
        if not self.site.get("spam_ui_password_hash"):
            from mailstack.site.spam_ui import new_ui_secrets

            self.site.update(new_ui_secrets())
        from mailstack.site.tls import KEY, new_key

        if not self.site.get(KEY):
            self.site[KEY] = new_key()
        for domain in domains:
            if domain not in self.dkim:
                self.dkim[domain] = new_dkim_key()

    def changed_files(self) -> list[tuple[Path, bytes, int]]:
        """(path, ciphertext, mode) of each secrets file whose content changed."""
        d = self.root / SECRETS_DIR
        out = []
        for name, data in ((SITE_FILE, self.site), (DKIM_FILE, self.dkim),
                           (ACCOUNTS_FILE, self.accounts)):
            ciphertext = self.vault.encrypted_if_changed(d / name, data)
            if ciphertext is not None:
                out.append((d / name, ciphertext, 0o600))
        return out

    def save(self) -> None:
        write_all_atomic(self.changed_files())
