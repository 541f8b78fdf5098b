"""The example inventories in inventories/: init starts every site from the one-host model,
and both examples are inventories mailstack reads."""

from __future__ import annotations

from pathlib import Path

import yaml

from mailstack.site.directory import InitOptions, init_site
from mailstack.site.inventory import inventory_file, load_hosts, write_inventory

EXAMPLES = Path(__file__).resolve().parents[2] / "inventories"


def test_the_examples_are_inventories_mailstack_reads():
    single = load_hosts(EXAMPLES.parent, "single")
    assert [(h.name, h.address, h.ssh_user, h.ssh_port) for h in single] == [
        ("mail.example.org", "203.0.113.7", "root", 22)]
    multi = load_hosts(EXAMPLES.parent, "multi")
    assert [(h.name, h.ssh_user, h.ssh_port) for h in multi] == [
        ("mail1.example.org", "root", 22), ("mail2.example.org", "deploy", 2222)]


def test_init_writes_the_model_with_the_sites_host(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("not a real key\n")
    site = init_site(tmp_path / "site", InitOptions(
        "example.net", "mx.example.net", "192.0.2.10", ssh_port=2200, ssh_key=str(key)))
    text = inventory_file(site).read_text()
    assert text.startswith((EXAMPLES / "single/hosts.yml").read_text().split("all:")[0])
    assert yaml.safe_load(text) == {"all": {"children": {"mail": {"hosts": {"mx.example.net": {
        "ansible_host": "192.0.2.10", "ansible_user": "root", "ansible_port": 2200,
        "ansible_ssh_private_key_file": str(key)}}}}}}
    group_vars = site / "inventories/production/group_vars/all.yml"
    assert group_vars.read_text() == (EXAMPLES / "single/group_vars/all.yml").read_text()


def test_repointing_keeps_the_users_group_vars(tmp_path):
    site = init_site(tmp_path / "site", InitOptions("example.net", "mx.example.net", "192.0.2.10"))
    group_vars = site / "inventories/production/group_vars/all.yml"
    group_vars.write_text(group_vars.read_text() + "ansible_become_method: su\n")
    write_inventory(site, "mx.example.net", "192.0.2.99", "root", 22, None)
    assert load_hosts(site)[0].address == "192.0.2.99"
    assert group_vars.read_text().endswith("ansible_become_method: su\n")
