"""The groupware's secret (options.groupware): SOGo's database password, in the vault.

New sites get it from `mailstack init`; a site made before options.groupware existed adds it
once with `mailstack groupware secret`. It is never made up again while it exists."""

from __future__ import annotations

from mailstack.site.directory import Site, edits_site
from mailstack.site.vault import new_password

SECTION, KEY = "mariadb", "sogo_password"


@edits_site
def add_db_password(site: Site) -> bool:
    """Add SOGo's database password if the vault has none; whether it added one."""
    section = site.secrets.site.setdefault(SECTION, {})
    if isinstance(section.get(KEY), str) and section[KEY]:
        return False
    section[KEY] = new_password()
    site.commit(config=False)
    return True
