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
