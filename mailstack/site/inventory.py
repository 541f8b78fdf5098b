"""The site's Ansible inventory: which hosts get the mail stack and how to reach them."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml.comments import CommentedMap

from mailstack.errors import ConfigError
from mailstack.files import write_atomic
from mailstack.resources import resource_dir
from mailstack.site.document import read_text, refuse_aliases, yaml_rt
from mailstack.site.names import control_problem, host_problem, user_problem

INVENTORIES_DIR = "inventories"
DEFAULT_INVENTORY = "production"
MAIL_GROUP = "mail"
# An inventory host's name (often the FQDN, but Ansible allows any such name).
_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


@dataclass(frozen=True)
class InventoryHost:
    name: str
    address: str
    ssh_user: str
    ssh_port: int
    ssh_key: str | None


def inventory_file(root: Path, env: str = DEFAULT_INVENTORY) -> Path:
    return root / INVENTORIES_DIR / env / "hosts.yml"


MODEL = "single"  # inventories/single: the one-host layout init starts a site from


def _model(*parts: str) -> Path:
    return resource_dir(INVENTORIES_DIR) / MODEL / Path(*parts)


def inventory_document(
    name: str, address: str, ssh_user: str, ssh_port: int, ssh_key: str | None
) -> str:
    """The model inventory (its comments kept) with its example host replaced by this one."""
    yaml = yaml_rt()
    yaml.width = 4096  # never fold a long key path onto a second line
    doc = yaml.load(_model("hosts.yml").read_text(encoding="utf-8"))
    host = CommentedMap(ansible_host=address, ansible_user=ssh_user, ansible_port=ssh_port)
    if ssh_key:
        host["ansible_ssh_private_key_file"] = ssh_key
    doc["all"]["children"][MAIL_GROUP]["hosts"] = CommentedMap({name: host})
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def write_inventory(root: Path, name: str, address: str, ssh_user: str, ssh_port: int,
                    ssh_key: str | None, env: str = DEFAULT_INVENTORY) -> Path:
    """Write (or re-point, e.g. at a host's new address) the inventory of one mail host, with
    the model's group_vars the first time."""
    path = inventory_file(root, env)
    write_atomic(path, inventory_document(name, address, ssh_user, ssh_port, ssh_key))
    group_vars = path.parent / "group_vars" / "all.yml"
    if not group_vars.exists():
        write_atomic(group_vars, _model("group_vars", "all.yml").read_text(encoding="utf-8"))
    return path


def load_hosts(root: Path, env: str = DEFAULT_INVENTORY) -> list[InventoryHost]:
    """Hosts of the ``mail`` group, in file order."""
    path = inventory_file(root, env)
    try:
        text = read_text(path, what="the inventory", fix="pass --inventory NAME for another "
                         "environment, or recreate it (inventories/single is the model)")
        refuse_aliases(text, path)
        data = yaml.safe_load(text) or {}
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
        result.append(_host(path, str(name), hv or {}))
    return result


def _host(path: Path, name: str, hv: dict[str, Any]) -> InventoryHost:
    """One inventory host, every value checked: they reach ssh's argv and Ansible's."""
    problems = []
    if not isinstance(hv, dict):
        raise ConfigError(f"{path}: {name} must be a mapping of ansible_* settings")
    address = str(hv.get("ansible_host", name))
    user = str(hv.get("ansible_user", "root"))
    port = hv.get("ansible_port", 22)
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    key = hv.get("ansible_ssh_private_key_file")
    if not _HOST_NAME.fullmatch(name):
        problems.append(f"host {name!r}: an inventory name is letters, digits, dots, _ and - "
                        "(it names the host's directory under build/)")
    if p := host_problem(address):
        problems.append(f"{name}.ansible_host {address!r}: {p}")
    if p := user_problem(user):
        problems.append(f"{name}.ansible_user {user!r}: {p}")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        problems.append(f"{name}.ansible_port {port!r}: must be a port number, 1 to 65535")
    if key is not None and (not isinstance(key, str) or not key or key.startswith("-")
                            or control_problem(key)):
        problems.append(f"{name}.ansible_ssh_private_key_file {key!r}: must be a file path")
    if problems:
        raise ConfigError(f"{path} is invalid:", details=problems)
    return InventoryHost(name=name, address=address, ssh_user=user, ssh_port=port, ssh_key=key)


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
