"""The backup's secrets in the vault (secrets/site.yml, key ``backup``): the borg
repository's passphrase, the SSH key the host reaches the target with, and the target's
pinned host keys. Made once by `mailstack backup init`, never made up again: a new
passphrase would not open the repository's archives, and a host that lost them could not
be restored."""

from __future__ import annotations

import re
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from mailstack.errors import MailstackError
from mailstack.site.config import Backup
from mailstack.site.vault import new_password

SECRET = "backup"
# What ssh-keyscan prints, one key per line: [host]:port or host, the type, the key.
_KNOWN_HOST = re.compile(r"(?:\[[A-Za-z0-9.:-]+\]:\d{1,5}|[A-Za-z0-9.:-]+) "
                         r"(?:ssh-ed25519|ecdsa-sha2-nistp(?:256|384|521)|ssh-rsa) "
                         r"[A-Za-z0-9+/]+={0,2}")


def new_backup_secrets() -> dict[str, Any]:
    """A passphrase for the repository key (repokey) and an Ed25519 key pair for SSH."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    return {"passphrase": new_password(), "ssh_key": private, "known_hosts": []}


def ensure_secrets(site_secrets: dict[str, Any]) -> bool:
    """Fill in the backup's secrets where missing (never replace one). True if any were made."""
    current = site_secrets.get(SECRET)
    if current is None:
        site_secrets[SECRET] = new_backup_secrets()
        return True
    if not isinstance(current, dict):
        raise MailstackError(f"secrets/site.yml: {SECRET} is not a mapping; restore the file "
                             "from the site's git history")
    made = False
    for key, value in new_backup_secrets().items():
        if key not in current:
            if key in ("passphrase", "ssh_key"):
                # One of the pair without the other: never paper over a damaged vault.
                raise MailstackError(f"secrets/site.yml: {SECRET}.{key} is missing while the "
                                     "rest is there; restore the file from the site's git "
                                     "history (a new one would not open the repository)")
            current[key] = value
            made = True
    return made


def backup_secrets(site_secrets: dict[str, Any]) -> dict[str, Any]:
    """The backup's secrets, checked; a message that says what to do when they are not there."""
    current = site_secrets.get(SECRET)
    if not current:
        raise MailstackError("options.backup is set, but the vault has no backup key and "
                             "passphrase yet: run `mailstack backup init`")
    problems = []
    if not isinstance(current.get("passphrase"), str) or len(current["passphrase"]) < 20:
        problems.append("passphrase is missing or too short")
    try:
        serialization.load_ssh_private_key(str(current.get("ssh_key", "")).encode(), None)
    except (ValueError, TypeError):
        problems.append("ssh_key is not an OpenSSH private key")
    hosts = current.get("known_hosts")
    if not isinstance(hosts, list) or not all(isinstance(h, str) and _KNOWN_HOST.fullmatch(h)
                                              for h in hosts):
        problems.append("known_hosts is not a list of host key lines")
    if problems:
        raise MailstackError("secrets/site.yml: the backup's secrets are damaged; restore the "
                             "file from the site's git history:",
                             details=[f"{SECRET}.{p}" for p in problems])
    return current


def public_key(site_secrets: dict[str, Any], comment: str) -> str:
    key = serialization.load_ssh_private_key(backup_secrets(site_secrets)["ssh_key"].encode(),
                                             None)
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}"


def authorized_keys_line(backup: Backup, site_secrets: dict[str, Any], hostname: str) -> str:
    """The line for the target's ~/.ssh/authorized_keys: this key may run `borg serve` on
    the repository's path and nothing else (no shell, no forwarding)."""
    return (f'command="borg serve --restrict-to-path {backup.path}",restrict '
            f"{public_key(site_secrets, f'mailstack-backup@{hostname}')}")


def known_host_lines(output: str) -> list[str]:
    """The host key lines in ssh-keyscan's output (comments and garbage left out)."""
    return sorted({line.strip() for line in output.splitlines()
                   if _KNOWN_HOST.fullmatch(line.strip())})


def repository_url(backup: Backup) -> str:
    """borg's ssh:// URL: /./path for a path relative to the user's home."""
    user, host, port = backup.user, backup.host, backup.port
    host = f"[{host}]" if ":" in host else host
    path = backup.path if backup.path.startswith("/") else "/./" + backup.path.removeprefix("~/")
    return f"ssh://{user}@{host}:{port}{path}"
