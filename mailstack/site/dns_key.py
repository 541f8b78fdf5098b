"""The TSIG key `mailstack dns push` signs its updates with: name and algorithm in
mailstack.yml (options.dns_update), the secret in the vault (secrets/site.yml), like the
relay's password. The secret is never printed and never written anywhere else."""

from __future__ import annotations

import base64
import binascii
import re

from ruamel.yaml.comments import CommentedMap

from mailstack.errors import MailstackError
from mailstack.site.directory import Site, edits_site
from mailstack.site.document import option_to_null, set_option_fields

SECRET = "dns_update_secret"
# base64 as BIND's tsig-keygen, Knot's keymgr -t and PowerDNS's generate-tsig-key print it.
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
MIN_SECRET_BYTES = 16  # RFC 8945 wants at least half the hash; tools make the whole hash
MAX_SECRET_BYTES = 512


def secret_problem(value: object) -> str | None:
    """Why value is not a TSIG secret (base64 of 16 to 512 bytes), or None."""
    if not isinstance(value, str) or not value or not _BASE64.fullmatch(value):
        return "is not a base64 TSIG secret (like the secret: line tsig-keygen prints)"
    try:
        size = len(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        return "is not a base64 TSIG secret (like the secret: line tsig-keygen prints)"
    if not MIN_SECRET_BYTES <= size <= MAX_SECRET_BYTES:
        return (f"is {size} bytes long; a TSIG secret has {MIN_SECRET_BYTES} to "
                f"{MAX_SECRET_BYTES} (tsig-keygen makes 32 for hmac-sha256)")
    return None


def checked_options(name: str, algorithm: str, server: str | None) -> tuple[str, str, str | None]:
    """The key's name, algorithm and server as options.dns_update keeps them, or one error
    naming each bad one (before anything is read from standard input)."""
    from pydantic import ValidationError

    from mailstack.site.config import DnsUpdate

    try:
        update = DnsUpdate(key_name=name, algorithm=algorithm, server=server)
    except ValidationError as exc:
        flags = {"key_name": f"NAME {name!r}", "algorithm": f"--algorithm {algorithm!r}",
                 "server": f"--server {server!r}"}
        raise MailstackError("cannot keep the key:", details=[
            f"{flags.get(str(e['loc'][0]), e['loc'][0])}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()]) from None
    return update.key_name, update.algorithm, update.server


@edits_site
def set_key(site: Site, name: str, algorithm: str, secret: str, server: str | None) -> bool:
    """Keep a TSIG key: its name, algorithm (and the server, when given) in
    options.dns_update, its secret in the vault. Returns True when it replaced a secret."""
    secret = secret.strip()
    if problem := secret_problem(secret):
        raise MailstackError(f"the secret read from standard input {problem}; nothing was "
                             "changed")
    options = site.doc.data.setdefault("options", CommentedMap())
    fields: dict[str, object] = {"key_name": name, "algorithm": algorithm}
    if server is not None:
        fields["server"] = server
    set_option_fields(options, "dns_update", fields)
    replaced = bool(site.secrets.site.get(SECRET))
    site.secrets.site[SECRET] = secret
    site.commit()  # validates options.dns_update (a bad name or server names the field)
    return replaced


@edits_site
def clear_key(site: Site) -> None:
    """Forget the key: options.dns_update back to null, the secret out of the vault."""
    options = site.doc.data.get("options")
    if not options or not options.get("dns_update"):
        raise MailstackError("no DNS update key is set (options.dns_update is null)")
    option_to_null(options, "dns_update")
    site.secrets.site.pop(SECRET, None)
    site.commit()


def tsig_secret(site: Site) -> str:
    """The secret of options.dns_update's key, from the vault."""
    secret = site.secrets.site.get(SECRET)
    if not secret:
        update = site.config.options.dns_update
        name = update.key_name if update else "NAME"
        raise MailstackError(
            f"the vault has no secret for the TSIG key {name}: `mailstack dns key set {name}` "
            "reads it from standard input")
    return str(secret)
