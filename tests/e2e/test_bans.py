"""Brute-force bans: an outside client that keeps failing to log in is refused, nobody else is.

A stack-image host with NET_ADMIN (fail2ban adds nftables rules, as on a KVM VPS) and the
internet in a box's outside sender on one test network. The sender fails SMTP AUTH on 587
(then IMAP logins on 993) as often as mailstack.yml allows: fail2ban bans its address on
the mail ports, while this machine (another address) logs in as usual; the ban expires
after the (test-shortened) ban time, or at once by `mailstack unban`. Then Postfix's anvil:
connections at once and per minute from one address (this machine) past the (test-sized)
limits get 421. Real swaks, real Python imaplib and sockets, real fail2ban and Postfix.
"""

from __future__ import annotations

import smtplib
import socket
import time

import pytest
import testbed

from .helpers import PASSWORD, host_in_a_box, imap_login, mailstack, tls_context

pytestmark = pytest.mark.testbed
DOMAIN = "bans.test"
ALICE = f"alice@{DOMAIN}"
MAX_FAILURES = 3
BAN_SECONDS = 45
# Postfix's anvil: connections at once and per minute from one address.
CONNECTIONS = 3
PER_MINUTE = 10


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    """(mail host, its IP, the outside sender) with a deployed site."""
    edits = ((" max_failures: 5", f" max_failures: {MAX_FAILURES}"),
             (" ban_time: 1h", f" ban_time: {BAN_SECONDS}s"),
             ("    connections: 20\n", f"    connections: {CONNECTIONS}\n"),
             ("    connections_per_minute: 60\n", f"    connections_per_minute: {PER_MINUTE}\n"))
    with host_in_a_box("bans", tmp_path_factory.mktemp("bans") / "site", DOMAIN, [ALICE],
                       edits=edits, cap_add=("NET_ADMIN",)) as host:
        yield host.name, host.ip, host.internet.sender, host.site


def banned(name: str, jail: str | None = None) -> str:
    """The addresses one jail has banned, or fail2ban's whole nftables table."""
    if jail:
        return testbed.exec_in(name, ["fail2ban-client", "get", jail, "banned"]).stdout
    return testbed.exec_in(name, ["nft", "list", "table", "inet", "f2b-table"], check=False).stdout


def wait_for(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def sender_reaches(sender, ip: str, port: int) -> bool:
    """Whether the outside sender gets the server's greeting on the port."""
    probe = testbed.exec_in(sender.host.name, [
        "python3", "-c",
        "import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3);"
        "s.settimeout(3); s.recv(64)", ip, str(port)], check=False)
    return probe.returncode == 0


def fail_smtp_auth(sender, ip: str) -> None:
    done = sender.swaks(ip, port=587, to=ALICE, mail_from=ALICE,
                        args=["--tls", "--auth", "LOGIN", "--auth-user", ALICE,
                              "--auth-password", "not the password", "--quit-after", "AUTH"])
    assert "535" in done.stdout, done.stdout[-2000:]


def fail_imap_login(sender, ip: str) -> None:
    script = ("import imaplib,ssl,sys; c=ssl.create_default_context(); c.check_hostname=False;"
              "c.verify_mode=ssl.CERT_NONE; i=imaplib.IMAP4_SSL(sys.argv[1], 993, ssl_context=c);"
              "\ntry: i.login(sys.argv[2], 'not the password')\n"
              "except imaplib.IMAP4.error: sys.exit(0)\nsys.exit(1)")
    done = testbed.exec_in(sender.host.name, ["python3", "-c", script, ip, ALICE], check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_fail2ban_runs_with_the_jails(bed) -> None:
    name, _, _, _ = bed
    status = testbed.exec_in(name, ["fail2ban-client", "status"]).stdout
    for jail in ("postfix-sasl", "dovecot", "recidive"):
        assert jail in status, status
    assert "sshd" not in status


@pytest.mark.parametrize("fail, jail", [(fail_smtp_auth, "postfix-sasl"),
                                        (fail_imap_login, "dovecot")], ids=["smtp-auth", "imap"])
def test_repeated_failures_ban_the_address_and_only_it(bed, fail, jail) -> None:
    name, ip, sender, _ = bed
    wait_for(lambda: sender.host.ip not in banned(name), "an earlier ban to expire", BAN_SECONDS + 15)
    for _ in range(MAX_FAILURES - 1):
        fail(sender, ip)
    time.sleep(2)
    assert sender.host.ip not in banned(name), "banned before the limit"
    fail(sender, ip)
    wait_for(lambda: sender.host.ip in banned(name, jail), f"the ban by the {jail} jail")
    assert sender.host.ip in banned(name), "banned but not in nftables"
    for port in (25, 587, 993):
        assert not sender_reaches(sender, ip, port), f"banned address still reaches port {port}"

    # Everybody else, this machine included, logs in as usual during the ban.
    imap_login(ip, ALICE).logout()
    with smtplib.SMTP(ip, 587, timeout=10) as smtp:
        smtp.starttls(context=tls_context())
        smtp.login(ALICE, PASSWORD)

    # And the ban ends.
    wait_for(lambda: sender_reaches(sender, ip, 587), "the ban to expire", BAN_SECONDS + 15)


def test_unban_lets_the_address_in_at_once(bed) -> None:
    name, ip, sender, site = bed
    wait_for(lambda: sender.host.ip not in banned(name), "an earlier ban to expire", BAN_SECONDS + 15)
    for _ in range(MAX_FAILURES):
        fail_smtp_auth(sender, ip)
    wait_for(lambda: sender.host.ip in banned(name, "postfix-sasl"), "the ban")
    assert not sender_reaches(sender, ip, 587)
    done = mailstack(site, "unban", sender.host.ip)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{sender.host.ip} unbanned" in done.stdout, done.stdout
    assert sender.host.ip not in banned(name)
    assert sender_reaches(sender, ip, 587), "still refused after unban"


def greeting(ip: str, port: int = 587) -> tuple[socket.socket, str]:
    """A connection to the server (left open) and its first reply line."""
    conn = socket.create_connection((ip, port), timeout=10)
    return conn, conn.makefile("rb").readline().decode(errors="replace").strip()


# Last, from this machine: its limits then last a minute, and the tests above log in from it.
def test_connections_at_once_are_limited(bed) -> None:
    _, ip, _, _ = bed
    held = [greeting(ip) for _ in range(CONNECTIONS + 1)]
    try:
        replies = [reply for _, reply in held]
        assert all(r.startswith("220 ") for r in replies[:CONNECTIONS]), replies
        assert replies[CONNECTIONS].startswith("421 "), replies
        assert "too many connections" in replies[CONNECTIONS], replies
    finally:
        for conn, _ in held:
            conn.close()


def test_connections_per_minute_are_limited(bed) -> None:
    _, ip, _, _ = bed
    replies = []
    for _ in range(PER_MINUTE + 2):
        conn, reply = greeting(ip)
        conn.close()
        replies.append(reply[:3])
    assert "421" in replies, replies
    assert 1 <= replies.count("220") <= PER_MINUTE, replies
    assert set(replies[replies.index("421"):]) == {"421"}, "once refused, refused for the minute"
