"""`mailstack unlock` and `mailstack status`: the encrypted store of each host, over SSH.

The passphrase travels only on SSH's stdin to the host's storage tool, which pipes it to
gocryptfs/EncFS: never an argument, never a file on the server, never logged.
"""

from __future__ import annotations

from mailstack.deploy.remote import NOT_INITIALIZED, WRONG_PASSPHRASE, ToolResult, hosts, run_tool
from mailstack.errors import MailstackError
from mailstack.site.directory import Site


def unlock(site: Site, host: str | None = None, passphrase: str | None = None
           ) -> list[ToolResult]:
    secret = passphrase if passphrase is not None else site.secrets.site.get("storage_passphrase")
    if not secret:
        raise MailstackError("no storage passphrase: secrets/site.yml has none; pass it with "
                             "--passphrase-stdin")
    results = []
    for h in hosts(site, host):
        result = run_tool(site, h, "unlock", stdin=secret + "\n")
        if result.code == WRONG_PASSPHRASE:
            raise MailstackError(f"{h.name}: wrong passphrase; the store stays locked and "
                                 "nothing was changed")
        if result.code == NOT_INITIALIZED:
            raise MailstackError(f"{h.name}: there is no encrypted store yet; run "
                                 "`mailstack deploy` first")
        if result.code != 0 or not result.data.get("ok"):
            raise MailstackError(f"{h.name}: unlock failed: {result.data.get('error')}")
        results.append(result)
    return results


def status(site: Site, host: str | None = None) -> list[ToolResult]:
    results = []
    for h in hosts(site, host):
        result = run_tool(site, h, "status", timeout=30)
        if not result.data.get("ok"):
            raise MailstackError(f"{h.name}: status failed: {result.data.get('error')}")
        results.append(result)
    return results
