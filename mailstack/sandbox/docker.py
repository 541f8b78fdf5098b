"""Docker as a source of real Debian hosts: the engine, and systemd containers reached over
SSH like a VPS. Used by `mailstack sandbox` (and, outside the product, by the test bed).

Why containers: the roles must meet a real Debian userland with systemd running the real
units. No registry is reachable from the machines this runs on, and no systemd runs as PID 1
there, so the engine is started by hand and images are built locally (see image.py).
Only the ``docker`` CLI is used (through subprocess): nothing beyond the standard library.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from mailstack.errors import MailstackError

MANAGED_LABEL = "mailstack.testbed=1"
ENGINE_LOG = Path("/var/log/dockerd.log")
ENGINE_TIMEOUT = 60.0
BOOT_TIMEOUT = 60.0
BUILD_LOCK = Path("/var/tmp/mailstack-testbed.lock")
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

SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SandboxError(MailstackError):
    """A step with Docker or a container failed; the message names the cause and the fix."""


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    """Progress goes to stderr so stdout stays machine-readable (image tags)."""
    print(f"testbed: {msg}", file=sys.stderr, flush=True)


def which(prog: str) -> str | None:
    """shutil.which that also looks in sbin dirs, which a non-login PATH may lack."""
    return shutil.which(prog) or shutil.which(prog, path=SBIN_PATH)


def docker_bin() -> str:
    """Path of the docker CLI, or a SandboxError telling how to get it."""
    path = which("docker")
    if not path:
        raise SandboxError("docker CLI not found; run `mailstack sandbox up` as root "
                           "(installs docker.io) or apt-get install docker.io")
    return path


def docker(*args: str, input: str | None = None, check: bool = True,
            timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run one docker CLI command, capturing text output; raise SandboxError on failure."""
    cmd = [docker_bin(), *args]
    try:
        proc = subprocess.run(cmd, input=input, text=True, capture_output=True,
                              timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise SandboxError(f"`docker {' '.join(args[:3])}` timed out after {timeout:.0f} s; "
                           f"check the engine with `docker info` and {ENGINE_LOG}") from exc
    if check and proc.returncode != 0:
        raise SandboxError(f"`docker {short(args)}` failed (exit {proc.returncode}): "
                           f"{last_line(proc.stderr or proc.stdout)}")
    return proc


def short(args: Sequence[str], limit: int = 6) -> str:
    """A readable, truncated rendering of a command for error messages."""
    text = shlex.join(list(args[:limit]))
    return text + (" …" if len(args) > limit else "")


def last_line(text: str) -> str:
    """The last non-empty line of tool output: usually the actual error."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def is_root() -> bool:
    return os.geteuid() == 0


def is_debian() -> bool:
    return Path("/etc/debian_version").exists() and which("apt-get") is not None


def apt_install(packages: Sequence[str], why: str) -> None:
    """Install Debian packages on the controller, only when we are root on Debian.

    Why: a fresh machine (and CI) starts without docker.io/debootstrap/ssh, and
    the project's scripts must set themselves up; anywhere else we say what to do.
    """
    if not (is_root() and is_debian()):
        raise SandboxError(f"{why}; install {' '.join(packages)} with your package manager "
                           "(automatic install needs root on Debian)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive",
               PATH=SBIN_PATH + ":" + os.environ.get("PATH", ""))
    log(f"{why}: apt-get install {' '.join(packages)}")
    for cmd in (["apt-get", "update"],
                ["apt-get", "install", "-y", *packages]):
        proc = subprocess.run(cmd, env=env, text=True, capture_output=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise SandboxError(f"`{' '.join(cmd[:3])}` failed (exit {proc.returncode}): "
                               f"{last_line(proc.stderr or proc.stdout)}; fix apt on this machine and retry")


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    """Serialise image builds across processes (parallel test runs, several engineers)."""
    BUILD_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(BUILD_LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def short_hash(obj: object) -> str:
    """12 hex of the sha256 of a canonical JSON rendering: a stable cache key."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False).returncode == 0


# --------------------------------------------------------------------------- engine


def engine_answers() -> bool:
    """True when `docker info` reaches a daemon (installed, running, permitted)."""
    if not which("docker"):
        return False
    try:
        proc = subprocess.run([docker_bin(), "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=15, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


def _dockerd_running() -> bool:
    """`pgrep -x dockerd`, with a /proc scan for minimal hosts without procps."""
    try:
        return subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True).returncode == 0
    except FileNotFoundError:
        for comm in Path("/proc").glob("[0-9]*/comm"):
            with contextlib.suppress(OSError):
                if comm.read_text().strip() == "dockerd":
                    return True
        return False


def _start_dockerd() -> None:
    """Start dockerd detached, logging to ENGINE_LOG (no systemd here to do it)."""
    if not is_root():
        raise SandboxError("docker engine is not running and only root can start it; "
                           "run `sudo dockerd` or `mailstack sandbox up` as root")
    dockerd = which("dockerd")
    assert dockerd is not None
    ENGINE_LOG.parent.mkdir(parents=True, exist_ok=True)
    log(f"starting dockerd (log: {ENGINE_LOG})")
    env = dict(os.environ, PATH=SBIN_PATH + ":" + os.environ.get("PATH", ""))
    with open(ENGINE_LOG, "ab") as out:
        subprocess.Popen(["nohup", dockerd], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                         start_new_session=True, close_fds=True, env=env)


def ensure_engine() -> None:
    """Make `docker info` work: install docker.io/debootstrap if missing, start dockerd, wait.

    Why: no systemd is PID 1 on these machines, so nothing starts the engine for us.
    """
    if engine_answers():
        return
    missing = [pkg for prog, pkg in (("dockerd", "docker.io"), ("docker", "docker.io"),
                                     ("debootstrap", "debootstrap")) if not which(prog)]
    if missing:
        apt_install(sorted(set(missing) | {"docker.io", "debootstrap"}),
                    "docker engine or debootstrap not installed")
    if not _dockerd_running():
        _start_dockerd()
    deadline = time.monotonic() + ENGINE_TIMEOUT
    while time.monotonic() < deadline:
        if engine_answers():
            return
        time.sleep(0.5)
    if _dockerd_running() and not is_root():
        raise SandboxError("dockerd runs but `docker info` fails; run as root or join the docker group")
    raise SandboxError(f"docker engine did not answer within {ENGINE_TIMEOUT:.0f} s; see {ENGINE_LOG}")


# --------------------------------------------------------------------------- hosts


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
               ssh_pubkey: str | None = None, labels: dict[str, str] | None = None) -> Host:
    """Start a systemd container with TESTBED.md's flags, wait for boot, return its address."""
    if container_state(name) is not None:
        raise SandboxError(f"container {name} already exists; remove it with `docker rm -f {name}`")
    args = ["run", "-d", "--name", name, "--hostname", hostname, "--label", MANAGED_LABEL]
    for key, value in (labels or {}).items():
        args += ["--label", f"{key}={value}"]
    if network:
        args += ["--network", network]
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

