"""Bringing a site made by an older mailstack up to this one's format (config.SITE_FORMAT).

Each step takes mailstack.yml from one format to the next in place (ruamel's round trip: the
user's comments stay), keeping what the server did before, and says what it wrote. Steps run
under the site's edit lock and are written as one validated change (Site.commit), so a site
is never left half migrated; the user reviews them with `git diff` and commits.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from ruamel.yaml.comments import CommentedMap

from mailstack.site.config import SITE_FORMAT

Step = Callable[[CommentedMap], list[str]]


def to_2(data: CommentedMap) -> list[str]:
    """Format 2 brought options.tls (before it every certificate was self-signed): write
    that choice down where the user sees it, beside how to change it."""
    options = data.get("options")
    if options is None:
        options = data["options"] = CommentedMap()
    if "tls" in options:
        return []
    tls = CommentedMap(certificate="self-signed")
    options["tls"] = tls
    options.yaml_set_comment_before_after_key(
        "tls", before="The certificate: self-signed as before; acme gets a trusted one "
                      "(README: Certificates).", indent=2)
    return ["options.tls.certificate: self-signed written, the certificate the server had; "
            "`acme` gets one clients trust"]


STEPS: dict[int, Step] = {1: to_2}  # from format N to N + 1


def migrate(site) -> list[str]:  # site: directory.Site
    """Migrate the site if it is older than this mailstack; what changed (empty: nothing)."""
    if site.config.format >= SITE_FORMAT:
        return []
    with site.editing():  # read again under the lock: another command may have done it
        data = site.doc.data
        start = found = int(data.get("format", 1))
        said: list[str] = []
        while found < SITE_FORMAT:
            said += STEPS[found](data)
            found += 1
        if start == SITE_FORMAT:
            return []
        if "format" in data:
            data["format"] = SITE_FORMAT
        else:
            data.insert(0, "format", SITE_FORMAT, comment="the layout of this file (mailstack)")
        site.commit(secrets=False)
    return [f"migrated {site.root / 'mailstack.yml'} from format {start} to {SITE_FORMAT}", *said,
            "review the change with `git diff` and commit it"]


def migrate_and_tell(site) -> None:
    for i, line in enumerate(migrate(site)):
        print(("mailstack: " if i == 0 else "  ") + line, file=sys.stderr)
