"""The optional outgoing relay (smarthost): host and user in mailstack.yml, password in the
vault."""

from __future__ import annotations

from ruamel.yaml.comments import CommentedMap

from mailstack.errors import MailstackError
from mailstack.site.directory import Site, edits_site
from mailstack.site.names import control_problem


@edits_site
def set_relay(site: Site, host: str, username: str, password: str) -> None:
    if not password:
        raise MailstackError("the relay password is empty")
    if problem := control_problem(password):
        raise MailstackError(f"the relay password {problem}; it must fit on one line of "
                             "sasl_passwd")
    options = site.doc.data.setdefault("options", CommentedMap())
    relay = CommentedMap(host=host, username=username)
    # The comment block that followed `relay: null` belongs to the next option; ruamel keeps
    # it on the replaced value, so move it to the new map's last key.
    trailing = options.ca.items.pop("relay", None)
    if trailing and trailing[2] is not None:
        relay.ca.items["username"] = [None, None, trailing[2], None]
    options["relay"] = relay
    site.secrets.site["relay_password"] = password
    site.commit()


@edits_site
def clear_relay(site: Site) -> None:
    options = site.doc.data.get("options")
    if not options or not options.get("relay"):
        raise MailstackError("no relay host is set")
    old = options["relay"]
    trailing = getattr(old, "ca", None) and old.ca.items.get(list(old)[-1])
    options["relay"] = None
    if trailing and trailing[2] is not None:
        options.ca.items["relay"] = [None, None, trailing[2], None]
    site.secrets.site["relay_password"] = None
    site.commit()
