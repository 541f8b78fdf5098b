"""The password of rspamd's web interface: kept in the vault with its rspamd hash.

rspamd compares the ``$1$`` form (PBKDF2 over keyed BLAKE2b, 16000 rounds, z-base-32 with
rspamd's little-endian bit order), which ``rspamadm pw -t pbkdf2`` also makes. It is
computed here, once, when the password is set: rendering stays deterministic and needs
no rspamd on the controller.
"""

from __future__ import annotations

import hashlib
import math
import secrets as _secrets

from mailstack.errors import MailstackError
from mailstack.site.directory import Site, edits_site
from mailstack.site.vault import new_password

_ALPHABET = "ybndrfg8ejkmcpqxot1uwisza345h769"
_ROUNDS = 16000
_SALT_BYTES = 20
_KEY_BYTES = 32

PASSWORD_KEY = "spam_ui_password"
HASH_KEY = "spam_ui_password_hash"


def _base32(data: bytes) -> str:
    bits = int.from_bytes(data, "little")
    return "".join(_ALPHABET[(bits >> (5 * k)) & 31] for k in range(math.ceil(len(data) * 8 / 5)))


def _pbkdf2(password: bytes, salt: bytes) -> bytes:
    """rspamd_cryptobox_pbkdf2: BLAKE2b keyed with the password as the PRF (so the password
    must fit a BLAKE2b key: 64 bytes, far more than ours)."""
    out = b""
    block = 1
    while len(out) < _KEY_BYTES:
        d = hashlib.blake2b(salt + block.to_bytes(4, "big"), key=password).digest()
        acc = int.from_bytes(d, "big")
        for _ in range(1, _ROUNDS):
            d = hashlib.blake2b(d, key=password).digest()
            acc ^= int.from_bytes(d, "big")
        out += acc.to_bytes(64, "big")
        block += 1
    return out[:_KEY_BYTES]


def rspamd_hash(password: str, salt: bytes | None = None) -> str:
    raw = password.encode()
    if not raw or len(raw) > 64:
        raise MailstackError("the web interface password must be 1 to 64 bytes long")
    salt = salt if salt is not None else _secrets.token_bytes(_SALT_BYTES)
    return f"$1${_base32(salt)}${_base32(_pbkdf2(raw, salt))}"


def new_ui_secrets() -> dict[str, str]:
    password = new_password()
    return {PASSWORD_KEY: password, HASH_KEY: rspamd_hash(password)}


@edits_site
def set_ui_password(site: Site) -> str:
    """A new password for the web interface (the old one stops working at the next deploy)."""
    values = new_ui_secrets()
    site.secrets.site.update(values)
    site.commit(config=False)
    return values[PASSWORD_KEY]


def ui_password(site: Site) -> str:
    password = site.secrets.site.get(PASSWORD_KEY)
    if not isinstance(password, str) or not password:
        raise MailstackError(
            "this site has no password for the spam filter's web interface (sites made "
            "before it existed): set one with `mailstack spam password --new`")
    return password
