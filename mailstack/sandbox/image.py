"""The base image of local Debian hosts, built without a registry: debootstrap a minimal
bookworm (systemd, SSH, Python), prepare it like a fresh VPS (no SSH host keys, no
machine-id), import it. Cached by a hash of its recipe, so it is built once per machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mailstack.sandbox.containers import SYSTEMD
from mailstack.sandbox.engine import (
    ENGINE_LOG,
    MANAGED_LABEL,
    SBIN_PATH,
    SandboxError,
    apt_install,
    build_lock,
    docker_bin,
    ensure_engine,
    image_exists,
    is_root,
    last_line,
    log,
    short_hash,
    which,
)

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
    return f"{BASE_REPO}:{short_hash(_base_recipe())}"


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
        raise SandboxError(f"cannot remove {rootfs}: still mounted {left[0]}; unmount it by hand")
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
    imp = subprocess.run([docker_bin(), "import",
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
        raise SandboxError(f"docker import failed: {last_line(imp.stderr)}; see {ENGINE_LOG}")
    if tar_rc != 0:
        raise SandboxError(f"tar of {rootfs} failed (exit {tar_rc}): {last_line(tar_err)}; "
                           "check free space in /var/tmp")
    image_id = imp.stdout.strip()
    dockerfile = f"FROM {image_id}\nSTOPSIGNAL SIGRTMIN+3\nLABEL {MANAGED_LABEL}\n"
    build = subprocess.run([docker_bin(), "build", "-q", "-t", tag, "-"], input=dockerfile,
                           capture_output=True, text=True, env=dict(os.environ, DOCKER_BUILDKIT="0"))
    if build.returncode != 0:
        raise SandboxError(f"docker build (STOPSIGNAL layer) failed: {last_line(build.stderr)}; "
                           f"see {ENGINE_LOG}")


def _build_base(tag: str, recipe: dict[str, object]) -> None:
    """debootstrap into /var/tmp, prepare, import, always remove the rootfs."""
    debootstrap = which("debootstrap")
    if not debootstrap:
        apt_install(["debootstrap"], "debootstrap not installed")
        debootstrap = which("debootstrap")
    if not is_root():
        raise SandboxError("building the base image needs root (debootstrap); rerun as root")
    rootfs = Path(tempfile.mkdtemp(prefix="mailstack-rootfs-", dir="/var/tmp"))
    log(f"building base image {tag} with debootstrap from {recipe['mirror']} … (about 60 s)")
    started = time.monotonic()
    try:
        cmd = [str(debootstrap), f"--variant={VARIANT}",
               "--include=" + ",".join(INCLUDE_PACKAGES),
               SUITE, str(rootfs), str(recipe["mirror"])]
        env = dict(os.environ, PATH=SBIN_PATH + ":" + os.environ.get("PATH", ""))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            boot_log = rootfs / "debootstrap/debootstrap.log"
            detail = (last_line(boot_log.read_text(errors="replace")) if boot_log.exists()
                      else last_line(proc.stderr))
            raise SandboxError(f"debootstrap failed (exit {proc.returncode}): {detail}; "
                               f"check that {recipe['mirror']} is reachable")
        log(f"debootstrap done in {time.monotonic() - started:.0f} s; importing")
        _prepare_rootfs(rootfs, list(recipe["sources"]))  # type: ignore[arg-type]
        _import_rootfs(rootfs, tag)
    finally:
        _remove_rootfs(rootfs)
    log(f"base image {tag} built in {time.monotonic() - started:.0f} s")


def base_image() -> str:
    """Tag of the Debian base image, building it once per machine (cached by recipe hash)."""
    ensure_engine()
    recipe = _base_recipe()
    tag = f"{BASE_REPO}:{short_hash(recipe)}"
    if image_exists(tag):
        return tag
    with build_lock():
        if not image_exists(tag):  # another process may have built it meanwhile
            _build_base(tag, recipe)
    return tag

