"""Syntax of the names mail runs on: domains, host names, addresses.

Deliberately stricter than RFC 5321: mailstack refuses quoted local parts, the ``%``/``!``
routing characters, ``/`` (a local part names a Maildir directory) and ``$`` (Postfix expands
it) outright, so they can never reach a config file or a path. Every pattern must match the
WHOLE value (``fullmatch``): ``$`` would also match before a trailing newline, and a newline in
a value becomes an extra line in a rendered file.
"""

from __future__ import annotations

import ipaddress
import re

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_LOCAL_PART = re.compile(r"(?!-)[a-z0-9#&'*+=?^_`{|}~-]+(\.[a-z0-9#&'*+=?^_`{|}~-]+)*")
# POSIX portable user names (what adduser accepts): never a leading "-", so never an option.
_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")


def domain_problem(value: str) -> str | None:
    """Why ``value`` is not a usable mail domain, or None if it is one."""
    if not value:
        return "is empty"
    if value != value.lower():
        return "must be lower case"
    if len(value) > 253:
        return "is longer than 253 characters"
    labels = value.split(".")
    if len(labels) < 2:
        return "needs at least two labels, like example.org"
    for label in labels:
        if not _LABEL.fullmatch(label):
            return f"has an invalid label {label!r} (letters, digits and inner hyphens only)"
    if labels[-1].isdigit():
        return "ends in a number; a domain ends in a name like .org"
    return None


def address_problem(value: str) -> str | None:
    """Why ``value`` is not a plain mail address (local@domain), or None if it is one."""
    if value.count("@") != 1:
        return "must look like name@example.org (exactly one @)"
    local, domain = value.split("@")
    if not local:
        return "has an empty local part before the @"
    if len(local) > 64:
        return "has a local part longer than 64 characters"
    if value != value.lower():
        return "must be lower case"
    if any(c in local for c in '%!"\\ '):
        return "has a routing or quoting character (% ! \" \\ or space) in its local part"
    if not _LOCAL_PART.fullmatch(local):
        return (f"has an invalid local part {local!r} (letters, digits, dots and "
                "#&'*+=?^_`{|}~- only, not starting with -; no /, $ or control characters)")
    problem = domain_problem(domain)
    if problem:
        return f"has a domain that {problem}"
    return None


def host_problem(value: str) -> str | None:
    """Why ``value`` is neither an IP address nor a DNS name, or None."""
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    if value == "localhost":
        return None
    problem = domain_problem(value)
    if problem:
        return f"is neither an IP address nor a host name: it {problem}"
    return None


def user_problem(value: str) -> str | None:
    """Why ``value`` is not a usable login name (SSH user), or None."""
    if not _USER.fullmatch(value):
        return ("must be a user name like root or deploy (lower case letters, digits, _ . -; "
                "not starting with - or a digit)")
    return None


def control_problem(value: str) -> str | None:
    """Why a free-form value (a password, a relay user name) cannot go into a config file."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "contains a control character (a newline, a tab …)"
    return None


def normalize_address(value: str) -> str:
    """Addresses are case-insensitive in practice; mailstack stores them lower case."""
    return value.strip().lower()
