"""Secrets at rest: ansible-vault files, so Ansible reads them natively and git sees only
ciphertext. The vault password lives in a git-ignored, owner-only file."""

from __future__ import annotations

import os
import secrets as _random
from pathlib import Path
from typing import Any

import yaml

from mailstack.errors import ConfigError, MailstackError
from mailstack.files import write_atomic
from mailstack.site.document import refuse_aliases

VAULT_PASSWORD_FILE = ".vault-password"
ENV_VAULT_PASSWORD_FILE = "ANSIBLE_VAULT_PASSWORD_FILE"


def password_file(site_root: Path, override: Path | None = None) -> Path:
    """``--vault-password-file`` wins, then ANSIBLE_VAULT_PASSWORD_FILE, then the site's own."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(ENV_VAULT_PASSWORD_FILE)
    if env:
        return Path(env).expanduser()
    return site_root / VAULT_PASSWORD_FILE


def new_password() -> str:
    return _random.token_urlsafe(32)


class Vault:
    """Encrypts and decrypts whole YAML files with one vault password."""

    def __init__(self, pw_file: Path) -> None:
        self.pw_file = pw_file
        self._lib: Any = None

    def _vault(self) -> Any:
        if self._lib is None:
            # Imported lazily: ansible takes a few hundred ms to import.
            from ansible.constants import DEFAULT_VAULT_ID_MATCH
            from ansible.parsing.vault import VaultLib, VaultSecret

            try:
                password = self.pw_file.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                raise MailstackError(
                    f"vault password file {self.pw_file} not found: it was written by "
                    "`mailstack init` and is git-ignored; restore it from your backup, or "
                    f"point --vault-password-file / {ENV_VAULT_PASSWORD_FILE} at it"
                ) from None
            except OSError as exc:
                raise MailstackError(
                    f"cannot read vault password file {self.pw_file}: {exc.strerror}"
                ) from None
            if not password:
                raise MailstackError(f"vault password file {self.pw_file} is empty")
            self._lib = VaultLib([(DEFAULT_VAULT_ID_MATCH, VaultSecret(password.encode()))])
        return self._lib

    def read(self, path: Path) -> dict[str, Any]:
        """The decrypted YAML mapping in ``path`` ({} when the file does not exist yet)."""
        from ansible.errors import AnsibleError
        from ansible.parsing.vault import AnsibleVaultError

        try:
            ciphertext = path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise MailstackError(f"cannot read {path}: {exc.strerror}") from None
        if not ciphertext.startswith(b"$ANSIBLE_VAULT;"):
            raise MailstackError(
                f"{path} is not vault-encrypted; secrets must never rest in clear text. "
                f"Encrypt it with: ansible-vault encrypt --vault-password-file {self.pw_file} "
                f"{path}"
            )
        restore = "restore it from the site's git history or your backup"
        try:
            plaintext = self._vault().decrypt(ciphertext)
        except AnsibleVaultError:
            raise MailstackError(
                f"cannot decrypt {path} with the vault password from {self.pw_file}: wrong "
                "password (use the site's own .vault-password, or --vault-password-file), or "
                f"the file is damaged ({restore})") from None
        except (AnsibleError, ValueError, TypeError):  # a truncated or garbled envelope
            raise MailstackError(f"cannot decrypt {path}: the file is damaged; {restore}"
                                 ) from None
        try:
            refuse_aliases(plaintext.decode(), path)
        except (UnicodeDecodeError, ConfigError):
            raise MailstackError(f"{path} decrypts, but not to a YAML mapping: restore it from "
                                 "the site's git history or your backup") from None
        try:
            data = yaml.safe_load(plaintext) or {}
        except yaml.YAMLError:
            data = None
        if not isinstance(data, dict):
            raise MailstackError(f"{path} decrypts, but not to a YAML mapping: restore it from "
                                 "the site's git history or your backup")
        return data

    def encrypted_if_changed(self, path: Path, data: dict[str, Any]) -> bytes | None:
        """The ciphertext to store for ``data``, or None when ``path`` already holds it: the
        ciphertext (random salt) only changes in git when a secret really changes."""
        if path.exists() and self.read(path) == data:
            return None
        plaintext = yaml.safe_dump(data, sort_keys=True, default_flow_style=False)
        return self._vault().encrypt(plaintext.encode())

    def write(self, path: Path, data: dict[str, Any]) -> bool:
        """Encrypt ``data`` into ``path`` (mode 0600) if it changed."""
        ciphertext = self.encrypted_if_changed(path, data)
        if ciphertext is None:
            return False
        write_atomic(path, ciphertext, mode=0o600)
        return True
