"""Where the templates and roles are: the repository checkout, or inside the wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """``templates``, ``roles`` or ``site.yml``: top level in a checkout, ``_data/`` in an
    installed wheel."""
    checkout = _PACKAGE.parent / name
    if checkout.exists():
        return checkout
    return _PACKAGE / "_data" / name
