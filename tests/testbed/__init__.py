"""The test bed: real Debian hosts for the tests and benchmarks (not part of the product).

Builds on mailstack.sandbox (engine, base image, containers) and adds the "stack" image:
the base plus every package the roles install, so that a deploy in a test downloads
nothing; testbed.internet adds the internet in a box (DNS, blocklist, an outside
sender). `python -m testbed setup` (with tests/ on the path; scripts/testbed-setup does
it) starts the engine and builds or finds both images (the box's image on first use).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# The test bed's API: the sandbox's hosts and images, plus the stack image below.
from mailstack.sandbox.containers import (
    SYSTEMD,
    Host,
    container_ip,
    container_running,
    ensure_network,
    exec_in,
    remove_host,
    remove_network,
    start_host,
    wait_for_port,
    wait_for_systemd,
)
from mailstack.sandbox.engine import (
    SandboxError,
    build_lock,
    docker,
    ensure_engine,
    image_exists,
    log,
    short_hash,
)
from mailstack.sandbox.image import FALLBACK_MIRROR, base_image, base_image_tag, debian_sources

__all__ = [
    "FALLBACK_MIRROR",
    "OFFLINE_RESOLVER",
    "STACK_PACKAGES",
    "Host",
    "Internet",
    "Record",
    "SandboxError",
    "Sender",
    "base_image",
    "blocklist_records",
    "build_image",
    "cached_image",
    "container_ip",
    "container_running",
    "debian_sources",
    "ensure_engine",
    "ensure_network",
    "exec_in",
    "internet_image",
    "network_subnet",
    "offline_site",
    "remove_host",
    "remove_network",
    "restart_host",
    "role_packages",
    "self_signed_site",
    "sender_domain",
    "set_site_resolver",
    "site_records",
    "stack_image",
    "start_host",
    "use_resolver",
    "wait_for_port",
]


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
    "age",
    "encfs",
    "fuse3",
    "nftables",
    "systemd-timesyncd",
    "unattended-upgrades",
    "needrestart",
    "swaks",
    "ca-certificates",
    "openssl",
    "fail2ban",
    "python3-systemd",
    "unbound",
    "rspamd",
    "redis-server",
    "dovecot-sieve",
    "dovecot-managesieved",
    "dovecot-pop3d",
    "dovecot-fts-xapian",
    "poppler-utils",
    "clamav-daemon",
    "clamav-freshclam",
    "nginx",
    "uacme",
    "postfix-mta-sts-resolver",
    "prometheus-node-exporter",
    "borgbackup",
    "sogo",
    "sogo-activesync",
    "memcached",
)
# Off until a deploy configures them, as every service the roles start: Debian's defaults
# enable an sshd jail reading /var/log/auth.log, which these hosts (no rsyslog) lack;
# unbound listens on ::1 and Redis maps a user namespace, neither of which a container has.
# ClamAV (options.antivirus, off by default) stays off too, and without signatures: freshclam
# reaches no mirror from here, and a test that turns the scanner on seeds its own.
STACK_SETUP: tuple[str, ...] = (
    "systemctl disable --now --quiet fail2ban unbound redis-server nginx postfix-mta-sts-resolver",
    # options.monitoring.prometheus (off by default) turns it on.
    "systemctl disable --now --quiet prometheus-node-exporter",
    # What its recommended collectors pulled into the image (the monitoring role installs
    # it without them): units that fail in a container without NVMe or IPMI hardware.
    "apt-get purge -y -q nvme-cli openipmi || true",
    "systemctl disable --now --quiet clamav-freshclam clamav-daemon.socket clamav-daemon",
    "systemctl disable --now --quiet sogo memcached",
    "find /var/lib/clamav -mindepth 1 -delete",
)


def apt_backports_files() -> dict[str, str]:
    """The backports source and pin the common role places (its templates, the rendered
    facts' APT_BACKPORTS): the image takes the same packages from backports as a deploy."""
    import jinja2

    from mailstack.render.context import APT_BACKPORTS
    from mailstack.resources import resource_dir

    root = resource_dir("roles") / "common" / "templates"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(root)), keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    return {f"/{name.removesuffix('.j2')}": env.get_template(name).render(
                common__apt_backports=APT_BACKPORTS)
            for name in ("etc/apt/sources.list.d/mailstack-backports.list.j2",
                         "etc/apt/preferences.d/mailstack-backports.j2")}


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


# --------------------------------------------------------------------------- stack image


def role_packages(storage_methods: Sequence[str] = ("gocryptfs",)) -> list[str]:
    """Every package the roles install (their `<role>__packages` defaults), with the storage
    role's packages for the given encryption methods (the default one unless told)."""
    import yaml

    from mailstack.resources import resource_dir

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
           "apt_files": apt_backports_files(),
           "snakeoil_unit": SNAKEOIL_UNIT, "setup": list(STACK_SETUP),
           "version": STACK_RECIPE_VERSION}
    return f"{STACK_REPO}:{short_hash(key)}"


def build_image(base: str, tag: str, packages: Sequence[str], *, what: str,
                debconf: str = "", setup: Sequence[str] = (),
                apt_files: dict[str, str] | None = None) -> None:
    """Install packages in a booted base container, run the setup shell commands, commit it.

    Installed under a running systemd (not in a Dockerfile RUN) so maintainer
    scripts behave as on a real host; host keys, the snakeoil key (made again at
    first boot by SNAKEOIL_UNIT) and machine-id are cleared before the commit so
    containers from the image never share them.
    """
    name = f"mailstack-{what}-build-{os.getpid()}"
    log(f"building {what} image {tag} from {base} …")
    started = time.monotonic()
    remove_host(name)
    try:
        # No extra labels here: docker commit copies the build container's labels
        # into the image, and from there onto every container started from it.
        start_host(name, base, hostname=f"{what}-build.mailstack.test")
        if debconf:
            exec_in(name, ["debconf-set-selections"], input=debconf)
        for path, content in (apt_files or {}).items():
            exec_in(name, ["sh", "-c", 'cat > "$1"', "sh", path], input=content)
        apt_env = ["env", "DEBIAN_FRONTEND=noninteractive"]
        _exec_logged(name, [*apt_env, "apt-get", "update"], "apt-get update in the build container")
        _exec_logged(name, [*apt_env, "apt-get", "install", "-y", *packages],
                     f"apt-get install of the {what} packages")
        exec_in(name, ["apt-get", "clean"])
        exec_in(name, ["sh", "-c", f"cat > /etc/systemd/system/{SNAKEOIL_UNIT_NAME}"], input=SNAKEOIL_UNIT)
        exec_in(name, ["systemctl", "enable", "--quiet", SNAKEOIL_UNIT_NAME])
        for command in setup:
            _exec_logged(name, ["sh", "-ec", command], f"setup `{command}` of the {what} image")
        exec_in(name, ["sh", "-c", "rm -f /etc/ssh/ssh_host_* /etc/ssl/private/ssl-cert-snakeoil.key "
                                   "/etc/ssl/certs/ssl-cert-snakeoil.pem && : > /etc/machine-id"])
        docker("stop", "--time", "60", name, timeout=120)
        docker("commit", "-c", f'CMD ["{SYSTEMD}"]',
                "-m", f"mailstack test-bed {what}: {' '.join(packages)}", name, tag)
    finally:
        remove_host(name)
    log(f"{what} image {tag} built in {time.monotonic() - started:.0f} s")


def _exec_logged(name: str, cmd: list[str], what: str) -> None:
    """exec_in with a failure message that carries the tail of the output."""
    proc = exec_in(name, cmd, check=False)
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise SandboxError(f"{what} failed (exit {proc.returncode}): {tail}")


def cached_image(tag: str, build: Callable[[], None]) -> str:
    """Return tag, calling build() first when no such image exists (once across processes)."""
    if image_exists(tag):
        return tag
    with build_lock():
        if not image_exists(tag):
            build()
    return tag


def stack_image() -> str:
    """Tag of base + the mail stack packages installed once (cached like the base image)."""
    base = base_image()
    tag = stack_image_tag(base)
    return cached_image(tag, lambda: build_image(base, tag, STACK_PACKAGES, what="stack",
                                                 debconf=STACK_DEBCONF, setup=STACK_SETUP,
                                                 apt_files=apt_backports_files()))


def set_site_resolver(site: Path, ip: str, *, dnssec: bool = True) -> None:
    """Make the site's hosts resolve through `ip` (options.resolver): the internet in a box,
    or OFFLINE_RESOLVER where a test has none (offline_site). Never the real internet."""
    config = site / "mailstack.yml"
    text = config.read_text()
    assert "    forward_to: []\n    dnssec: true\n" in text, "mailstack.yml has no default resolver block"
    config.write_text(text.replace("    forward_to: []\n    dnssec: true\n",
                                   f"    forward_to: [{ip}]\n    dnssec: {str(dnssec).lower()}\n"))


# The resolver a mail host of a test without the internet in a box forwards to: its own
# loopback, where unbound never forwards (do-not-query-localhost). Every lookup fails at
# once and not one packet leaves the host; a host resolving from the root servers would
# send tests' queries (rspamd's blocklist lookups among them) to the real internet, and a
# forwarder that does not answer makes every lookup wait for timeouts (rspamadm configtest
# alone took 25 s).
OFFLINE_RESOLVER = "127.0.0.1"


def offline_site(site: Path) -> None:
    """A site for a host without the internet in a box: it resolves nothing
    (OFFLINE_RESOLVER), and greylisting is off. Its test clients are not MTAs that retry,
    and with no DNS every outside message scores what a sender without a name scores."""
    set_site_resolver(site, OFFLINE_RESOLVER, dnssec=False)
    self_signed_site(site)
    config = site / "mailstack.yml"
    text = config.read_text()
    assert "    greylist_score: 4\n" in text, "mailstack.yml has no default greylist_score"
    config.write_text(text.replace("    greylist_score: 4\n", "    greylist_score: null\n"))


def self_signed_site(site: Path) -> None:
    """A site whose certificate is self-signed: no CA reaches a test host, except the box's
    own (tests/testbed/acme.py), which only the ACME tests use."""
    config = site / "mailstack.yml"
    text = config.read_text()
    if "  tls:\n    certificate: self-signed\n" in text:
        return  # the sandbox's site
    assert "  tls:\n    certificate: acme\n" in text, "mailstack.yml has no default tls block"
    config.write_text(text.replace("  tls:\n    certificate: acme\n",
                                   "  tls:\n    certificate: self-signed\n"))


def restart_host(name: str, *, network: str | None = None) -> Host:
    """Reboot a host: `docker restart` (a clean systemd shutdown, then a boot), wait for
    systemd. Its filesystem is kept; its address may change."""
    docker("restart", "--time", "60", name, timeout=120)
    wait_for_systemd(name)
    return Host(name=name, ip=container_ip(name, network))


# The internet in a box builds on the helpers above, so it is imported after them.
from testbed.internet import (  # noqa: E402
    Internet,
    Record,
    Sender,
    blocklist_records,
    internet_image,
    network_subnet,
    sender_domain,
    site_records,
    use_resolver,
)

# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """`python -m testbed [setup|base|stack]`: print the image tags."""
    parser = argparse.ArgumentParser(prog="python -m testbed",
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
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0

