"""Every SSH connection mailstack makes, built in one place: deploy (through Ansible), the
storage tool (unlock, status), and the sandbox's own check.

A site's hosts are pinned: the first contact trusts the host key and records it in the site's
known_hosts; a changed key later is refused (a rebuilt server must be forgotten on purpose).
Sandbox and test hosts are re-created with new keys every time, so they are never pinned.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mailstack.errors import MailstackError

CONNECT_TIMEOUT = 10
# Ansible reuses one connection for all tasks on a host (its default ssh_args, kept).
CONNECTION_SHARING = ("-o", "ControlMaster=auto", "-o", "ControlPersist=60s")


def ssh_options(known_hosts: Path | None) -> list[str]:
    """The -o options: non-interactive, bounded connect time, and the host-key policy."""
    options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}"]
    if known_hosts is None:
        return [*options, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR"]
    return [*options, "-o", "StrictHostKeyChecking=accept-new",
            "-o", f"UserKnownHostsFile={known_hosts}"]


def ssh_argv(user: str, address: str, *, port: int = 22, key: str | Path | None = None,
             known_hosts: Path | None, remote: list[str]) -> list[str]:
    """`ssh … user@address -- REMOTE` (REMOTE runs through the remote shell as given).
    Names are checked where they are read (site, inventory); this is the last line of defence:
    ssh would take a destination starting with "-" as an option (-oProxyCommand=…)."""
    if user.startswith("-") or address.startswith("-"):
        raise MailstackError(f"refusing to run ssh: {user}@{address} would be read as an option")
    argv = ["ssh", *ssh_options(known_hosts), "-p", str(port)]
    if key:
        argv += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
    return [*argv, f"{user}@{address}", "--", *remote]


def control_path_dir(site_root: Path) -> Path:
    """Where Ansible keeps its shared SSH connections for one site. Its default directory is
    shared by every site and keyed only by address, port and user, so two sites whose hosts
    reuse an address (re-created test or sandbox hosts) could ride each other's connection.
    Short (a unix socket path has ~100 bytes), private, one per site."""
    digest = hashlib.sha256(str(site_root.resolve()).encode()).hexdigest()[:12]
    path = Path.home() / ".cache" / "mailstack" / "ssh" / digest
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def ansible_ssh_args(known_hosts: Path) -> str:
    """ANSIBLE_SSH_ARGS for `mailstack deploy`: connection sharing plus the site's pinning."""
    return " ".join([*CONNECTION_SHARING, *ssh_options(known_hosts)])
