"""verify's groupware checks (options.groupware): the webmail takes the verification
mailbox's login over HTTPS, and Exchange ActiveSync answers a phone's first question."""

from __future__ import annotations

import base64
import http.client
import json

from mailstack.render.context import SOGO
from mailstack.verify.clients import TIMEOUT, tls_context
from mailstack.verify.probes import Probe, Target


def https(t: Target, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """One request to the host over HTTPS, for its host name (nginx serves the groupware
    there only). The response is read before the connection closes."""
    conn = http.client.HTTPSConnection(t.address, 443, context=tls_context(), timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers={"Host": t.hostname, **(headers or {})})
        resp = conn.getresponse()
        resp.read()
        return resp
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
    versions = resp.getheader("MS-ASProtocolVersions")
    if resp.status != 200 or not versions:
        return False, f"HTTPS {resp.status}, MS-ASProtocolVersions {versions or 'missing'}"
    return True, f"protocol versions {versions}"


def groupware(t: Target) -> list[tuple[str, Probe]]:
    if not t.groupware:
        return []
    return [("webmail login over HTTPS", lambda: webmail_login(t)),
            ("ActiveSync answers OPTIONS", lambda: activesync_options(t))]
