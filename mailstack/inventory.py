"""The site's Ansible inventory: which hosts get the mail stack and how to reach them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .files import write_atomic

INVENTORIES_DIR = "inventories"
DEFAULT_INVENTORY = "production"
MAIL_GROUP = "mail"


@dataclass(frozen=True)
class InventoryHost:
    name: str
    address: str
    ssh_user: str
    ssh_port: int
    ssh_key: str | None


def inventory_file(root: Path, env: str = DEFAULT_INVENTORY) -> Path:
    return root / INVENTORIES_DIR / env / "hosts.yml"


def inventory_document(
    name: str, address: str, ssh_user: str, ssh_port: int, ssh_key: str | None
) -> str:
    host: dict[str, Any] = {
        "ansible_host": address,
        "ansible_user": ssh_user,
        "ansible_port": ssh_port,
    }
    if ssh_key:
        host["ansible_ssh_private_key_file"] = ssh_key
    doc = {"all": {"children": {MAIL_GROUP: {"hosts": {name: host}}}}}
    header = (
        "# Where the site is deployed. Hosts in the `mail` group get the whole mail stack.\n"
        "# ansible_host: the address mailstack connects to over SSH (the VPS's IP).\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def write_inventory(root: Path, name: str, address: str, ssh_user: str, ssh_port: int,
                    ssh_key: str | None, env: str = DEFAULT_INVENTORY) -> Path:
    """Write (or re-point, e.g. at a host's new address) the inventory of one mail host."""
    path = inventory_file(root, env)
    write_atomic(path, inventory_document(name, address, ssh_user, ssh_port, ssh_key))
    return path


GROUP_VARS = """\
# Settings shared by every host of this inventory.
# Debian 12 ships Python 3 as /usr/bin/python3; naming it skips interpreter discovery.
ansible_python_interpreter: /usr/bin/python3
"""


def load_hosts(root: Path, env: str = DEFAULT_INVENTORY) -> list[InventoryHost]:
    """Hosts of the ``mail`` group, in file order."""
    path = inventory_file(root, env)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(
            f"inventory {path} not found: pass --inventory NAME for another environment, or "
            "recreate it (see `mailstack init --help`)"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    try:
        group = data["all"]["children"][MAIL_GROUP] or {}
        hosts = group.get("hosts") or {}
    except (KeyError, TypeError, AttributeError):
        raise ConfigError(
            f"{path}: no `{MAIL_GROUP}` group under all.children; add the mail hosts there"
        ) from None
    if not hosts:
        raise ConfigError(f"{path}: the `{MAIL_GROUP}` group has no hosts; add one")
    result = []
    for name, hv in hosts.items():
        hv = hv or {}
        try:
            port = int(hv.get("ansible_port", 22))
        except (TypeError, ValueError):
            raise ConfigError(
                f"{path}: {name}.ansible_port must be a number (got {hv.get('ansible_port')!r})"
            ) from None
        result.append(
            InventoryHost(
                name=str(name),
                address=str(hv.get("ansible_host", name)),
                ssh_user=str(hv.get("ansible_user", "root")),
                ssh_port=port,
                ssh_key=hv.get("ansible_ssh_private_key_file"),
            )
        )
    return result


def select_hosts(root: Path, env: str, only: str | None) -> list[InventoryHost]:
    """The mail hosts, or just the one named; an unknown name is an error naming the hosts."""
    found = load_hosts(root, env)
    if only is None:
        return found
    chosen = [h for h in found if h.name == only]
    if not chosen:
        raise ConfigError(f"host {only!r} is not in the inventory's {MAIL_GROUP} group "
                          f"(hosts: {', '.join(h.name for h in found)})")
    return chosen
