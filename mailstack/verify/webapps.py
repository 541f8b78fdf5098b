"""verify's groupware checks (options.groupware): the webmail takes the verification
mailbox's login over HTTPS, Exchange ActiveSync answers a phone's first question, and
autodiscover tells a phone where ActiveSync is."""

from __future__ import annotations

import base64
import http.client
import json
from dataclasses import dataclass
from xml.etree import ElementTree

from mailstack.render.context import SOGO
from mailstack.verify.clients import TIMEOUT, tls_context
from mailstack.verify.probes import Probe, Target


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def https(t: Target, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None, name: str = "") -> Answer:
    """One request to the host over HTTPS, for its host name (nginx serves the groupware
    there only) or another of its web names."""
    conn = http.client.HTTPSConnection(t.address, 443, context=tls_context(), timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body,
                     headers={"Host": name or t.hostname, **(headers or {})})
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def basic(t: Target) -> dict[str, str]:
    token = base64.b64encode(f"{t.user}:{t.password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def webmail_login(t: Target) -> tuple[bool, str]:
    """The JSON login SOGo's own login page posts: 200 for the mailbox's password."""
    body = json.dumps({"userName": t.user, "password": t.password, "rememberLogin": 0})
    resp = https(t, "POST", f"{SOGO['paths']['webmail']}/connect", body.encode(),
                 {"Content-Type": "application/json"})
    if resp.status == 503:
        return False, "503: the groupware is stopped (the store locked? `mailstack status`)"
    return resp.status == 200, f"HTTPS {resp.status} for the login of {t.user}"


def activesync_options(t: Target) -> tuple[bool, str]:
    """OPTIONS is what a phone asks first: the protocol versions it may speak."""
    resp = https(t, "OPTIONS", SOGO["paths"]["activesync"], headers=basic(t))
    versions = resp.headers.get("MS-ASProtocolVersions")
    if resp.status != 200 or not versions:
        return False, f"HTTPS {resp.status}, MS-ASProtocolVersions {versions or 'missing'}"
    return True, f"protocol versions {versions}"


MOBILESYNC = "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/%sschema/2006"
AUTODISCOVER_REQUEST = f"""<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="{MOBILESYNC % 'request'}">
  <Request>
    <EMailAddress>%s</EMailAddress>
    <AcceptableResponseSchema>{MOBILESYNC % 'response'}</AcceptableResponseSchema>
  </Request>
</Autodiscover>"""


def phone_autodiscover(t: Target) -> tuple[bool, str]:
    """What a phone's mail app asks autodiscover.DOMAIN, given an address and a password:
    ActiveSync's URL on the host name."""
    resp = https(t, "POST", "/autodiscover/autodiscover.xml",
                 (AUTODISCOVER_REQUEST % t.user).encode(), {"Content-Type": "text/xml"},
                 name=f"autodiscover.{t.domain}")
    if resp.status != 200:
        return False, f"HTTPS {resp.status} from autodiscover.{t.domain}"
    try:
        url = ElementTree.fromstring(resp.body).findtext(f".//{{{MOBILESYNC % 'response'}}}Url")
    except ElementTree.ParseError as e:
        return False, f"autodiscover.{t.domain} answered no XML ({e})"
    wanted = f"https://{t.hostname}{SOGO['paths']['activesync']}"
    return url == wanted, f"ActiveSync at {url}" if url else "no mobilesync answer"


def groupware(t: Target) -> list[tuple[str, Probe]]:
    if not t.groupware:
        return []
    return [("webmail login over HTTPS", lambda: webmail_login(t)),
            ("ActiveSync answers OPTIONS", lambda: activesync_options(t)),
            ("autodiscover tells phones of ActiveSync", lambda: phone_autodiscover(t))]
