"""`mailstack unlock`, `lock` and `status`: the encrypted store of each host, over SSH.

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
    return [unlocked(run_tool(site, h, "unlock", stdin=secret + "\n"))
            for h in hosts(site, host)]


def unlocked(result: ToolResult) -> ToolResult:
    """The tool's answer to `unlock`, or the MailstackError that explains its refusal."""
    if result.code == WRONG_PASSPHRASE:
        raise MailstackError(f"{result.host}: wrong passphrase; the store stays locked and "
                             "nothing was changed")
    if result.code == NOT_INITIALIZED:
        raise MailstackError(f"{result.host}: there is no encrypted store yet; run "
                             "`mailstack deploy` first")
    if result.code != 0 or not result.data.get("ok"):
        raise MailstackError(f"{result.host}: unlock failed: {result.data.get('error')}")
    return result


def lock(site: Site, host: str | None = None) -> list[ToolResult]:
    """Stop Dovecot, unmount the store, seal what waits in Postfix's queue, on each host."""
    results = []
    for h in hosts(site, host):
        result = run_tool(site, h, "lock", timeout=300)
        if not result.data.get("ok"):
            raise MailstackError(f"{result.host}: lock failed: {result.data.get('error')}")
        results.append(result)
    return results


def status(site: Site, host: str | None = None) -> list[ToolResult]:
    return [status_of(run_tool(site, h, "status", timeout=30)) for h in hosts(site, host)]


def statuses(site: Site, host: str | None = None
             ) -> list[tuple[str, ToolResult | MailstackError]]:
    """Each host's status answer, or why there is none (unreachable, no tool): one host that
    cannot be asked does not hide the others (`mailstack status` reports it as critical)."""
    out: list[tuple[str, ToolResult | MailstackError]] = []
    for h in hosts(site, host):
        try:
            out.append((h.name, status_of(run_tool(site, h, "status", timeout=60))))
        except MailstackError as exc:
            out.append((h.name, exc))
    return out


def status_of(result: ToolResult) -> ToolResult:
    """The tool's answer to `status`, or the MailstackError that explains its failure."""
    if not result.data.get("ok"):
        raise MailstackError(f"{result.host}: status failed: {result.data.get('error')}")
    return result


def unban(site: Site, address: str, host: str | None = None) -> list[ToolResult]:
    """Lift fail2ban's bans of one address ("all": of every address) on each host."""
    results = []
    for h in hosts(site, host):
        result = run_tool(site, h, "unban", stdin=address + "\n", timeout=60)
        if not result.data.get("ok"):
            raise MailstackError(f"{result.host}: unban failed: {result.data.get('error')}")
        results.append(result)
    return results
