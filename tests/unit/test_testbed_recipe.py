"""The test-bed stack image carries every package the roles install, so that a deploy onto
a host made from it downloads nothing (the storage e2e tests rely on that for speed)."""

from __future__ import annotations

import testbed


def test_stack_image_has_every_role_package():
    needed = testbed.role_packages(("gocryptfs", "encfs", "none"))
    assert {"postfix", "dovecot-core", "gocryptfs", "encfs", "fuse3", "nftables"} <= set(needed)
    missing = sorted(set(needed) - set(testbed.STACK_PACKAGES))
    assert not missing, f"add to testbed.STACK_PACKAGES: {missing}"


def test_role_packages_defaults_to_the_default_storage_method():
    packages = testbed.role_packages()
    assert "gocryptfs" in packages and "encfs" not in packages


def test_the_one_apt_transaction_includes_every_role_s_packages():
    """site.yml installs the whole stack in one apt transaction while DNS still works; a
    role's package left out of it is installed later by the role, after the host's resolver
    took over (offline in the test bed; a second apt run on a VPS)."""
    import re

    import yaml

    from mailstack.resources import resource_dir

    site = (resource_dir("roles").parent / "site.yml").read_text()
    declared = {key for defaults in resource_dir("roles").glob("*/defaults/main.yml")
                for key in yaml.safe_load(defaults.read_text()) or {}
                if re.fullmatch(r"[a-z_]+__[a-z_]*packages(_by_method)?", key)}
    # The common role's own list and the list site.yml fills are the transaction itself.
    missing = sorted(k for k in declared - {"common__packages", "common__extra_packages"}
                     if not re.search(rf"\b{k}\b", site))
    assert not missing, f"add to common__extra_packages in site.yml: {missing}"
