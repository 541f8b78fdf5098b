#!/usr/bin/env python3
"""Delivery throughput: encrypted store vs a plain directory, and the spam filter in the path
vs out of it; same host, same run.

The real pipeline end to end: Postfix's `smtp-source` in a second container sends N
messages over SMTP to port 25 of a deployed mailstack host; Postfix (with its MariaDB
lookups and the OpenDKIM milter) queues them and hands them to Dovecot over LMTP, which
writes them into Maildir. Two clocks, each run into an empty mailbox:

- end to end: from the first SMTP connection until the queue is empty;
- delivery only: the messages are first held in the queue (defer_transports = lmtp), then
  released: only the LMTP -> Maildir half, the part the store can slow down.

After every run each message is counted in the mailbox (exactly N, none bounced).

The same host is measured twice per round, only the directory under /var/mail/vhosts
changes: the gocryptfs mount the deploy made (mounted with mailstack-storage, as
`mailstack unlock` does), or a plain directory on the same disk bind-mounted there.
Rounds alternate the order; medians are printed, with the ratio encrypted/plain.

Then the spam filter: end to end on the encrypted store with rspamd in Postfix's milters (as
deployed) and without it (only OpenDKIM's, set with postconf for the run), alternating, with
the ratio with/without and the p95 of the time rspamd spent per message (from its log). The
bench site files nothing into Junk and greylists nothing (options.spam), so every message is
scanned in full and counted in the INBOX.

    .venv/bin/python bench/throughput.py [--messages N] [--sessions S] [--size B] [--rounds R]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import testbed  # noqa: E402
from benchlib import mailstack, new_site  # noqa: E402

from mailstack.sandbox import host as sandbox  # noqa: E402
from mailstack.site.directory import Site  # noqa: E402

DOMAIN = "bench.test"
USER = f"bench@{DOMAIN}"
NETWORK = "mailstack-bench"
STORE = "/var/mail/vhosts"
PLAIN = "/var/mail/plain-bench"
MAILDIR = f"{STORE}/{DOMAIN}/bench"
QUEUE_DIRS = " ".join(f"/var/spool/postfix/{d}" for d in ("maildrop", "incoming", "active",
                                                           "deferred", "hold"))


def sh(host: str, script: str, input: str | None = None) -> str:
    return testbed.exec_in(host, ["bash", "-ec", script], input=input).stdout


def use_store(server: str, mode: str, passphrase: str) -> None:
    """Put an empty mailbox on the chosen store under /var/mail/vhosts, Dovecot running."""
    # Dovecot is bound to the mount (BindsTo=var-mail-vhosts.mount): it stops with it.
    sh(server, f"systemctl stop dovecot; while mountpoint -q {STORE}; do umount {STORE}; done")
    if mode == "plain":
        sh(server, f"install -d -o vmail -g vmail -m 0770 {PLAIN}; "
                   f"mount --bind {PLAIN} {STORE}")
    else:
        sh(server, "/usr/local/sbin/mailstack-storage mount >/dev/null", input=passphrase + "\n")
    sh(server, f"rm -rf {MAILDIR}; systemctl start dovecot; "
               "until [ -S /var/spool/postfix/private/dovecot-lmtp ]; do sleep 0.1; done; "
               f"findmnt -no FSTYPE {STORE}")


def queue_empty(server: str) -> None:
    sh(server, f"while [ -n \"$(find {QUEUE_DIRS} -type f -print -quit)\" ]; "
               "do sleep 0.02; done")


def send(client: str, server_ip: str, args: argparse.Namespace) -> None:
    testbed.exec_in(client, ["smtp-source", "-s", str(args.sessions), "-m", str(args.messages),
                             "-l", str(args.size), "-M", f"client.{DOMAIN}", "-f", USER,
                             "-t", USER, f"{server_ip}:25"])


def check_delivered(server: str, expected: int) -> None:
    counted = sh(server, f"find {MAILDIR}/Maildir/new {MAILDIR}/Maildir/cur -type f | wc -l; "
                         f"grep -rl '^From: MAILER-DAEMON' {MAILDIR}/Maildir | wc -l")
    delivered, bounced = (int(x) for x in counted.split())
    if delivered != expected or bounced:
        raise SystemExit(f"expected {expected} messages delivered, found {delivered} "
                         f"({bounced} bounces); see `journalctl -u postfix@-` in {server}")


def end_to_end(server: str, client: str, server_ip: str, args: argparse.Namespace) -> float:
    """SMTP in and delivery together: the clock stops when the queue is empty."""
    started = time.monotonic()
    send(client, server_ip, args)
    queue_empty(server)
    elapsed = time.monotonic() - started
    check_delivered(server, args.messages)
    return args.messages / elapsed


def delivery_only(server: str, client: str, server_ip: str, args: argparse.Namespace) -> float:
    """Only the storage-bound half: the messages wait in the queue (defer_transports), then
    the clock runs while Postfix hands them all to Dovecot over LMTP."""
    sh(server, "postconf -e defer_transports=lmtp && postfix reload >/dev/null 2>&1")
    try:
        send(client, server_ip, args)
    finally:
        sh(server, "postconf -e defer_transports= && postfix reload >/dev/null 2>&1")
    started = time.monotonic()
    sh(server, "postqueue -f")
    queue_empty(server)
    elapsed = time.monotonic() - started
    check_delivered(server, args.messages)
    return args.messages / elapsed


PHASES = {"end to end": end_to_end, "delivery only": delivery_only}
RSPAMD_LOG = "/var/log/rspamd/rspamd.log"


def use_filter(server: str, on: bool, milters: str) -> None:
    """rspamd in Postfix's milters (the deployed list) or out of them (OpenDKIM's alone)."""
    wanted = milters if on else ", ".join(m.strip() for m in milters.split(",")
                                          if "rspamd" not in m)
    sh(server, f"postconf -e 'smtpd_milters={wanted}' && postfix reload >/dev/null 2>&1")


def scan_times(server: str) -> list[float]:
    """Milliseconds rspamd spent on each message it logged (its "time: N real" field)."""
    log = sh(server, f"cat {RSPAMD_LOG} 2>/dev/null || true")
    return [float(t) for t in re.findall(r"rspamd_task_write_log: .*? time: ([0-9.]+)ms", log)]


def filter_rounds(server: str, client: str, server_ip: str, args: argparse.Namespace,
                  passphrase: str) -> dict[bool, list[float]]:
    milters = sh(server, "postconf -h smtpd_milters").strip()
    rates: dict[bool, list[float]] = {True: [], False: []}
    try:
        for i in range(args.rounds):
            for on in ((True, False) if i % 2 == 0 else (False, True)):
                use_filter(server, on, milters)
                use_store(server, "gocryptfs", passphrase)
                rate = end_to_end(server, client, server_ip, args)
                rates[on].append(rate)
                print(f"round {i + 1}: {'rspamd' if on else 'no filter':9} end to end    "
                      f"{rate:7.1f} msg/s", flush=True)
    finally:
        use_filter(server, True, milters)
    return rates


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


def deploy(server_ip: str, client_ip: str, key: Path, workdir: Path) -> Path:
    site = new_site(workdir / "site", server_ip, key, USER)
    # Every message scanned in full and delivered to the INBOX, where it is counted. The
    # client is a trusted neighbour (options.bans.ignore): its thousands of connections a
    # minute are the load, not an attack for anvil's per-client limits.
    config = site / "mailstack.yml"
    text = config.read_text().replace("    junk_score: 6\n", "    junk_score: 14\n")
    config.write_text(text.replace("    ignore: []\n", f"    ignore: [{client_ip}]\n", 1))
    print(f"deployed in {mailstack(site, 'deploy'):.0f} s", flush=True)
    return site


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per run")
    parser.add_argument("--sessions", type=int, default=10, help="parallel SMTP sessions")
    parser.add_argument("--size", type=int, default=4096, help="message body size in bytes")
    parser.add_argument("--rounds", type=int, default=3, help="plain+encrypted pairs")
    parser.add_argument("--keep", action="store_true",
                        help="leave the containers running (for tuning by hand)")
    args = parser.parse_args()

    testbed.ensure_engine()
    image = testbed.stack_image()
    testbed.ensure_network(NETWORK)
    key = sandbox.ensure_keypair(sandbox.default_state_dir())
    tag = uuid.uuid4().hex[:6]
    site = Path("?/site")
    rates: dict[tuple[str, str], list[float]] = {}
    filtered: dict[bool, list[float]] = {}
    times: list[float] = []
    server = f"mailstack-bench-mail-{tag}"
    client = f"mailstack-bench-client-{tag}"
    try:
        host = testbed.start_host(server, image, hostname=f"mail.{DOMAIN}", network=NETWORK,
                                  ssh_pubkey=key.with_suffix(".pub").read_text())
        client_host = testbed.start_host(client, image, hostname=f"client.{DOMAIN}",
                                         network=NETWORK)
        with tempfile.TemporaryDirectory(prefix="mailstack-bench-") as tmp:
            site = deploy(host.ip, client_host.ip, key, Path(tempfile.mkdtemp(prefix="mailstack-bench-site-")
                                              if args.keep else tmp))
            passphrase = Site(site).secrets.site["storage_passphrase"]
            for i in range(args.rounds):
                order = ("plain", "gocryptfs") if i % 2 == 0 else ("gocryptfs", "plain")
                for mode in order:
                    for phase, measure in PHASES.items():
                        use_store(server, mode, passphrase)
                        rate = measure(server, client, host.ip, args)
                        rates.setdefault((phase, mode), []).append(rate)
                        print(f"round {i + 1}: {mode:9} {phase:13} {rate:7.1f} msg/s",
                              flush=True)
            filtered = filter_rounds(server, client, host.ip, args, passphrase)
            times = scan_times(server)
        print(f"\n{args.messages} messages per run, {args.rounds} rounds, {args.sessions} SMTP "
              f"sessions, {args.size}-byte bodies, one mailbox; medians in messages/s")
        print(f"{'':15}{'plain':>8}{'gocryptfs':>11}{'ratio':>8}")
        for phase in PHASES:
            plain, enc = (statistics.median(rates[(phase, m)]) for m in ("plain", "gocryptfs"))
            print(f"{phase:15}{plain:8.1f}{enc:11.1f}{enc / plain:8.2f}")
        print("aim: gocryptfs >= 0.70 of plain")
        if rates and filtered:
            with_filter, without = (statistics.median(filtered[on]) for on in (True, False))
            print(f"\nspam filter, end to end on gocryptfs: {'rspamd':>8}{'none':>8}{'ratio':>8}")
            print(f"{'':37}{with_filter:8.1f}{without:8.1f}{with_filter / without:8.2f}")
            if times:
                print(f"rspamd time per message: median {statistics.median(times):.1f} ms, "
                      f"p95 {p95(times):.1f} ms ({len(times)} messages)")
            print("aim: with rspamd >= 0.70 of without")
    finally:
        if not args.keep:
            testbed.remove_host(server)
            testbed.remove_host(client)
            testbed.remove_network(NETWORK)
        else:
            print(f"kept: {server} {client} (site in {site.parent})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
