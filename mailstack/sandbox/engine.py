"""The Docker engine, driven through its CLI only (nothing beyond the standard library): found
or installed from Debian's packages, started by hand where no systemd runs as PID 1 (these
machines), and the small helpers every Docker step shares.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from mailstack.errors import MailstackError

MANAGED_LABEL = "mailstack.testbed=1"
ENGINE_LOG = Path("/var/log/dockerd.log")
ENGINE_TIMEOUT = 60.0
BUILD_LOCK = Path("/var/tmp/mailstack-testbed.lock")
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
