"""`mailstack backup init|now|list|check` and `mailstack restore`, from the controller.

The host runs borg (mailstack-backup, mailstack/host/backup_tool.py); the controller asks it
over SSH, as `mailstack unlock` asks the storage tool. The site itself (mailstack.yml, the
inventory, the vault) is not in the archives: it is the user's git repository, which is why
`backup now` wants it committed.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailstack.deploy.remote import ToolResult, hosts, ssh_command
from mailstack.deploy.remote import run_tool as remote_tool
from mailstack.deploy.storage import unlock
from mailstack.errors import MailstackError
from mailstack.host.backup_tool import ARCHIVE_NAME
from mailstack.host.backup_tool import PATH as TOOL
from mailstack.site.backup import (
    SECRET,
    authorized_keys_line,
    backup_secrets,
    ensure_secrets,
    known_host_lines,
)
from mailstack.site.config import Backup
from mailstack.site.directory import Site
from mailstack.site.inventory import InventoryHost, load_hosts, write_inventory
from mailstack.site.names import host_problem

BACKUP_TIMEOUT = 6 * 3600


def configured(site: Site) -> Backup:
    backup = site.config.options.backup
    if backup is None:
        raise MailstackError(
            "options.backup is not set: add it to mailstack.yml (target: borg@HOST, path: "
            "REPOSITORY), then run `mailstack backup init`")
    return backup


@dataclass
class InitResult:
    made: bool
    authorized_keys: str
    scanned_from: str | None
    fingerprints: list[str] = field(default_factory=list)


def init(site: Site, *, rescan: bool = False) -> InitResult:
    """Make the repository's passphrase and the SSH key (once: never again), and pin the
    target's host keys as the mail host sees them (ssh-keyscan there: the controller may
    not reach the target at all). Both are kept in the vault, so a restored host trusts the
    same target with the same key."""
    backup = configured(site)
    with site.editing():
        made = ensure_secrets(site.secrets.site)
        if made:
            site.commit(config=False)  # the passphrase first: never lost to a failed scan
    scanned_from = None
    vault = site.secrets.site[SECRET]
    if rescan or not vault.get("known_hosts"):
        host = hosts(site, None)[0]
        lines = scan(site, host, backup)
        with site.editing():
            site.secrets.site[SECRET]["known_hosts"] = lines
            site.commit(config=False)
        scanned_from = host.name
    vault = site.secrets.site[SECRET]
    return InitResult(made, authorized_keys_line(backup, site.secrets.site, site.config.hostname),
                      scanned_from, fingerprints(vault["known_hosts"]))


def scan(site: Site, host: InventoryHost, backup: Backup) -> list[str]:
    """The target's host keys, read by the mail host (ssh-keyscan)."""
    proc = subprocess.run(
        ssh_command(site, host, ["ssh-keyscan", "-T", "10", "-p", str(backup.port),
                                 backup.host]),
        capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode == 255:
        raise MailstackError(f"{host.name}: cannot reach {host.ssh_user}@{host.address} over "
                             f"SSH: {proc.stderr.strip()}")
    lines = known_host_lines(proc.stdout)
    if not lines:
        raise MailstackError(
            f"{host.name} could not read the host keys of {backup.host} port {backup.port} "
            f"(ssh-keyscan: {proc.stderr.strip()[-200:] or 'no answer'}): is the target "
            "up, and its SSH port open to the mail host?")
    return lines


def fingerprints(lines: list[str]) -> list[str]:
    from mailstack.deploy.runner import fingerprints as keygen_fingerprints

    return keygen_fingerprints(set(lines))


def run_tool(site: Site, host: InventoryHost, verb: str, *, stdin: str | None = None,
             timeout: float = 600) -> ToolResult:
    """`mailstack-backup VERB` on the host; its last stdout line is JSON."""
    result = remote_tool(site, host, verb, stdin=stdin, timeout=timeout, tool=TOOL,
                         missing=f"{TOOL} is not installed: set options.backup, run "
                                 "`mailstack backup init`, then `mailstack deploy`")
    if not result.data.get("ok"):
        raise MailstackError(f"{host.name}: backup {verb}: {result.data.get('error')}")
    return result


def uncommitted(root: Path) -> list[str] | None:
    """The site's uncommitted changes (`git status --porcelain`), or None when the site is
    not a git repository (or git is missing)."""
    try:
        proc = subprocess.run(["git", "-C", str(root), "status", "--porcelain"],
                              capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        return None
    if proc.returncode != 0:
        return None
    return [line for line in proc.stdout.splitlines() if line.strip()]


def refuse_dirty(site: Site) -> None:
    """The archives hold what is on the host; the site (desired state and the vault, whose
    passphrase opens the archives) is the user's git repository. A site with changes nobody
    committed would not be there to restore from."""
    changes = uncommitted(site.root)
    if changes is None:
        raise MailstackError(
            f"{site.root} is not a git repository: the site (mailstack.yml, the inventory and "
            "the vault with the backup's passphrase) must be kept safe for a restore. Commit "
            "it to a repository you push elsewhere, or pass --allow-dirty")
    if changes:
        raise MailstackError(
            f"the site {site.root} has uncommitted changes; commit (and push) them first, so "
            "that what a restore needs is safe too, or pass --allow-dirty:",
            details=changes[:10] + ([f"… and {len(changes) - 10} more"] if len(changes) > 10 else []))


def now(site: Site, host: str | None = None, *, allow_dirty: bool = False) -> list[ToolResult]:
    configured(site)
    if not allow_dirty:
        refuse_dirty(site)
    return [run_tool(site, h, "create", timeout=BACKUP_TIMEOUT) for h in hosts(site, host)]


def archives(site: Site, host: str | None = None) -> list[ToolResult]:
    configured(site)
    return [run_tool(site, h, "list", timeout=300) for h in hosts(site, host)]


def check(site: Site, host: str | None = None, *, verify_data: bool = False) -> list[ToolResult]:
    configured(site)
    return [run_tool(site, h, "check", stdin="data\n" if verify_data else "\n",
                     timeout=BACKUP_TIMEOUT) for h in hosts(site, host)]


# --------------------------------------------------------------------------- restore


@dataclass
class Restored:
    host: str
    address: str
    archive: str = ""
    staged_bytes: int = 0
    steps: list[tuple[str, float]] = field(default_factory=list)
    unlocked: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(s for _, s in self.steps)


def restore(site: Site, address: str, *, archive: str | None = None,
            deploy: Callable[..., Any], say: Callable[[str], None] = lambda _: None) -> Restored:
    """Onto a fresh host at `address` (the old one is gone): re-point the inventory, place
    borg and the backup's settings there (nothing else), extract and check the archive into
    a staging directory (a damaged archive stops here: the mail stack is not deployed), then
    deploy the site, which takes the staged store instead of making an empty one, put
    rspamd's data back, and unlock: the mail sealed before the backup and the mail queued
    for the host meanwhile are delivered. deploy(site, tags=…) runs a deploy and raises on
    failure."""
    backup = configured(site)
    backup_secrets(site.secrets.site)
    if archive is not None and archive != "latest" and not _archive_name_ok(archive):
        raise MailstackError(f"--archive {archive!r} is not an archive name (see "
                             "`mailstack backup list`)")
    if problem := host_problem(address):
        raise MailstackError(f"--host {address!r}: {problem}")
    old = load_hosts(site.root, site.inventory)
    if len(old) != 1:
        raise MailstackError(
            f"the inventory has {len(old)} hosts; `mailstack restore` restores a one-host "
            "site (point the dead host's ansible_host at the new address by hand, then run "
            "the steps of `mailstack restore` one by one)")
    host = old[0]
    result = Restored(host.name, address)

    def step(what: str, fn: Callable[[], Any]) -> Any:
        say(f"{what} …")
        started = time.monotonic()
        value = fn()
        result.steps.append((what, time.monotonic() - started))
        return value

    if host.address != address:
        write_inventory(site.root, host.name, address, host.ssh_user, host.ssh_port,
                        host.ssh_key, site.inventory)
        say(f"inventory: {host.name} now at {address} (was {host.address}); commit the change")
    if forget_host_key(site.known_hosts, address, host.ssh_port):
        # The user says this is a new machine: a key pinned for its address belonged to
        # another one (the dead host, or an address the provider handed out again).
        say(f"forgot the host key pinned for {address}: the new host's is pinned at first "
            "contact (compare it with your provider's console)")
    target = load_hosts(site.root, site.inventory)[0]
    step("placing borg and the backup's settings on the new host", lambda: deploy(site, tags="backup"))
    staged = step(f"extracting and checking archive {archive or 'latest'} from {backup.target}",
                  lambda: _stage(site, target, archive or "latest"))
    result.archive, result.staged_bytes = staged.data["archive"], staged.data["bytes"]
    step("deploying the site with the restored store", lambda: deploy(site))
    step("putting rspamd's learned data back", lambda: run_tool(site, target, "finish"))
    unlocked = step("unlocking: delivering the mail that waited",
                    lambda: unlock(site, host.name))
    result.unlocked = unlocked[0].data if unlocked else {}
    return result


def forget_host_key(known_hosts: Path, address: str, port: int) -> bool:
    """Remove the known_hosts lines of address (hashed or not: ssh-keygen -R)."""
    if not known_hosts.exists():
        return False
    name = address if port == 22 else f"[{address}]:{port}"
    proc = subprocess.run(["ssh-keygen", "-R", name, "-f", str(known_hosts)],
                          capture_output=True, text=True, check=False)
    Path(str(known_hosts) + ".old").unlink(missing_ok=True)
    return proc.returncode == 0 and " found: line " in proc.stdout


def _stage(site: Site, host: InventoryHost, archive: str) -> ToolResult:
    try:
        return run_tool(site, host, "stage", stdin=archive + "\n", timeout=BACKUP_TIMEOUT)
    except MailstackError as exc:
        raise MailstackError(f"{exc}. The new host has borg and the backup's settings, "
                             "nothing else: the mail stack was not deployed there") from None


def _archive_name_ok(name: str) -> bool:
    return ARCHIVE_NAME.fullmatch(name) is not None

