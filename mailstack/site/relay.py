"""The optional outgoing relay (smarthost): host and user in mailstack.yml, password in the
vault."""

from __future__ import annotations

from ruamel.yaml.comments import CommentedMap

from mailstack.errors import MailstackError
from mailstack.site.directory import Site, edits_site
from mailstack.site.document import option_to_null, set_option_fields
from mailstack.site.names import control_problem


@edits_site
def set_relay(site: Site, host: str, username: str, password: str) -> None:
    if not password:
        raise MailstackError("the relay password is empty")
    if problem := control_problem(password):
        raise MailstackError(f"the relay password {problem}; it must fit on one line of "
                             "sasl_passwd")
    options = site.doc.data.setdefault("options", CommentedMap())
    # A new password or login (what `mailstack status` sends the user here for) keeps the
    # rest of the relay's settings, spf_include among them.
    set_option_fields(options, "relay", {"host": host, "username": username})
    site.secrets.site["relay_password"] = password
    site.commit()


@edits_site
def clear_relay(site: Site) -> None:
    options = site.doc.data.get("options")
    if not options or not options.get("relay"):
        raise MailstackError("no relay host is set")
    option_to_null(options, "relay")
    site.secrets.site["relay_password"] = None
    site.commit()
