"""The built-in default target for users without a VPS: a local Debian "VPS".

Why this exists: `mailstack deploy` must have somewhere real to go on a laptop
or CI machine.  The sandbox is one systemd container started from the plain
BASE image (not the stack image), so a deploy sees a fresh host exactly as on a
VPS and reaches it the same way: over SSH as root with a key made for it.

Built on mailstack.testbed; `python -m mailstack.sandbox [up|down|status]`
drives it by hand.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mailstack import testbed
from mailstack.testbed import TestbedError

CONTAINER = "mailstack-sandbox"
NETWORK = "mailstack-sandbox"
HOSTNAME = "mail.sandbox.test"
SSH_USER = "root"
KEY_NAME = "id_ed25519"
SANDBOX_LABEL = "mailstack.sandbox"
SSH_TIMEOUT = 60.0

# Host keys are new for every sandbox container; pinning them would only make a
# recreated sandbox look like an attack, so they are not recorded anywhere.
SSH_OPTIONS: tuple[str, ...] = (
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "BatchMode=yes",
    "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=10",
)


@dataclass
class SandboxInfo:
    """Everything an inventory needs to reach the sandbox over SSH."""

    container: str
    ip: str
    ssh_user: str
    ssh_key: Path
    hostname: str


def default_state_dir() -> Path:
    """Where the sandbox SSH key lives: ~/.local/share/mailstack/sandbox/."""
    return Path.home() / ".local" / "share" / "mailstack" / "sandbox"


def _ensure_ssh_client() -> None:
    """ssh-keygen and ssh are needed on the controller; install openssh-client if missing."""
    if testbed._which("ssh-keygen") and testbed._which("ssh"):
        return
    testbed.apt_install(["openssh-client"], "ssh/ssh-keygen not installed")


def ensure_keypair(state_dir: Path) -> Path:
    """Create the sandbox's ed25519 key once (private key 0600, dir 0700); return its path."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = state_dir / KEY_NAME
    pub = key.with_name(KEY_NAME + ".pub")
    if key.exists() and pub.exists():
        key.chmod(0o600)
        return key
    _ensure_ssh_client()
    for stale in (key, pub):
        stale.unlink(missing_ok=True)
    proc = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mailstack-sandbox",
                           "-f", str(key)], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise TestbedError(f"ssh-keygen failed: {testbed._last_line(proc.stderr)}; "
                           f"check that {state_dir} is writable")
    key.chmod(0o600)
    return key


def ssh_command(info: SandboxInfo, *remote: str) -> list[str]:
    """The argv of `ssh` into the sandbox (non-interactive, no host-key pinning)."""
    return ["ssh", "-i", str(info.ssh_key), *SSH_OPTIONS, f"{info.ssh_user}@{info.ip}", *remote]


def _prove_ssh(info: SandboxInfo) -> None:
    """Run `true` over real SSH: the deploy path must work, not just the port."""
    proc = subprocess.run(ssh_command(info, "true"), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=SSH_TIMEOUT)
    if proc.returncode != 0:
        raise TestbedError(f"ssh root@{info.ip} failed (exit {proc.returncode}): "
                           f"{testbed._last_line(proc.stderr)}; "
                           "try `python -m mailstack.sandbox down` then up")


def sandbox_up(state_dir: Path | None = None) -> SandboxInfo:
    """Start (or reuse) the sandbox container and prove SSH into it works.

    Idempotent: a running sandbox is kept (its deployed state is the user's work);
    a stopped one (e.g. after a reboot) is started again rather than recreated.
    """
    state_dir = state_dir or default_state_dir()
    testbed.ensure_engine()
    image = testbed.base_image()
    key = ensure_keypair(state_dir)
    pubkey = key.with_name(KEY_NAME + ".pub").read_text()
    testbed.ensure_network(NETWORK)
    if testbed.container_running(CONTAINER) is None:
        testbed._log(f"starting sandbox {CONTAINER} ({HOSTNAME}) from {image}")
        host = testbed.start_host(CONTAINER, image, hostname=HOSTNAME, network=NETWORK,
                                  ssh_pubkey=pubkey, labels={SANDBOX_LABEL: "1"})
    else:
        host = testbed.resume_host(CONTAINER, network=NETWORK)
        testbed.install_pubkey(CONTAINER, pubkey)  # the key may have been recreated since
    info = SandboxInfo(container=CONTAINER, ip=host.ip, ssh_user=SSH_USER, ssh_key=key, hostname=HOSTNAME)
    ip = host.ip
    testbed.wait_for_port(ip, 22, SSH_TIMEOUT)
    _prove_ssh(info)
    return info


def sandbox_down() -> bool:
    """Remove the sandbox container and its network; True if anything was removed.

    The SSH key is kept so a later sandbox_up reuses it.
    """
    if not testbed._which("docker") or not testbed._which("dockerd"):
        return False  # no engine installed: there cannot be a sandbox
    testbed.ensure_engine()  # containers survive a stopped engine; start it to remove them
    removed = testbed.remove_host(CONTAINER)
    removed = testbed.remove_network(NETWORK) or removed
    return removed


def sandbox_status(state_dir: Path | None = None) -> SandboxInfo | None:
    """The running sandbox's SSH coordinates, or None if it is not running.

    Never starts the engine or anything else: a status query must be side-effect free.
    """
    if not testbed.engine_answers() or not testbed.container_running(CONTAINER):
        return None
    try:
        ip = testbed.container_ip(CONTAINER, NETWORK)
    except TestbedError:
        return None
    key = (state_dir or default_state_dir()) / KEY_NAME
    return SandboxInfo(container=CONTAINER, ip=ip, ssh_user=SSH_USER, ssh_key=key, hostname=HOSTNAME)


def main(argv: list[str] | None = None) -> int:
    """`python -m mailstack.sandbox [up|down|status]` for use by hand."""
    parser = argparse.ArgumentParser(prog="python -m mailstack.sandbox",
                                     description="Manage the local sandbox Debian host.")
    parser.add_argument("action", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    try:
        if args.action == "down":
            print("removed" if sandbox_down() else "nothing to remove")
            return 0
        info = sandbox_up() if args.action == "up" else sandbox_status()
    except TestbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if info is None:
        print("not running")
        return 3
    print(f"{info.container} {info.hostname} {info.ssh_user}@{info.ip} key={info.ssh_key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
