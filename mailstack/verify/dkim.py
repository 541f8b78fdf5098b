"""Checking a delivered message's DKIM signature against the site's own keys."""

from __future__ import annotations

from mailstack.site.secrets import dkim_public_key


def dkim_records(dkim_keys: dict[str, dict[str, str]]) -> dict[str, bytes]:
    """The TXT records `mailstack dns` publishes, by name: what a receiver would look up."""
    return {f"{key['selector']}._domainkey.{domain}.":
            f"v=DKIM1; k=rsa; p={dkim_public_key(key['private_key'])}".encode()
            for domain, key in dkim_keys.items()}


def check_signature(raw: bytes, dkim_keys: dict[str, dict[str, str]]) -> tuple[bool, str]:
    """(valid, detail) for the first DKIM-Signature of a raw message, verified with the
    site's keys rather than public DNS (which may not carry them yet)."""
    import dkim

    records = dkim_records(dkim_keys)

    def dnsfunc(name, timeout=5):
        return records.get(name.decode() if isinstance(name, bytes) else name, b"")

    if b"dkim-signature:" not in raw.lower():
        return False, "no DKIM-Signature header"
    ok = dkim.verify(raw, dnsfunc=dnsfunc)
    sig = raw.lower().split(b"dkim-signature:", 1)[1].split(b"\n", 1)[0]
    verdict = "signature verifies with the site's key" if ok else "signature INVALID"
    return ok, f"{verdict} ({sig.decode(errors='replace').strip()[:60]})"
