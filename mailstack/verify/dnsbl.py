"""Whether a DNS list answers the way postscreen expects: every list lists 127.0.0.2 (RFC
5782 §5), so its test entry 2.0.0.127.<zone> must return an answer inside the list's filter.
Anything else means the lists do not work from this host: Spamhaus, for one, answers
127.255.255.254 to queries it refuses (a public resolver), which the filter ignores, so
postscreen would silently count nothing."""

from __future__ import annotations

import re

# One octet of a filter: a number, [low..high] or [a;b;c] (config.py checked the syntax).
_OCTETS = re.compile(r"\[[^\]]*\]|\d+")


def _octet_matches(pattern: str, value: int) -> bool:
    if pattern.startswith("["):
        inner = pattern[1:-1]
        if ".." in inner:
            low, high = inner.split("..")
            return int(low) <= value <= int(high)
        return value in {int(v) for v in inner.split(";")}
    return int(pattern) == value


def answer_matches(pattern: str | None, address: str) -> bool:
    """Postfix's zone=answers filter (127.0.0.[2..11], 127.0.0.[2;3]); None: any answer."""
    if pattern is None:
        return True
    octets = address.split(".")
    patterns = _OCTETS.findall(pattern)
    if len(octets) != 4 or len(patterns) != 4 or not all(o.isdigit() for o in octets):
        return False
    return all(_octet_matches(p, int(o)) for p, o in zip(patterns, octets, strict=True))


def judge(zone: str, pattern: str | None, found: dict) -> tuple[bool, str]:
    """(works, what to say) for one list from the host tool's answer for its test entry."""
    if "error" in found:
        return False, f"{zone}: no answer for its test entry ({found['error']})"
    answers = found.get("answers", [])
    if any(answer_matches(pattern, a) for a in answers):
        return True, f"{zone}: lists its test entry"
    return False, (f"{zone}: answers {', '.join(answers)} for its test entry, outside "
                   f"{pattern}: the list refuses this host's queries (a shared or public "
                   "resolver?), so it counts nothing")
