"""The firewall opens the port the inventory reaches the host on. With SSH on 2222 it used to
open 22 only: the first deploy locked out every later deploy and every `mailstack unlock`.

A fresh stack-image host with NET_ADMIN (it loads its own nftables ruleset, as on a KVM VPS)
and sshd on port 2222 only; deployed over SSH with the real CLI, then reached again.
"""

from __future__ import annotations

import re
import secrets

import pytest
import testbed

from mailstack.sandbox import host as sandbox

from .helpers import PASSWORD, mailstack

pytestmark = pytest.mark.testbed
PORT = 2222


@pytest.fixture(scope="module")
def host():
    key = sandbox.ensure_keypair(sandbox.default_state_dir())
    name = f"mailstack-e2e-firewall-{secrets.token_hex(3)}"
    try:
        started = testbed.start_host(name, testbed.stack_image(), hostname="mail.fw.test",
                                     ssh_pubkey=key.with_suffix(".pub").read_text(),
                                     cap_add=("NET_ADMIN",))
        testbed.exec_in(name, ["sh", "-ec", f"echo 'Port {PORT}' > /etc/ssh/sshd_config.d/port.conf"
                                            " && systemctl restart ssh"])
        testbed.wait_for_port(started.ip, PORT, 30)
        yield name, started.ip, key
    finally:
        testbed.remove_host(name)


def test_a_deploy_over_port_2222_keeps_that_port_open(host, tmp_path):
    name, ip, key = host
    site = tmp_path / "site"
    assert mailstack(None, "init", str(site), "--domain", "fw.test", "--hostname", "mail.fw.test",
                     "--host", ip, "--ssh-port", str(PORT), "--ssh-key", str(key)).returncode == 0
    testbed.offline_site(site)
    assert mailstack(site, "user", "add", "alice@fw.test", "--password-stdin",
                     input=PASSWORD + "\n").returncode == 0
    first = mailstack(site, "deploy")
    assert first.returncode == 0, first.stdout + first.stderr
    ruleset = testbed.exec_in(name, ["nft", "list", "table", "inet", "mailstack"]).stdout
    ports = re.search(r"tcp dport \{ ([0-9, ]+) \} accept", ruleset)
    assert ports, ruleset
    assert [int(p) for p in ports.group(1).split(",")] == [25, 80, 443, 465, 587, 993, PORT, 4190]
    # The firewall is loaded now: the next deploy and the storage tool still get in.
    again = mailstack(site, "deploy")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "no changes" in again.stdout
    status = mailstack(site, "status")
    # Offline (its resolver answers nothing), the DNS blocklists cannot answer their test
    # entries: a warning (exit 1), and nothing critical.
    assert status.returncode == 1, status.stdout + status.stderr
    assert "unlocked" in status.stdout
    verdict = status.stdout.splitlines()[-1]
    assert verdict.startswith("status: WARNING (") and "blocklist" in verdict, verdict
