"""`mailstack sandbox up`: the local sandbox host plus a site that points at it — the built-in
default target for anyone without a VPS."""

from __future__ import annotations

from pathlib import Path

from mailstack.errors import MailstackError
from mailstack.files import write_atomic
from mailstack.sandbox.engine import SandboxError
from mailstack.sandbox.host import SandboxInfo, sandbox_up
from mailstack.site.config import CONFIG_FILE
from mailstack.site.directory import KNOWN_HOSTS_FILE, InitOptions, init_site
from mailstack.site.inventory import load_hosts, write_inventory

SANDBOX_DOMAIN = "sandbox.test"


def sandbox_site_up(directory: Path) -> tuple[SandboxInfo, bool]:
    """Start (or reuse) the sandbox host; create the site, or re-point an existing one at
    the host's current address. Returns (info, created)."""
    try:
        info = sandbox_up()
    except SandboxError as exc:
        raise MailstackError(f"sandbox host: {exc}") from None
    if not (directory / CONFIG_FILE).exists():
        init_site(directory, InitOptions(
            domain=SANDBOX_DOMAIN, hostname=info.hostname, host=info.ip,
            ssh_user=info.ssh_user, ssh_key=str(info.ssh_key),
            admin_email=f"postmaster@{SANDBOX_DOMAIN}",
        ))
        _no_dns_lists(directory / CONFIG_FILE)
        _self_signed(directory / CONFIG_FILE)
        return info, True
    hosts = load_hosts(directory)
    if [h.name for h in hosts] != [info.hostname]:
        raise MailstackError(
            f"{directory} is a site, but not the sandbox's (its hosts: "
            f"{', '.join(h.name for h in hosts)}); choose another directory"
        )
    write_inventory(directory, info.hostname, info.ip, info.ssh_user, 22, str(info.ssh_key))
    # A re-created sandbox has new SSH host keys: forget the old ones.
    (directory / KNOWN_HOSTS_FILE).unlink(missing_ok=True)
    return info, False


def _no_dns_lists(config: Path) -> None:
    """The sandbox takes mail from this machine only, and may run where the lists refuse or
    cannot be reached: its postscreen asks none (and `verify` checks none)."""
    text = config.read_text(encoding="utf-8")
    old = "  blocklists:\n    threshold: 3\n"
    if old not in text:
        raise MailstackError(f"{config}: no blocklists section where `init` writes it")
    write_atomic(config, text.replace(old, old + "    # The sandbox takes mail from this machine "
                                      "only: no DNS lists.\n    lists: []\n"))


def _self_signed(config: Path) -> None:
    """No CA can reach the sandbox (nor resolve its name): a self-signed certificate."""
    text = config.read_text(encoding="utf-8")
    old = "  tls:\n    certificate: acme\n"
    if old not in text:
        raise MailstackError(f"{config}: no tls section where `init` writes it")
    write_atomic(config, text.replace(old, "  # No CA can reach the sandbox.\n"
                                      "  tls:\n    certificate: self-signed\n"))
