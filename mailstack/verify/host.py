"""Checks that only the host itself can answer, asked over SSH through its host tool (the
same `status` as `mailstack status`): the ban jails run, the spam filter and the resolver
answer, every DNS blocklist answers its test entry through the host's resolver."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

from mailstack.errors import MailstackError
from mailstack.site.directory import Site
from mailstack.site.inventory import InventoryHost
from mailstack.verify.dnsbl import judge

# The jails fail2ban must run (roles/fail2ban): SMTP AUTH, IMAP/ManageSieve, repeaters.
JAILS = ("postfix-sasl", "dovecot", "recidive")


class Records(Protocol):
    def record(self, name: str, passed: bool, detail: str) -> bool: ...


def host_checks(site: Site, host: InventoryHost, rec: Records) -> None:
    from mailstack.deploy.remote import run_tool

    try:
        data = run_tool(site, host, "status", timeout=60).data
    except MailstackError as exc:
        rec.record("host checks over SSH", False, str(exc))
        return
    if not data.get("ok"):
        rec.record("host checks over SSH", False, str(data.get("error")))
        return
    options = site.config.options
    if options.bans.enabled:
        jails = data.get("jails")
        missing = [j for j in JAILS if j not in (jails or {})]
        rec.record("brute-force ban jails active", jails is not None and not missing,
                   "fail2ban is not running (a container without CAP_NET_ADMIN?)"
                   if jails is None else (f"missing: {', '.join(missing)}" if missing else
                                          ", ".join(f"{k} ({v} banned)" for k, v in jails.items())))
    for key, name in (("spam_filter", "spam filter answers on the host"),
                      ("resolver", "host's resolver resolves its own name")):
        value = data.get(key)
        rec.record(name, value == "ok", "ok" if value == "ok" else str(value))
    found = data.get("blocklists") or {}
    for dl in options.blocklists.lists:
        if dl.weight <= 0:
            continue
        works, said = (judge(dl.zone, dl.answers, found[dl.zone]) if dl.zone in found
                       else (False, f"{dl.zone}: the host did not ask it (deploy first)"))
        rec.record(f"DNS blocklist {dl.zone} answers", works, said)


@contextlib.contextmanager
def one_time_password(site: Site, host: InventoryHost, rec: Records) -> Iterator[str]:
    """A new password for the verify mailbox, set on the host over SSH for this run only;
    afterwards (also after an error) the mailbox is locked again and rec says whether that
    worked. Between runs no password opens it: there is none to steal."""
    from mailstack.deploy.remote import run_tool
    from mailstack.site.passwords import hash_password
    from mailstack.site.vault import new_password

    password = new_password()
    answer = run_tool(site, host, "verify-login", stdin=hash_password(password) + "\n",
                      timeout=60).data
    if not answer.get("ok"):
        raise MailstackError(f"{host.name}: cannot set the verify mailbox's one-time password: "
                             f"{answer.get('error')}")
    try:
        yield password
    finally:
        try:
            locked = run_tool(site, host, "verify-login", stdin="off\n", timeout=60).data
            rec.record("verify mailbox locked again", bool(locked.get("ok")),
                       "no password opens it until the next verify" if locked.get("ok")
                       else str(locked.get("error")))
        except MailstackError as exc:
            rec.record("verify mailbox locked again", False, str(exc))
