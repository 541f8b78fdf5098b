"""Real Debian hosts as systemd containers, for tests and for the sandbox target.

Why this exists: the roles must be exercised against a real Debian userland with
systemd running the real units (Postfix, Dovecot, MariaDB, OpenDKIM), reached the
way a VPS is reached (SSH).  No container registry is reachable from the machines
this runs on, so the base image is built locally with debootstrap and imported,
and the Docker engine is started by hand because there is no systemd as PID 1.
The recipe follows the verified notes in /work/shared/TESTBED.md.

Only the ``docker`` CLI is used (through subprocess); no Docker SDK, so nothing
beyond the Python standard library is needed on the controller.

Run ``python -m mailstack.testbed setup`` to start the engine and build (or find
cached) the base and stack images.
"""

from __future__ import annotations

import argparse
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
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# --------------------------------------------------------------------------- recipe

SUITE = "bookworm"
VARIANT = "minbase"
# What TESTBED.md lists, plus sudo (Ansible's become and users expect it on a VPS).
INCLUDE_PACKAGES: tuple[str, ...] = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "ca-certificates",
    "openssh-server",
    "iproute2",
    "sudo",
)
FALLBACK_MIRROR = "http://deb.debian.org/debian"
FALLBACK_SECURITY = "http://deb.debian.org/debian-security"
# Bump when anything about how the rootfs is prepared changes and the text hashed
# below does not capture it.
RECIPE_VERSION = "mailstack-base-3"

BASE_REPO = "mailstack-base"
STACK_REPO = "mailstack-stack"
STACK_RECIPE_VERSION = "mailstack-stack-3"
# Every package the roles install (for each storage method; tests/unit checks this against
# roles/*/defaults), so that a deploy onto a host from this image downloads nothing.
STACK_PACKAGES: tuple[str, ...] = (
    "postfix",
    "postfix-mysql",
    "libsasl2-modules",
    "dovecot-core",
    "dovecot-imapd",
    "dovecot-lmtpd",
    "dovecot-mysql",
    "opendkim",
    "opendkim-tools",
    "mariadb-server",
    "mariadb-client",
    "gocryptfs",
    "encfs",
    "fuse3",
    "nftables",
    "systemd-timesyncd",
    "unattended-upgrades",
    "swaks",
    "ca-certificates",
    "openssl",
)
# Postfix asks a question at install time; "No configuration" leaves main.cf to us.
STACK_DEBCONF = "postfix postfix/main_mailer_type select No configuration\n"
# ssl-cert (pulled in by postfix/dovecot-core) makes a "snakeoil" key and cert at
# install time, named after the build container.  The image must not carry one
# shared key, so it is deleted before the commit and made again at first boot
# with the container's own hostname, as a real install would have it.
SNAKEOIL_UNIT_NAME = "mailstack-snakeoil.service"
SNAKEOIL_UNIT = """\
[Unit]
Description=Generate the ssl-cert snakeoil certificate for this host (mailstack test bed)
Before=dovecot.service postfix.service postfix@-.service
ConditionPathExists=!/etc/ssl/private/ssl-cert-snakeoil.key
ConditionPathExists=/usr/sbin/make-ssl-cert

[Service]
Type=oneshot
ExecStart=/usr/sbin/make-ssl-cert generate-default-snakeoil
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
"""

TESTBED_LABEL = "mailstack.testbed=1"
ENGINE_LOG = Path("/var/log/dockerd.log")
ENGINE_TIMEOUT = 60.0
BOOT_TIMEOUT = 60.0
BUILD_LOCK = Path("/var/tmp/mailstack-testbed.lock")
SYSTEMD = "/lib/systemd/systemd"

# Generates SSH host keys at boot, so containers from one image never share keys
# (the image itself carries none).  Debian's ssh.service does not run
# `ssh-keygen -A` itself; without keys sshd would refuse to start.
HOSTKEYS_UNIT_NAME = "mailstack-ssh-hostkeys.service"
HOSTKEYS_UNIT = """\
[Unit]
Description=Generate missing SSH host keys (mailstack test bed)
Before=ssh.service ssh.socket
ConditionPathExists=/usr/bin/ssh-keygen

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target ssh.service
"""

# Units that cannot work inside a container and only add noise or failures.
# Kept empty unless a unit is seen failing in `systemctl --failed`; see
# _prepare_rootfs.  (Decided by observation, not guesswork.)
MASKED_UNITS: tuple[str, ...] = ()

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


class TestbedError(Exception):
    """A test-bed step failed; the message names the cause and the fix in one line."""

    __test__ = False  # not a pytest test class despite the name


# --------------------------------------------------------------------------- helpers


def _log(msg: str) -> None:
    """Progress goes to stderr so stdout stays machine-readable (image tags)."""
    print(f"testbed: {msg}", file=sys.stderr, flush=True)


def _which(prog: str) -> str | None:
    """shutil.which that also looks in sbin dirs, which a non-login PATH may lack."""
    return shutil.which(prog) or shutil.which(prog, path=SBIN_PATH)


def _docker_bin() -> str:
    """Path of the docker CLI, or a TestbedError telling how to get it."""
    path = _which("docker")
    if not path:
        raise TestbedError("docker CLI not found; run `python -m mailstack.testbed setup` as root "
                           "(installs docker.io) or apt-get install docker.io")
    return path


def _docker(*args: str, input: str | None = None, check: bool = True,
            timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run one docker CLI command, capturing text output; raise TestbedError on failure."""
    cmd = [_docker_bin(), *args]
    try:
        proc = subprocess.run(cmd, input=input, text=True, capture_output=True,
                              timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"`docker {' '.join(args[:3])}` timed out after {timeout:.0f} s; "
                           f"check the engine with `docker info` and {ENGINE_LOG}") from exc
    if check and proc.returncode != 0:
        raise TestbedError(f"`docker {_short(args)}` failed (exit {proc.returncode}): "
                           f"{_last_line(proc.stderr or proc.stdout)}")
    return proc


def _short(args: Sequence[str], limit: int = 6) -> str:
    """A readable, truncated rendering of a command for error messages."""
    text = shlex.join(list(args[:limit]))
    return text + (" …" if len(args) > limit else "")


def _last_line(text: str) -> str:
    """The last non-empty line of tool output: usually the actual error."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _is_root() -> bool:
    return os.geteuid() == 0


def _is_debian() -> bool:
    return Path("/etc/debian_version").exists() and _which("apt-get") is not None


def apt_install(packages: Sequence[str], why: str) -> None:
    """Install Debian packages on the controller, only when we are root on Debian.

    Why: a fresh machine (and CI) starts without docker.io/debootstrap/ssh, and
    the project's scripts must set themselves up; anywhere else we say what to do.
    """
    if not (_is_root() and _is_debian()):
        raise TestbedError(f"{why}; install {' '.join(packages)} with your package manager "
                           "(automatic install needs root on Debian)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive",
               PATH=SBIN_PATH + ":" + os.environ.get("PATH", ""))
    _log(f"{why}: apt-get install {' '.join(packages)}")
    for cmd in (["apt-get", "update"],
                ["apt-get", "install", "-y", *packages]):
        proc = subprocess.run(cmd, env=env, text=True, capture_output=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise TestbedError(f"`{' '.join(cmd[:3])}` failed (exit {proc.returncode}): "
                               f"{_last_line(proc.stderr or proc.stdout)}; fix apt on this machine and retry")


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """Serialise image builds across processes (parallel test runs, several engineers)."""
    BUILD_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(BUILD_LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _short_hash(obj: object) -> str:
    """12 hex of the sha256 of a canonical JSON rendering: a stable cache key."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _image_exists(tag: str) -> bool:
    return _docker("image", "inspect", tag, check=False).returncode == 0


# --------------------------------------------------------------------------- engine


def engine_answers() -> bool:
    """True when `docker info` reaches a daemon (installed, running, permitted)."""
    if not _which("docker"):
        return False
    try:
        proc = subprocess.run([_docker_bin(), "info", "--format", "{{.ServerVersion}}"],
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
    if not _is_root():
        raise TestbedError("docker engine is not running and only root can start it; "
                           "run `sudo dockerd` or `python -m mailstack.testbed setup` as root")
    dockerd = _which("dockerd")
    assert dockerd is not None
    ENGINE_LOG.parent.mkdir(parents=True, exist_ok=True)
    _log(f"starting dockerd (log: {ENGINE_LOG})")
    env = dict(os.environ, PATH=SBIN_PATH + ":" + os.environ.get("PATH", ""))
    with open(ENGINE_LOG, "ab") as log:
        subprocess.Popen(["nohup", dockerd], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True, close_fds=True, env=env)


def ensure_engine() -> None:
    """Make `docker info` work: install docker.io/debootstrap if missing, start dockerd, wait.

    Why: no systemd is PID 1 on these machines, so nothing starts the engine for us.
    """
    if engine_answers():
        return
    missing = [pkg for prog, pkg in (("dockerd", "docker.io"), ("docker", "docker.io"),
                                     ("debootstrap", "debootstrap")) if not _which(prog)]
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
    if _dockerd_running() and not _is_root():
        raise TestbedError("dockerd runs but `docker info` fails; run as root or join the docker group")
    raise TestbedError(f"docker engine did not answer within {ENGINE_TIMEOUT:.0f} s; see {ENGINE_LOG}")


# --------------------------------------------------------------------------- apt sources


@dataclass(frozen=True)
class _AptSource:
    """One `deb` entry of the host's apt configuration."""

    uri: str
    suite: str
    components: tuple[str, ...]


def _parse_one_line(text: str) -> list[_AptSource]:
    """Parse sources.list one-line format: `deb [opts] URI SUITE COMP...`."""
    out: list[_AptSource] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        rest = line[4:].strip()
        if rest.startswith("["):
            end = rest.find("]")
            if end < 0:
                continue
            rest = rest[end + 1:].strip()
        parts = rest.split()
        if len(parts) >= 3:
            out.append(_AptSource(parts[0], parts[1], tuple(parts[2:])))
    return out


def _parse_deb822(text: str) -> list[_AptSource]:
    """Parse deb822 .sources stanzas (Types/URIs/Suites/Components, Enabled: no skipped)."""
    out: list[_AptSource] = []
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last_key = ""
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if current:
                stanzas.append(current)
            current, last_key = {}, ""
            continue
        if raw[0] in " \t" and last_key:
            current[last_key] += " " + raw.strip()
            continue
        key, _, value = raw.partition(":")
        last_key = key.strip().lower()
        current[last_key] = value.strip()
    for st in stanzas:
        if st.get("enabled", "yes").lower() == "no" or "deb" not in st.get("types", "").split():
            continue
        comps = tuple(st.get("components", "").split())
        for uri in st.get("uris", "").split():
            for suite in st.get("suites", "").split():
                out.append(_AptSource(uri, suite, comps))
    return out


def _host_apt_sources(root: Path = Path("/")) -> list[_AptSource]:
    """All enabled `deb` entries the host's apt uses, in apt's reading order."""
    etc = root / "etc/apt"
    found: list[_AptSource] = []
    main_list = etc / "sources.list"
    if main_list.is_file():
        found += _parse_one_line(main_list.read_text(errors="replace"))
    d = etc / "sources.list.d"
    if d.is_dir():
        for f in sorted(d.iterdir()):
            if f.name.endswith(".list") and f.is_file():
                found += _parse_one_line(f.read_text(errors="replace"))
            elif f.name.endswith(".sources") and f.is_file():
                found += _parse_deb822(f.read_text(errors="replace"))
    return [s for s in found if s.uri.startswith(("http://", "https://"))]


def debian_sources(root: Path = Path("/")) -> tuple[str, list[str]]:
    """(mirror for debootstrap, sources.list lines for the image), taken from the host.

    Why: the host's mirror is the one known to be reachable from this machine; the
    image gets bookworm, bookworm-updates and the security suite if the host has them.
    """
    sources = [s for s in _host_apt_sources(root) if "main" in s.components]
    base = next((s for s in sources if s.suite == SUITE), None)
    if base is None:
        return FALLBACK_MIRROR, [f"deb {FALLBACK_MIRROR} {SUITE} main",
                                 f"deb {FALLBACK_MIRROR} {SUITE}-updates main",
                                 f"deb {FALLBACK_SECURITY} {SUITE}-security main"]
    mirror = base.uri.rstrip("/")
    lines = [f"deb {mirror} {SUITE} main"]
    for suffix in ("-updates", "-security"):
        extra = next((s for s in sources if s.suite == SUITE + suffix), None)
        if extra is not None:
            lines.append(f"deb {extra.uri.rstrip('/')} {SUITE}{suffix} main")
    return mirror, lines


# --------------------------------------------------------------------------- base image


def _base_recipe() -> dict[str, object]:
    """Everything that determines the base image's content; its hash is the tag."""
    mirror, lines = debian_sources()
    return {
        "suite": SUITE,
        "variant": VARIANT,
        "include": list(INCLUDE_PACKAGES),
        "mirror": mirror,
        "sources": lines,
        "hostkeys_unit": HOSTKEYS_UNIT,
        "masked": list(MASKED_UNITS),
        "version": RECIPE_VERSION,
    }


def base_image_tag() -> str:
    """The tag base_image() builds, without building anything."""
    return f"{BASE_REPO}:{_short_hash(_base_recipe())}"


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below path, deepest first (debootstrap mounts proc/sys/dev)."""
    prefix = str(path.resolve())
    points = []
    with open("/proc/self/mounts") as fh:
        for line in fh:
            mnt = line.split()[1].replace("\\040", " ")
            if mnt == prefix or mnt.startswith(prefix + "/"):
                points.append(mnt)
    return sorted(points, key=len, reverse=True)


def _remove_rootfs(rootfs: Path) -> None:
    """Delete a build rootfs, first unmounting whatever a killed debootstrap left.

    Why: rmtree through a still-mounted /proc or bind-mounted /dev would touch the host.
    """
    if not rootfs.exists():
        return
    for mnt in _mounts_under(rootfs):
        subprocess.run(["umount", "-l", mnt], capture_output=True)
    left = _mounts_under(rootfs)
    if left:
        raise TestbedError(f"cannot remove {rootfs}: still mounted {left[0]}; unmount it by hand")
    shutil.rmtree(rootfs, ignore_errors=True)


def _prepare_rootfs(rootfs: Path, sources_lines: list[str]) -> None:
    """Turn a debootstrap tree into a VPS-like image root.

    - apt sources like the host's (bookworm, -updates, -security);
    - no SSH host keys in the image, a boot-time unit generates them per container;
    - empty /root/.ssh (0700) ready for authorized_keys;
    - empty machine-id so every container gets its own;
    - no cached .debs (smaller image).
    """
    (rootfs / "etc/apt/sources.list").write_text("\n".join(sources_lines) + "\n")
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    unit_dir = rootfs / "etc/systemd/system"
    (unit_dir / HOSTKEYS_UNIT_NAME).write_text(HOSTKEYS_UNIT)
    for target in ("multi-user.target.wants", "ssh.service.wants"):
        (unit_dir / target).mkdir(parents=True, exist_ok=True)
        link = unit_dir / target / HOSTKEYS_UNIT_NAME
        if not link.is_symlink():
            link.symlink_to(f"/etc/systemd/system/{HOSTKEYS_UNIT_NAME}")
    for unit in MASKED_UNITS:
        link = unit_dir / unit
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to("/dev/null")
    ssh_dir = rootfs / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ssh_dir.chmod(0o700)
    (rootfs / "etc/machine-id").write_text("")
    dbus_id = rootfs / "var/lib/dbus/machine-id"
    if dbus_id.exists() and not dbus_id.is_symlink():
        dbus_id.unlink()
    for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def _import_rootfs(rootfs: Path, tag: str) -> None:
    """`tar -C ROOTFS -c . | docker import` with a systemd CMD, then set STOPSIGNAL.

    container=docker lets systemd know it is in a container (skips udev & co).
    STOPSIGNAL SIGRTMIN+3 makes `docker stop` a clean systemd shutdown instead of
    a 10 s wait and SIGKILL; `docker import -c` refuses STOPSIGNAL on this engine
    (20.10), so a one-line local `docker build` (no registry, no context) adds it.
    """
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    imp = subprocess.run([_docker_bin(), "import",
                          "-c", f'CMD ["{SYSTEMD}"]',
                          "-c", "ENV container=docker",
                          "-m", f"mailstack test-bed base ({SUITE}, debootstrap {VARIANT})",
                          "-"],
                         stdin=tar.stdout, capture_output=True, text=True)
    assert tar.stdout is not None and tar.stderr is not None
    tar.stdout.close()
    tar_err = tar.stderr.read().decode(errors="replace")
    tar_rc = tar.wait()
    if imp.returncode != 0:
        raise TestbedError(f"docker import failed: {_last_line(imp.stderr)}; see {ENGINE_LOG}")
    if tar_rc != 0:
        raise TestbedError(f"tar of {rootfs} failed (exit {tar_rc}): {_last_line(tar_err)}; "
                           "check free space in /var/tmp")
    image_id = imp.stdout.strip()
    dockerfile = f"FROM {image_id}\nSTOPSIGNAL SIGRTMIN+3\nLABEL {TESTBED_LABEL}\n"
    build = subprocess.run([_docker_bin(), "build", "-q", "-t", tag, "-"], input=dockerfile,
                           capture_output=True, text=True, env=dict(os.environ, DOCKER_BUILDKIT="0"))
    if build.returncode != 0:
        raise TestbedError(f"docker build (STOPSIGNAL layer) failed: {_last_line(build.stderr)}; "
                           f"see {ENGINE_LOG}")


def _build_base(tag: str, recipe: dict[str, object]) -> None:
    """debootstrap into /var/tmp, prepare, import, always remove the rootfs."""
    debootstrap = _which("debootstrap")
    if not debootstrap:
        apt_install(["debootstrap"], "debootstrap not installed")
        debootstrap = _which("debootstrap")
    if not _is_root():
        raise TestbedError("building the base image needs root (debootstrap); rerun as root")
    rootfs = Path(tempfile.mkdtemp(prefix="mailstack-rootfs-", dir="/var/tmp"))
    _log(f"building base image {tag} with debootstrap from {recipe['mirror']} … (about 60 s)")
    started = time.monotonic()
    try:
        cmd = [str(debootstrap), f"--variant={VARIANT}",
               "--include=" + ",".join(INCLUDE_PACKAGES),
               SUITE, str(rootfs), str(recipe["mirror"])]
        env = dict(os.environ, PATH=SBIN_PATH + ":" + os.environ.get("PATH", ""))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            log = rootfs / "debootstrap/debootstrap.log"
            detail = _last_line(log.read_text(errors="replace")) if log.exists() else _last_line(proc.stderr)
            raise TestbedError(f"debootstrap failed (exit {proc.returncode}): {detail}; "
                               f"check that {recipe['mirror']} is reachable")
        _log(f"debootstrap done in {time.monotonic() - started:.0f} s; importing")
        _prepare_rootfs(rootfs, list(recipe["sources"]))  # type: ignore[arg-type]
        _import_rootfs(rootfs, tag)
    finally:
        _remove_rootfs(rootfs)
    _log(f"base image {tag} built in {time.monotonic() - started:.0f} s")


def base_image() -> str:
    """Tag of the Debian base image, building it once per machine (cached by recipe hash)."""
    ensure_engine()
    recipe = _base_recipe()
    tag = f"{BASE_REPO}:{_short_hash(recipe)}"
    if _image_exists(tag):
        return tag
    with _build_lock():
        if not _image_exists(tag):  # another process may have built it meanwhile
            _build_base(tag, recipe)
    return tag


# --------------------------------------------------------------------------- stack image


def role_packages(storage_methods: Sequence[str] = ("gocryptfs",)) -> list[str]:
    """Every package the roles install (their `<role>__packages` defaults), with the storage
    role's packages for the given encryption methods (the default one unless told)."""
    import yaml

    from .resources import resource_dir

    packages: set[str] = set()
    for defaults in sorted(resource_dir("roles").glob("*/defaults/main.yml")):
        for key, value in (yaml.safe_load(defaults.read_text()) or {}).items():
            if key.endswith("packages") and isinstance(value, list):
                packages.update(p for p in value if isinstance(p, str) and "{{" not in p)
            elif key.endswith("packages_by_method") and isinstance(value, dict):
                for method in storage_methods:
                    packages.update(value.get(method, []))
    return sorted(packages)


def stack_image_tag(base: str | None = None) -> str:
    """The tag stack_image() builds for a given base tag."""
    base = base or base_image_tag()
    key = {"base": base, "packages": list(STACK_PACKAGES), "debconf": STACK_DEBCONF,
           "snakeoil_unit": SNAKEOIL_UNIT, "version": STACK_RECIPE_VERSION}
    return f"{STACK_REPO}:{_short_hash(key)}"


def _build_stack(base: str, tag: str) -> None:
    """Install the mail stack packages in a booted base container, then commit it.

    Installed under a running systemd (not in a Dockerfile RUN) so maintainer
    scripts behave as on a real host; host keys and machine-id are cleared
    before the commit so containers from the image never share them.
    """
    name = f"mailstack-stack-build-{os.getpid()}"
    _log(f"building stack image {tag} from {base} … (about 50 s)")
    started = time.monotonic()
    remove_host(name)
    try:
        # No extra labels here: docker commit copies the build container's labels
        # into the image, and from there onto every container started from it.
        start_host(name, base, hostname="stack-build.mailstack.test")
        exec_in(name, ["debconf-set-selections"], input=STACK_DEBCONF)
        apt_env = ["env", "DEBIAN_FRONTEND=noninteractive"]
        _exec_logged(name, [*apt_env, "apt-get", "update"], "apt-get update in the build container")
        _exec_logged(name, [*apt_env, "apt-get", "install", "-y", *STACK_PACKAGES],
                     "apt-get install of the stack packages")
        exec_in(name, ["apt-get", "clean"])
        exec_in(name, ["sh", "-c", f"cat > /etc/systemd/system/{SNAKEOIL_UNIT_NAME}"], input=SNAKEOIL_UNIT)
        exec_in(name, ["systemctl", "enable", "--quiet", SNAKEOIL_UNIT_NAME])
        exec_in(name, ["sh", "-c", "rm -f /etc/ssh/ssh_host_* /etc/ssl/private/ssl-cert-snakeoil.key "
                                   "/etc/ssl/certs/ssl-cert-snakeoil.pem && : > /etc/machine-id"])
        _docker("stop", "--time", "60", name, timeout=120)
        _docker("commit", "-c", f'CMD ["{SYSTEMD}"]',
                "-m", f"mailstack test-bed stack: {' '.join(STACK_PACKAGES)}", name, tag)
    finally:
        remove_host(name)
    _log(f"stack image {tag} built in {time.monotonic() - started:.0f} s")


def _exec_logged(name: str, cmd: list[str], what: str) -> None:
    """exec_in with a failure message that carries the tail of the output."""
    proc = exec_in(name, cmd, check=False)
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise TestbedError(f"{what} failed (exit {proc.returncode}): {tail}")


def stack_image() -> str:
    """Tag of base + the mail stack packages installed once (cached like the base image)."""
    base = base_image()
    tag = stack_image_tag(base)
    if _image_exists(tag):
        return tag
    with _build_lock():
        if not _image_exists(tag):
            _build_stack(base, tag)
    return tag


# --------------------------------------------------------------------------- hosts


@dataclass
class Host:
    """A running systemd container: its name and its IP on the network asked for."""

    name: str
    ip: str


def _container_state(name: str) -> dict[str, object] | None:
    """`docker container inspect` as a dict, or None when no such container exists."""
    proc = _docker("container", "inspect", name, check=False)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout)
    return data[0] if data else None


def container_running(name: str) -> bool | None:
    """True if running, False if it exists but is stopped, None if there is no such container."""
    info = _container_state(name)
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
        raise TestbedError(f"container {name} does not exist; create it with start_host")
    if not running:
        _log(f"starting stopped container {name}")
        _docker("start", name, timeout=120)
    wait_for_systemd(name)
    return Host(name=name, ip=container_ip(name, network))


def restart_host(name: str, *, network: str | None = None) -> Host:
    """Reboot a host: `docker restart` (a clean systemd shutdown, then a boot), wait for
    systemd. Its filesystem is kept; its address may change."""
    _docker("restart", "--time", "60", name, timeout=120)
    wait_for_systemd(name)
    return Host(name=name, ip=container_ip(name, network))


def container_ip(name: str, network: str | None = None) -> str:
    """IP of a container on `network` (default bridge when None)."""
    info = _container_state(name)
    if info is None:
        raise TestbedError(f"container {name} does not exist; start it first")
    nets: dict[str, dict[str, str]] = info["NetworkSettings"]["Networks"]  # type: ignore[index]
    net = network or "bridge"
    ip = (nets.get(net) or {}).get("IPAddress", "")
    if not ip:
        raise TestbedError(f"container {name} has no address on network {net}; "
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
        proc = _docker("exec", name, "systemctl", "is-system-running", check=False, timeout=30)
        state = proc.stdout.strip()
        if state in ("running", "degraded"):
            return state
        if not container_running(name):
            logs = _docker("logs", "--tail", "5", name, check=False)
            raise TestbedError(f"container {name} exited during boot: "
                               f"{_last_line(logs.stdout + logs.stderr)}; check the docker run flags")
        time.sleep(0.25)
    failed = _docker("exec", name, "systemctl", "--failed", "--no-legend", "--plain",
                     check=False, timeout=30).stdout
    jobs = _docker("exec", name, "systemctl", "list-jobs", "--no-legend", check=False, timeout=30).stdout
    raise TestbedError(f"systemd in {name} not running after {timeout:.0f} s (state {state or 'unknown'}); "
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
    if _container_state(name) is not None:
        raise TestbedError(f"container {name} already exists; remove it with `docker rm -f {name}`")
    args = ["run", "-d", "--name", name, "--hostname", hostname, "--label", TESTBED_LABEL]
    for key, value in (labels or {}).items():
        args += ["--label", f"{key}={value}"]
    if network:
        args += ["--network", network]
    args += [*RUN_FLAGS, image, SYSTEMD]
    _docker(*args, timeout=120)
    wait_for_systemd(name)
    if ssh_pubkey:
        install_pubkey(name, ssh_pubkey)
    return Host(name=name, ip=container_ip(name, network))


def remove_host(name: str) -> bool:
    """Force-remove a container (and its anonymous volumes); False if it did not exist."""
    if _container_state(name) is None:
        return False
    _docker("rm", "-f", "-v", name, timeout=120)
    return True


def ensure_network(name: str) -> None:
    """Create a user-defined bridge network (containers resolve each other by name)."""
    if _docker("network", "inspect", name, check=False).returncode == 0:
        return
    _docker("network", "create", "--label", TESTBED_LABEL, name)


def remove_network(name: str) -> bool:
    """Remove a docker network; False if it did not exist."""
    if _docker("network", "inspect", name, check=False).returncode != 0:
        return False
    _docker("network", "rm", name)
    return True


def exec_in(name: str, cmd: list[str], input: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """`docker exec` (with -i when input is given) in text mode.

    With check=True a non-zero exit raises TestbedError naming the command and
    its last line of output; with check=False the caller inspects returncode.
    """
    args = ["exec", *(["-i"] if input is not None else []), name, *cmd]
    proc = _docker(*args, input=input, check=False)
    if check and proc.returncode != 0:
        raise TestbedError(f"`{_short(cmd)}` in {name} failed (exit {proc.returncode}): "
                           f"{_last_line(proc.stderr or proc.stdout)}")
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
    raise TestbedError(f"{ip}:{port} did not accept connections within {timeout:.0f} s ({last}); "
                       "check the service in the container with systemctl status")


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """`python -m mailstack.testbed [setup|base|stack]`: print the image tags."""
    parser = argparse.ArgumentParser(prog="python -m mailstack.testbed",
                                     description="Start the docker engine and build the test-bed images.")
    parser.add_argument("action", nargs="?", default="setup", choices=["setup", "base", "stack"],
                        help="setup = engine + base + stack image (default); base/stack = just that image")
    args = parser.parse_args(argv)
    try:
        ensure_engine()
        if args.action in ("setup", "base"):
            print(base_image())
        if args.action in ("setup", "stack"):
            print(stack_image())
    except TestbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
