"""Where the data mailstack ships is: templates, roles, site.yml and the example inventories.

In a checkout they are at the top of the repository; an installed wheel carries them in
``mailstack/_data/`` (pyproject.toml force-includes them).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# Only a checkout has pyproject.toml beside the package (site-packages never does).
_CHECKOUT = _PACKAGE.parent if (_PACKAGE.parent / "pyproject.toml").is_file() else None


def resource_dir(name: str) -> Path:
    """``templates``, ``roles``, ``site.yml`` or ``inventories``."""
    if _CHECKOUT is not None:
        return _CHECKOUT / name
    return _PACKAGE / "_data" / name
