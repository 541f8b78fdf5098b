"""The built-in default target for users without a VPS: a local Debian "VPS".

Why this exists: `mailstack deploy` must have somewhere real to go on a laptop or a CI
machine. The sandbox is one systemd container started from the plain base image, so a deploy
sees a fresh host exactly as on a VPS and reaches it the same way: over SSH as root, with a
key made for it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from mailstack.deploy.ssh import ssh_argv
from mailstack.sandbox import containers, engine
from mailstack.sandbox.engine import SandboxError
from mailstack.sandbox.image import base_image

CONTAINER = "mailstack-sandbox"
NETWORK = "mailstack-sandbox"
HOSTNAME = "mail.sandbox.test"
SSH_USER = "root"
SSH_PORT = 22
KEY_NAME = "id_ed25519"
SANDBOX_LABEL = "mailstack.sandbox"
SSH_TIMEOUT = 60.0


@dataclass
class SandboxInfo:
    """Everything an inventory needs to reach the sandbox over SSH."""

    container: str
    ip: str
    ssh_user: str
    ssh_key: Path
    hostname: str

    def ssh_command(self, *remote: str) -> list[str]:
        """The argv of `ssh` into the sandbox (no host-key pinning: it is re-created often)."""
        return ssh_argv(self.ssh_user, self.ip, port=SSH_PORT, key=self.ssh_key,
                        known_hosts=None, remote=list(remote))


def default_state_dir() -> Path:
    """Where the sandbox SSH key lives: ~/.local/share/mailstack/sandbox/."""
    return Path.home() / ".local" / "share" / "mailstack" / "sandbox"


def _ensure_ssh_client() -> None:
    """ssh-keygen and ssh are needed on the controller; install openssh-client if missing."""
    if engine.which("ssh-keygen") and engine.which("ssh"):
        return
    engine.apt_install(["openssh-client"], "ssh/ssh-keygen not installed")


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
        raise SandboxError(f"ssh-keygen failed: {engine.last_line(proc.stderr)}; "
                           f"check that {state_dir} is writable")
    key.chmod(0o600)
    return key


def _prove_ssh(info: SandboxInfo) -> None:
    """Run `true` over real SSH: the deploy path must work, not just the port."""
    proc = subprocess.run(info.ssh_command("true"), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=SSH_TIMEOUT)
    if proc.returncode != 0:
        raise SandboxError(f"ssh root@{info.ip} failed (exit {proc.returncode}): "
                           f"{engine.last_line(proc.stderr)}; "
                           "try `mailstack sandbox down`, then `mailstack sandbox up`")


def sandbox_up(state_dir: Path | None = None) -> SandboxInfo:
    """Start (or reuse) the sandbox container and prove SSH into it works.

    Idempotent: a running sandbox is kept (its deployed state is the user's work);
    a stopped one (e.g. after a reboot) is started again rather than recreated.
    """
    state_dir = state_dir or default_state_dir()
    engine.ensure_engine()
    image = base_image()
    key = ensure_keypair(state_dir)
    pubkey = key.with_name(KEY_NAME + ".pub").read_text()
    containers.ensure_network(NETWORK)
    if containers.container_running(CONTAINER) is None:
        engine.log(f"starting sandbox {CONTAINER} ({HOSTNAME}) from {image}")
        # NET_ADMIN, as a KVM VPS has: the firewall and fail2ban's bans work as in production.
        host = containers.start_host(CONTAINER, image, hostname=HOSTNAME, network=NETWORK,
                                     ssh_pubkey=pubkey, labels={SANDBOX_LABEL: "1"},
                                     cap_add=("NET_ADMIN",))
    else:
        host = containers.resume_host(CONTAINER, network=NETWORK)
        containers.install_pubkey(CONTAINER, pubkey)  # the key may have been recreated since
    info = SandboxInfo(container=CONTAINER, ip=host.ip, ssh_user=SSH_USER, ssh_key=key,
                       hostname=HOSTNAME)
    containers.wait_for_port(host.ip, SSH_PORT, SSH_TIMEOUT)
    _prove_ssh(info)
    return info


def sandbox_down() -> bool:
    """Remove the sandbox container and its network; True if anything was removed.

    The SSH key is kept so a later sandbox_up reuses it.
    """
    if not engine.which("docker") or not engine.which("dockerd"):
        return False  # no engine installed: there cannot be a sandbox
    engine.ensure_engine()  # containers survive a stopped engine; start it to remove them
    removed = containers.remove_host(CONTAINER)
    removed = containers.remove_network(NETWORK) or removed
    return removed


def sandbox_status(state_dir: Path | None = None) -> SandboxInfo | None:
    """The running sandbox's SSH coordinates, or None if it is not running.

    Never starts the engine or anything else: a status query must be side-effect free.
    """
    if not engine.engine_answers() or not containers.container_running(CONTAINER):
        return None
    try:
        ip = containers.container_ip(CONTAINER, NETWORK)
    except SandboxError:
        return None
    key = (state_dir or default_state_dir()) / KEY_NAME
    return SandboxInfo(container=CONTAINER, ip=ip, ssh_user=SSH_USER, ssh_key=key,
                       hostname=HOSTNAME)
