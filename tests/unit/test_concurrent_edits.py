"""Edits at the same moment (two `user add` and a `domain add`, as real processes) each take
the site's lock and read the state under it: none is lost, and mailstack.yml and the secrets
always agree (the review lost a change in 5 of 5 trials, once a DKIM key without its domain)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import PASSWORD

from mailstack.site.directory import Site


def _start(site, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MAILSTACK_"))}
    return subprocess.Popen([sys.executable, "-m", "mailstack", "--site", str(site), *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


@pytest.mark.parametrize("trial", range(5))
def test_parallel_edits_are_all_kept(site_dir, trial):
    procs = [_start(site_dir, "user", "add", f"u{trial}a@example.org", "--password-stdin"),
             _start(site_dir, "user", "add", f"u{trial}b@example.org", "--password-stdin"),
             _start(site_dir, "domain", "add", f"d{trial}.example.net"),
             _start(site_dir, "alias", "add", f"team{trial}@example.org", "x@elsewhere.test")]
    for proc in procs:
        _, err = proc.communicate(PASSWORD + "\n", timeout=120)
        assert proc.returncode == 0, err
    site = Site(site_dir)
    cfg = site.config
    users = {u.address for u in cfg.users}
    assert {f"u{trial}a@example.org", f"u{trial}b@example.org"} <= users
    assert f"d{trial}.example.net" in cfg.domains
    assert f"team{trial}@example.org" in cfg.aliases
    assert set(site.secrets.accounts) == users          # no hash without its mailbox
    assert set(site.secrets.dkim) == set(cfg.domains)   # no key without its domain
