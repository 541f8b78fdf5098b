"""Running the host-side storage tool over SSH, with the inventory's connection settings
(the same key, port, user and known_hosts file as `mailstack deploy`)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

from mailstack.deploy.ssh import ssh_argv
from mailstack.errors import MailstackError
from mailstack.host.storage_tool import NOT_INITIALIZED, WRONG_PASSPHRASE
from mailstack.host.storage_tool import PATH as TOOL
from mailstack.site.directory import Site
from mailstack.site.inventory import InventoryHost, select_hosts

__all__ = ["NOT_INITIALIZED", "TOOL", "WRONG_PASSPHRASE", "ToolResult", "hosts", "run_tool",
           "tool_result"]


STORAGE_MISSING = "the storage tool is not installed; run `mailstack deploy` first"


@dataclass(frozen=True)
class ToolResult:
    host: str
    code: int
    data: dict[str, Any]


def ssh_command(site: Site, host: InventoryHost, remote: list[str]) -> list[str]:
    """`ssh` to an inventory host as `mailstack deploy` reaches it (key, port, user, the site's
    known_hosts), through `sudo -n` unless the SSH user is root."""
    sudo = [] if host.ssh_user == "root" else ["sudo", "-n"]
    return ssh_argv(host.ssh_user, host.address, port=host.ssh_port, key=host.ssh_key,
                    known_hosts=site.known_hosts, remote=[*sudo, *remote])


def hosts(site: Site, only: str | None) -> list[InventoryHost]:
    return select_hosts(site.root, site.inventory, only)


def run_tool(site: Site, host: InventoryHost, verb: str, *, stdin: str | None = None,
             timeout: float = 120, tool: str = TOOL, missing: str = STORAGE_MISSING
             ) -> ToolResult:
    """Run `TOOL VERB` on the host (the storage tool unless told: the backup tool's runs go
    through here too); its last stdout line is JSON. missing: the fix when it is not there."""
    try:
        proc = subprocess.run(ssh_command(site, host, [tool, verb]), input=stdin,
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise MailstackError(f"{host.name}: no answer over SSH within {timeout:.0f} s") from None
    return tool_result(host, verb, proc.returncode, proc.stdout, proc.stderr, tool=tool,
                       missing=missing)


def tool_result(host: InventoryHost, verb: str, returncode: int, stdout: str, stderr: str, *,
                tool: str = TOOL, missing: str = STORAGE_MISSING) -> ToolResult:
    """What one run of the tool over SSH came to: its JSON answer (whatever its exit code),
    or a MailstackError saying why there is none (SSH, a missing tool, garbage)."""
    lines = stdout.strip().splitlines()
    try:
        data = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        data = {}
    if not isinstance(data, dict):  # a stray number or string is no answer either
        data = {}
    if returncode == 255:
        raise MailstackError(f"{host.name}: cannot reach {host.ssh_user}@{host.address}:"
                             f"{host.ssh_port} over SSH: {stderr.strip()}")
    # 127/"No such file": the remote shell; "command not found": sudo (exit 1).
    if not data and (returncode == 127 or "No such file" in stderr
                     or "command not found" in stderr):
        raise MailstackError(f"{host.name}: {missing}")
    if not data:
        raise MailstackError(f"{host.name}: {tool} {verb} failed (exit {returncode}): "
                             f"{(stderr or stdout).strip()[-300:]}")
    return ToolResult(host.name, returncode, data)
