"""DNSSEC trust anchors (options.resolver.trust_anchors): DS or DNSKEY records in the
presentation form `dig`, `keymgr ZONE ds` or a registry print, checked field by field and
rebuilt, so that only a well-formed record reaches unbound's `trust-anchor: "…"` line.

A record unbound cannot use is refused here, not left to fail quietly: an anchor with a
digest or algorithm no validator implements makes its zone insecure (no validation at all)
instead of protected.
"""

from __future__ import annotations

import base64
import binascii
import re

# DS digest types validators implement (RFC 8624) and their length in hex digits.
DIGEST_HEX_LENGTHS = {1: 40, 2: 64, 4: 96}  # SHA-1, SHA-256, SHA-384
# DNSSEC algorithms validators implement (RFC 8624; unbound on Debian 12).
ALGORITHMS = (5, 7, 8, 10, 13, 14, 15, 16)
DNSKEY_PROTOCOL = 3
ZONE_KEY_FLAG = 0x0100  # a DNSKEY without it is not a zone's key (RFC 4034 2.1.1)
EXAMPLE = "example.org. DS 12345 13 2 <64 hex digits>"

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_NUMBER = re.compile(r"[0-9]{1,5}")
_TTL = re.compile(r"[0-9]{1,10}")
_HEX = re.compile(r"[0-9A-Fa-f]+")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def trust_anchor(value: object) -> str:
    """The record as unbound's trust-anchor takes it, `owner. DS TAG ALG TYPE DIGEST` or
    `owner. DNSKEY FLAGS 3 ALG KEY`; ValueError says what is wrong. A TTL and the class IN
    (as dig prints them) are accepted and dropped; the digest is upper case, split digests
    and keys are joined."""
    if not isinstance(value, str):
        raise ValueError(f"must be a DS or DNSKEY record like '{EXAMPLE}'")
    # Tabs are what dig separates fields with; any other control character (a newline)
    # would start another line of unbound's configuration.
    if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
        raise ValueError("must be one line: it contains a newline or another control character")
    fields = value.split()
    if len(fields) < 3:
        raise ValueError(f"must be a DS or DNSKEY record like '{EXAMPLE}'")
    owner = _owner(fields.pop(0))
    for _ in range(2):  # [TTL] [IN], in either order (RFC 1035 5.1)
        if fields and (_TTL.fullmatch(fields[0]) or fields[0].upper() == "IN"):
            fields.pop(0)
    kind = fields.pop(0).upper() if fields else ""
    if kind == "DS":
        return f"{owner} DS {_ds(fields)}"
    if kind == "DNSKEY":
        return f"{owner} DNSKEY {_dnskey(fields)}"
    raise ValueError(f"must be a DS or DNSKEY record like '{EXAMPLE}' (type {kind or 'missing'!r})")


def _owner(text: str) -> str:
    name = text.lower().removesuffix(".")
    if not name:
        raise ValueError("names the root: its anchor comes with options.resolver.dnssec: true; "
                         "list only zones of your own")
    if len(name) > 253:
        raise ValueError(f"has an owner name longer than 253 characters: {text[:40]}…")
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            raise ValueError(f"must start with the zone's name, like example.org.; {text!r} has "
                             f"an invalid label {label!r} (letters, digits and inner hyphens)")
    return name + "."


def _number(text: str, what: str, low: int, high: int) -> int:
    if not _NUMBER.fullmatch(text) or not low <= int(text) <= high:
        raise ValueError(f"has {what} {text!r}: must be a number from {low} to {high}")
    return int(text)


def _algorithm(text: str) -> int:
    if not _NUMBER.fullmatch(text) or int(text) not in ALGORITHMS:
        raise ValueError(f"has algorithm {text!r}: must be one validators implement, "
                         f"{', '.join(map(str, ALGORITHMS))} (13 is ECDSA P-256)")
    return int(text)


def _ds(fields: list[str]) -> str:
    if len(fields) < 4:
        raise ValueError("has a DS record without its four fields: key tag, algorithm, digest "
                         "type, digest")
    tag = _number(fields[0], "key tag", 0, 65535)
    algorithm = _algorithm(fields[1])
    digest_type = fields[2]
    if not _NUMBER.fullmatch(digest_type) or int(digest_type) not in DIGEST_HEX_LENGTHS:
        raise ValueError(f"has digest type {digest_type!r}: must be 1 (SHA-1), 2 (SHA-256) or "
                         "4 (SHA-384)")
    digest = "".join(fields[3:])
    length = DIGEST_HEX_LENGTHS[int(digest_type)]
    if not _HEX.fullmatch(digest) or len(digest) != length:
        raise ValueError(f"has a digest that is not {length} hex digits (digest type "
                         f"{digest_type})")
    return f"{tag} {algorithm} {int(digest_type)} {digest.upper()}"


def _dnskey(fields: list[str]) -> str:
    if len(fields) < 4:
        raise ValueError("has a DNSKEY record without its four fields: flags, protocol, "
                         "algorithm, public key")
    flags = _number(fields[0], "flags", 0, 65535)
    if not flags & ZONE_KEY_FLAG:
        raise ValueError(f"has flags {flags}: not a zone key (257 for a key-signing key, 256)")
    if fields[1] != str(DNSKEY_PROTOCOL):
        raise ValueError(f"has protocol {fields[1]!r}: must be 3")
    algorithm = _algorithm(fields[2])
    key = "".join(fields[3:])
    try:
        if not _BASE64.fullmatch(key):
            raise binascii.Error
        base64.b64decode(key, validate=True)
    except binascii.Error:
        raise ValueError("has a public key that is not base64") from None
    return f"{flags} {DNSKEY_PROTOCOL} {algorithm} {key}"
