"""Real Debian hosts as systemd containers, reached over SSH like a VPS: started with the
flags TESTBED.md verified (systemd as PID 1, /dev/fuse, never --privileged), waited for until
systemd is up, on user-defined networks where they find each other by name.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import dataclass

from mailstack.sandbox.engine import MANAGED_LABEL, SandboxError, docker, last_line, log, short

BOOT_TIMEOUT = 60.0
SYSTEMD = "/lib/systemd/systemd"

# The `docker run` flags from TESTBED.md section 3.  Never --privileged: this
# machine's capability bounding set lacks CAP_SYS_RESOURCE and runc fails.
RUN_FLAGS: tuple[str, ...] = (
    "--cap-add", "SYS_ADMIN",
    "--device", "/dev/fuse",
    "--cgroupns=host",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs", "/run",
    "--tmpfs", "/run/lock",
    "--security-opt", "seccomp=unconfined",
    "--security-opt", "apparmor=unconfined",
)


@dataclass
class Host:
    """A running systemd container: its name and its IP on the network asked for."""

    name: str
    ip: str


def container_state(name: str) -> dict[str, object] | None:
    """`docker container inspect` as a dict, or None when no such container exists."""
    proc = docker("container", "inspect", name, check=False)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout)
    return data[0] if data else None


def container_running(name: str) -> bool | None:
    """True if running, False if it exists but is stopped, None if there is no such container."""
    info = container_state(name)
    if info is None:
        return None
    return bool(info["State"]["Running"])  # type: ignore[index]


def resume_host(name: str, *, network: str | None = None) -> Host:
    """Start an existing (possibly stopped) host again and wait for systemd.

    Why: after a reboot of the machine the sandbox container is stopped but holds
    the user's deployed state; starting it beats recreating it.
    """
    running = container_running(name)
    if running is None:
        raise SandboxError(f"container {name} does not exist; create it with start_host")
    if not running:
        log(f"starting stopped container {name}")
        docker("start", name, timeout=120)
    wait_for_systemd(name)
    return Host(name=name, ip=container_ip(name, network))



def container_ip(name: str, network: str | None = None) -> str:
    """IP of a container on `network` (default bridge when None)."""
    info = container_state(name)
    if info is None:
        raise SandboxError(f"container {name} does not exist; start it first")
    nets: dict[str, dict[str, str]] = info["NetworkSettings"]["Networks"]  # type: ignore[index]
    net = network or "bridge"
    ip = (nets.get(net) or {}).get("IPAddress", "")
    if not ip:
        raise SandboxError(f"container {name} has no address on network {net}; "
                           f"it is on: {', '.join(nets) or 'none'}")
    return ip


def wait_for_systemd(name: str, timeout: float = BOOT_TIMEOUT) -> str:
    """Wait until systemd in the container says running/degraded; return that state.

    On timeout the error carries `systemctl --failed` and pending jobs, which is
    what one needs to see why boot did not finish.
    """
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        proc = docker("exec", name, "systemctl", "is-system-running", check=False, timeout=30)
        state = proc.stdout.strip()
        if state in ("running", "degraded"):
            return state
        if not container_running(name):
            logs = docker("logs", "--tail", "5", name, check=False)
            raise SandboxError(f"container {name} exited during boot: "
                               f"{last_line(logs.stdout + logs.stderr)}; check the docker run flags")
        time.sleep(0.25)
    failed = docker("exec", name, "systemctl", "--failed", "--no-legend", "--plain",
                     check=False, timeout=30).stdout
    jobs = docker("exec", name, "systemctl", "list-jobs", "--no-legend", check=False, timeout=30).stdout
    raise SandboxError(f"systemd in {name} not running after {timeout:.0f} s (state {state or 'unknown'}); "
                       f"failed: {' / '.join(failed.split(chr(10))).strip() or 'none'}; "
                       f"pending jobs: {' / '.join(jobs.split(chr(10))).strip() or 'none'}")


def install_pubkey(name: str, ssh_pubkey: str) -> None:
    """Write root's authorized_keys (0600) through stdin, never through argv."""
    script = ("umask 077 && mkdir -p /root/.ssh && chmod 700 /root/.ssh && "
              "cat > /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys")
    exec_in(name, ["sh", "-c", script], input=ssh_pubkey.strip() + "\n")


def start_host(name: str, image: str, *, hostname: str, network: str | None = None,
               ssh_pubkey: str | None = None, labels: dict[str, str] | None = None,
               cap_add: tuple[str, ...] = (), memory: str | None = None) -> Host:
    """Start a systemd container with TESTBED.md's flags, wait for boot, return its address.
    cap_add: more capabilities, e.g. NET_ADMIN for a host that loads its own firewall (a KVM
    VPS has it; the sandbox without it stays a valid case). memory: a limit like "1g" (and
    no swap beyond it), a small VPS."""
    if container_state(name) is not None:
        raise SandboxError(f"container {name} already exists; remove it with `docker rm -f {name}`")
    args = ["run", "-d", "--name", name, "--hostname", hostname, "--label", MANAGED_LABEL]
    for key, value in (labels or {}).items():
        args += ["--label", f"{key}={value}"]
    if network:
        args += ["--network", network]
    for cap in cap_add:
        args += ["--cap-add", cap]
    if memory:
        args += ["--memory", memory, "--memory-swap", memory]
    args += [*RUN_FLAGS, image, SYSTEMD]
    docker(*args, timeout=120)
    wait_for_systemd(name)
    if ssh_pubkey:
        install_pubkey(name, ssh_pubkey)
    return Host(name=name, ip=container_ip(name, network))


def remove_host(name: str) -> bool:
    """Force-remove a container (and its anonymous volumes); False if it did not exist."""
    if container_state(name) is None:
        return False
    docker("rm", "-f", "-v", name, timeout=120)
    return True


def ensure_network(name: str) -> None:
    """Create a user-defined bridge network (containers resolve each other by name)."""
    if docker("network", "inspect", name, check=False).returncode == 0:
        return
    docker("network", "create", "--label", MANAGED_LABEL, name)


def remove_network(name: str) -> bool:
    """Remove a docker network; False if it did not exist."""
    if docker("network", "inspect", name, check=False).returncode != 0:
        return False
    docker("network", "rm", name)
    return True


def exec_in(name: str, cmd: list[str], input: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """`docker exec` (with -i when input is given) in text mode.

    With check=True a non-zero exit raises SandboxError naming the command and
    its last line of output; with check=False the caller inspects returncode.
    """
    args = ["exec", *(["-i"] if input is not None else []), name, *cmd]
    proc = docker(*args, input=input, check=False)
    if check and proc.returncode != 0:
        raise SandboxError(f"`{short(cmd)}` in {name} failed (exit {proc.returncode}): "
                           f"{last_line(proc.stderr or proc.stdout)}")
    return proc


def wait_for_port(ip: str, port: int, timeout: float) -> None:
    """Poll until a TCP connect to ip:port succeeds (used for sshd, SMTP, IMAP…)."""
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((ip, port), timeout=2):
                return
        except OSError as exc:
            last = exc
            time.sleep(0.25)
    raise SandboxError(f"{ip}:{port} did not accept connections within {timeout:.0f} s ({last}); "
                       "check the service in the container with systemctl status")
