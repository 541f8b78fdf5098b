#!/usr/bin/env python3
"""Sending in volume: a newsletter submitted on port 587 and delivered over SMTP to a
receiving MTA, through the deployed mailstack and through bare Postfix on the same host, in
one run.

The test bed: a deployed mailstack host (stack image) and the internet in a box on a network
of their own. The box's outside host runs Postfix's `smtp-sink` on port 25 and is the MX of
sink.test in the box's DNS; the mailstack host's unbound forwards to the box, so Postfix
finds it the way it finds any receiver (MX, then A). The site raises
options.spam.user_hourly_limit as a newsletter sender must (200 an hour by default) and
keeps every other option as `mailstack init` writes it.

One run of N messages: S SMTP sessions in parallel (threads in this process, Python's
smtplib) each open one connection to port 587, STARTTLS, AUTH as the site's user, and send
their share of the N messages through it, one recipient each (all at sink.test, i.e. one
destination: what options.outbound limits), as a mailing list manager with a pool of
connections does. Sessions are reused on purpose: that is how bulk senders talk to a
submission server, and it keeps the client within options.limits (20 connections at once,
60 new ones and 30 AUTH a minute), which are there for clients that open a connection per
message. The clock runs from the first connection until the host's queue is empty and
the sink has written N messages (its -d dump files, one per message; anything but exactly N
fails the run, as does any message the host refuses). In the mailstack runs every message
at the sink must carry a DKIM-Signature, and a sample is verified against the site's key.

The same host is then bare Postfix (its main.cf and master.cf changed with postconf for
those runs and put back byte for byte afterwards): no milters (neither rspamd's scan nor
OpenDKIM's signature), no lookup tables (no MariaDB: virtual domains, aliases and the sender
login map empty), no SASL (the client is trusted by its network, in mynetworks) and Postfix's
default restrictions and cleanup. What both share, because a relay without it would not be
the same job: STARTTLS on 587 (same certificate, ciphers and client), the queue, the smtp
client and its DNS lookups, the sink. The ratio mailstack/bare is then the price of what
mailstack adds to each message: AUTH and its sender check, the SQL lookups, the spam
filter's scan and rate-limit bucket, the DKIM signature.

Beside the rate, the host's CPU time per message (its container's cgroup, every process
of it, those gone since included): the machine is shared, and a neighbour's load slows the
rate of a run much more than it changes what a message costs.

Rounds alternate the order (mailstack first, then bare first, ...) after one warm-up run of
each; medians are printed side by side, with the ratio. Aim (issue 11): >= 100 msg/s and
>= 0.6 of bare Postfix on a 2-core machine.

    .venv/bin/python bench/outbound.py [--messages N] [--sessions S] [--rounds R]
                                       [--size B] [--concurrency C] [--keep]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import secrets
import shutil
import smtplib
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import testbed  # noqa: E402
from benchlib import PASSWORD, mailstack  # noqa: E402
from testbed.internet import network_subnet, sender_domain  # noqa: E402

from mailstack.sandbox import host as sandbox  # noqa: E402
from mailstack.site.directory import Site  # noqa: E402
from mailstack.verify.dkim import check_signature  # noqa: E402

DOMAIN = "bench.test"
USER = f"bench@{DOMAIN}"
SINK_DOMAIN = "sink.test"
SINK_DIR = "/var/tmp/sink"
SINK_UNIT = "smtp-sink"
QUEUE_DIRS = " ".join(f"/var/spool/postfix/{d}" for d in ("maildrop", "incoming", "active",
                                                           "deferred", "hold"))
SAVED = "/root/outbound-bench"  # the deployed main.cf and master.cf while bare runs
HOURLY_LIMIT = 1_000_000  # options.spam.user_hourly_limit's ceiling: a newsletter sender's
DKIM_SAMPLE = 20  # signatures verified per mailstack run (each costs an RSA verify here)
MODES = ("mailstack", "bare")
UNIT_SHOWN = 0.05  # ms per message: smaller units are not listed


def sh(host: str, script: str) -> str:
    return testbed.exec_in(host, ["bash", "-ec", script]).stdout


# --------------------------------------------------------------------------- the sink


def start_sink(outside: str) -> None:
    """smtp-sink on port 25 of the box's outside host, one dump file per message."""
    sh(outside, f"install -d -o nobody -g nogroup {SINK_DIR} && "
                f"systemd-run --quiet --unit={SINK_UNIT} smtp-sink -u nobody "
                f"-d '{SINK_DIR}/%H%M%S.' 0.0.0.0:25 1024 && "
                "until ss -ltn | grep -q ':25 '; do sleep 0.1; done")


def clear_sink(outside: str) -> None:
    sh(outside, f"find {SINK_DIR} -mindepth 1 -delete")


def sink_count(outside: str, expected: int, timeout: float) -> int:
    """Wait until the sink has written `expected` messages (or the timeout); their count."""
    return int(sh(outside, f"end=$((SECONDS + {int(timeout)})); "
                           f"while n=$(find {SINK_DIR} -type f | wc -l); "
                           f"[ $n -lt {expected} ] && [ $SECONDS -lt $end ]; do sleep 0.02; done; "
                           "echo $n").strip())


def sink_signed(outside: str) -> int:
    """How many dumped messages carry a DKIM-Signature header."""
    return int(sh(outside, f"grep -rli '^DKIM-Signature:' {SINK_DIR} | wc -l").strip())


def sink_sample(outside: str, n: int) -> list[bytes]:
    """n dumped messages, whole (smtp-sink's own X- and Received headers ahead of them)."""
    files = sh(outside, f"find {SINK_DIR} -type f").split()
    return [testbed.exec_in(outside, ["cat", f]).stdout.encode()
            for f in random.sample(files, min(n, len(files)))]


# --------------------------------------------------------------------------- the host

# Run inside the host: the CPU seconds its whole container has used (its cgroup, read
# through PID 1's: cgroup v1's cpuacct or v2's cpu.stat), processes gone since included.
CPU_PROBE = r"""
import os
paths = {}
for line in open("/proc/1/cgroup"):
    n, ctrl, path = line.rstrip("\n").split(":", 2)
    paths["v2" if n == "0" else ctrl] = path.removesuffix("/init.scope")
v1 = next((p for c, p in paths.items() if "cpuacct" in c.split(",")), None)
if v1 is not None and os.path.exists(f"/sys/fs/cgroup/cpuacct{v1}/cpuacct.usage"):
    print(int(open(f"/sys/fs/cgroup/cpuacct{v1}/cpuacct.usage").read()) / 1e9)
else:
    stat = dict(line.split() for line in open(f"/sys/fs/cgroup{paths['v2']}/cpu.stat"))
    print(int(stat["usage_usec"]) / 1e6)
"""


def cpu_seconds(server: str) -> float:
    return float(testbed.exec_in(server, ["python3", "-c", CPU_PROBE]).stdout)


# Run inside the host: CPU seconds per systemd unit (each process's own time and its reaped
# children's, e.g. Postfix's master collects its smtpd, cleanup and smtp processes' when
# they exit), as JSON. Where the price per message goes, beside the cgroup's total.
UNIT_PROBE = r"""
import json, os
hz, units = os.sysconf("SC_CLK_TCK"), {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
        cgroup = open(f"/proc/{pid}/cgroup").read()
    except OSError:
        continue
    path = next((line.split(":", 2)[2] for line in cgroup.splitlines()
                 if line.split(":")[1] in ("name=systemd", "")), "/")
    unit = path.rstrip("/").rsplit("/", 1)[-1].removesuffix(".service") or "-"
    ticks = sum(map(int, stat[stat.rindex(")") + 2:].split()[11:15]))
    units[unit] = units.get(unit, 0) + ticks / hz
print(json.dumps(units))
"""


def unit_seconds(server: str) -> dict[str, float]:
    return json.loads(testbed.exec_in(server, ["python3", "-c", UNIT_PROBE]).stdout)



def queue_empty(server: str, timeout: float) -> bool:
    return sh(server, f"end=$((SECONDS + {int(timeout)})); "
                      f"while [ -n \"$(find {QUEUE_DIRS} -type f -print -quit)\" ]; do "
                      "[ $SECONDS -lt $end ] || { echo no; exit 0; }; sleep 0.02; done; "
                      "echo yes").strip() == "yes"


def bare_postfix(server: str, client_network: str) -> None:
    """The deployed Postfix without what mailstack adds (see the docstring); the deployed
    files are kept in SAVED and come back with restore_postfix."""
    main = {
        "smtpd_milters": "", "non_smtpd_milters": "",
        "virtual_mailbox_domains": "", "virtual_mailbox_maps": "", "virtual_alias_maps": "",
        "smtpd_sender_login_maps": "",
        "smtpd_helo_restrictions": "", "smtpd_sender_restrictions": "",
        "smtpd_recipient_restrictions": "", "smtpd_data_restrictions": "",
        "mynetworks": f"127.0.0.0/8 [::1]/128 {client_network}",
    }
    submission = {
        "smtpd_sasl_auth_enable": "no", "smtpd_client_restrictions": "",
        "smtpd_sender_restrictions": "", "smtpd_relay_restrictions": "permit_mynetworks,reject",
        "cleanup_service_name": "cleanup",
    }
    sh(server, f"[ -d {SAVED} ] || {{ install -d -m 0700 {SAVED} && cp -p /etc/postfix/main.cf "
               f"/etc/postfix/master.cf {SAVED}/; }}")
    sh(server, "postconf -e " + " ".join(f"'{k}={v}'" for k, v in main.items()))
    sh(server, "postconf -P " + " ".join(f"'submission/inet/{k}={v}'"
                                          for k, v in submission.items()))
    reload_postfix(server)


def restore_postfix(server: str) -> None:
    sh(server, f"if [ -d {SAVED} ]; then cp -p {SAVED}/main.cf {SAVED}/master.cf /etc/postfix/ "
               f"&& rm -r {SAVED}; fi")
    reload_postfix(server)


def reload_postfix(server: str) -> None:
    """postfix reload, then until a new submission smtpd answers with the new settings."""
    sh(server, "postfix check && postfix reload 2>/dev/null && sleep 1")


# --------------------------------------------------------------------------- the client


def tls_context() -> ssl.SSLContext:
    """The test host's certificate is self-signed."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def newsletter(count: int, size: int, tag: str) -> list[tuple[str, bytes]]:
    """(recipient, message) for each of count recipients at the sink: what a list manager
    sends, one personalised copy per reader."""
    line = b"An ordinary line of a newsletter about gardening, sent to many readers.\r\n"
    body = line * max(1, size // len(line))
    out = []
    for i in range(count):
        rcpt = f"reader{i}@{SINK_DOMAIN}"
        head = (f"From: {USER}\r\nTo: {rcpt}\r\nSubject: Newsletter {tag} for reader {i}\r\n"
                f"Date: {formatdate()}\r\nMessage-ID: <{tag}.{i}@{DOMAIN}>\r\n"
                "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
        out.append((rcpt, head.encode() + body))
    return out


@dataclass
class Submitter:
    """S sessions in parallel, each reused for its share of the messages."""

    ip: str
    sessions: int
    auth: bool
    errors: list[str] = field(default_factory=list)

    def send(self, messages: list[tuple[str, bytes]]) -> None:
        jobs = iter(messages)
        lock = threading.Lock()
        threads = [threading.Thread(target=self._session, args=(jobs, lock))
                   for _ in range(self.sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.errors:
            raise SystemExit(f"{len(self.errors)} submission(s) failed, e.g. {self.errors[0]}")

    def _session(self, jobs: Iterator[tuple[str, bytes]], lock: threading.Lock) -> None:
        try:
            with smtplib.SMTP(self.ip, 587, local_hostname=f"newsletter.{DOMAIN}",
                              timeout=120) as smtp:
                smtp.starttls(context=tls_context())
                if self.auth:
                    smtp.login(USER, PASSWORD)
                while True:
                    with lock:
                        job = next(jobs, None)
                    if job is None:
                        return
                    smtp.sendmail(USER, [job[0]], job[1])
        except (smtplib.SMTPException, OSError) as exc:
            with lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- one run


@dataclass
class Bed:
    server: str
    ip: str
    outside: str
    site: Path
    client_network: str


@dataclass
class Run:
    rate: float  # messages per second, end to end
    cpu: float  # milliseconds of the host's CPU per message
    units: dict[str, float] = field(default_factory=dict)  # ms per message, per systemd unit


def one_run(bed: Bed, mode: str, args: argparse.Namespace, tag: str) -> Run:
    """N messages through one mode: messages per second, first connection to the last
    message at the sink with the queue empty, and the host's CPU time per message."""
    clear_sink(bed.outside)
    messages = newsletter(args.messages, args.size, tag)
    budget = max(60.0, args.messages / 5)  # 5 msg/s: far below anything seen; a stuck run ends
    cpu_before, units_before = cpu_seconds(bed.server), unit_seconds(bed.server)
    started = time.monotonic()
    Submitter(bed.ip, args.sessions, auth=mode == "mailstack").send(messages)
    if not queue_empty(bed.server, budget):
        queue = sh(bed.server, "postqueue -p | tail -5")
        raise SystemExit(f"{mode}: the queue is not empty after {budget:.0f} s:\n{queue}")
    counted = sink_count(bed.outside, args.messages, 30)
    elapsed = time.monotonic() - started
    cpu = cpu_seconds(bed.server) - cpu_before
    units = {u: 1000 * (t - units_before.get(u, 0.0)) / args.messages
             for u, t in unit_seconds(bed.server).items()}
    time.sleep(0.5)
    counted = sink_count(bed.outside, args.messages, 0)  # nothing more arrives later
    if counted != args.messages:
        raise SystemExit(f"{mode}: the sink has {counted} messages, expected {args.messages}; "
                         f"see `journalctl -u postfix@-` in {bed.server}")
    signed = sink_signed(bed.outside)
    if signed != (args.messages if mode == "mailstack" else 0):
        raise SystemExit(f"{mode}: {signed} of {counted} messages at the sink are DKIM-signed")
    if mode == "mailstack":
        keys = Site(bed.site).secrets.dkim
        for raw in sink_sample(bed.outside, DKIM_SAMPLE):
            ok, detail = check_signature(raw, keys)
            if not ok:
                raise SystemExit(f"a DKIM signature at the sink does not verify: {detail}")
    return Run(args.messages / elapsed, 1000 * cpu / args.messages, units)


# --------------------------------------------------------------------------- setup


def use_mode(bed: Bed, mode: str) -> None:
    if mode == "bare":
        bare_postfix(bed.server, bed.client_network)
    else:
        restore_postfix(bed.server)


# --------------------------------------------------------------------------- setup


@contextmanager
def boxed_host(tag: str, key: Path, keep: bool) -> Iterator[tuple[testbed.Host, testbed.Internet]]:
    """A stack-image host and the internet in a box on a network of their own; removed
    afterwards, also on failure (unless keep)."""
    network = name = f"mailstack-bench-outbound-{tag}"
    testbed.ensure_network(network)
    internet = testbed.Internet(network, prefix=f"mailstack-inet-outbound-{tag}")
    try:
        host = testbed.start_host(name, testbed.stack_image(), hostname=f"mail.{DOMAIN}",
                                  network=network,
                                  ssh_pubkey=key.with_suffix(".pub").read_text())
        internet.start()
        yield host, internet
    finally:
        if keep:
            print(f"kept: {name}, the box's {internet.prefix}-* containers, network "
                  f"{network}", flush=True)
        else:
            internet.stop()
            testbed.remove_host(name)
            testbed.remove_network(network)


def deploy(site: Path, host: testbed.Host, internet: testbed.Internet, key: Path,
           args: argparse.Namespace) -> None:
    """`mailstack init` as a user would, the box as the resolver, a newsletter sender's hourly
    limit, the site's records and sink.test published, the user added, deployed."""
    mailstack(None, "init", str(site), "--domain", DOMAIN, "--hostname", f"mail.{DOMAIN}",
              "--host", host.ip, "--ssh-key", str(key))
    testbed.set_site_resolver(site, internet.resolver_ip, dnssec=False)
    config = site / "mailstack.yml"
    text = config.read_text()
    for old, new in (("    user_hourly_limit: 200\n", f"    user_hourly_limit: {HOURLY_LIMIT}\n"),
                     ("    concurrency: 20\n", f"    concurrency: {args.concurrency}\n")):
        if old not in text:
            raise SystemExit(f"mailstack.yml has no {old!r}")
        text = text.replace(old, new, 1)
    config.write_text(text)
    mailstack(site, "user", "add", USER, "--password-stdin", input=PASSWORD + "\n")
    dns = subprocess.run([sys.executable, "-m", "mailstack", "--site", str(site), "dns",
                          "--format", "json"], capture_output=True, text=True, check=True)
    internet.publish(testbed.site_records(dns.stdout))
    internet.publish(sender_domain(SINK_DOMAIN, outside(internet).host.ip))
    print(f"deployed in {mailstack(site, 'deploy'):.0f} s", flush=True)


def outside(internet: testbed.Internet) -> testbed.Sender:
    if internet.sender is None:
        raise SystemExit("the internet in a box has no outside host")
    return internet.sender


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per run")
    parser.add_argument("--sessions", type=int, default=10,
                        help="parallel SMTP sessions (at most 20: options.limits.connections)")
    parser.add_argument("--rounds", type=int, default=3, help="mailstack+bare pairs")
    parser.add_argument("--size", type=int, default=4096, help="message body size in bytes")
    parser.add_argument("--concurrency", type=int, default=20,
                        help="options.outbound.concurrency: deliveries at once to sink.test")
    parser.add_argument("--keep", action="store_true",
                        help="leave the containers running (for tuning by hand)")
    args = parser.parse_args()
    if not 1 <= args.sessions <= 20:
        parser.error("--sessions must be between 1 and 20 (options.limits.connections)")

    testbed.ensure_engine()
    key = sandbox.ensure_keypair(sandbox.default_state_dir())
    tag = secrets.token_hex(3)
    runs: dict[str, list[Run]] = {m: [] for m in MODES}
    workdir = Path(tempfile.mkdtemp(prefix="mailstack-bench-outbound-"))
    try:
        with boxed_host(tag, key, args.keep) as (host, internet):
            bed = Bed(host.name, host.ip, outside(internet).host.name, workdir / "site",
                      network_subnet(f"mailstack-bench-outbound-{tag}"))
            deploy(bed.site, host, internet, key, args)
            start_sink(bed.outside)
            testbed.wait_for_port(host.ip, 587, 60)
            tags = itertools.count()
            try:
                for mode in MODES:  # warm-up: caches, processes, rspamd's maps; not counted
                    use_mode(bed, mode)
                    run = one_run(bed, mode, args, f"w{next(tags)}")
                    print(f"warm-up:  {mode:9} {run.rate:7.1f} msg/s {run.cpu:6.2f} ms CPU/msg",
                          flush=True)
                for i in range(args.rounds):
                    for mode in (MODES if i % 2 == 0 else tuple(reversed(MODES))):
                        use_mode(bed, mode)
                        run = one_run(bed, mode, args, f"r{next(tags)}")
                        runs[mode].append(run)
                        print(f"round {i + 1}:  {mode:9} {run.rate:7.1f} msg/s {run.cpu:6.2f} ms "
                              "CPU/msg", flush=True)
            finally:
                restore_postfix(bed.server)
    finally:
        if args.keep:
            print(f"site in {workdir / 'site'}")
        else:  # it holds the vault password
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{args.messages} messages per run, {args.rounds} rounds, {args.sessions} SMTP "
          f"sessions (587, STARTTLS), {args.size}-byte bodies, one recipient each at "
          f"{SINK_DOMAIN}; options.outbound.concurrency {args.concurrency}; medians")
    print(f"{'':22}{'mailstack':>10}{'bare':>8}{'ratio':>8}")
    ours, bare = (statistics.median(r.rate for r in runs[m]) for m in MODES)
    print(f"{'msg/s, end to end':22}{ours:10.1f}{bare:8.1f}{ours / bare:8.2f}")
    ours, bare = (statistics.median(r.cpu for r in runs[m]) for m in MODES)
    print(f"{'host CPU ms per msg':22}{ours:10.2f}{bare:8.2f}{ours / bare:8.2f}")
    print("aim: mailstack >= 100 msg/s and >= 0.60 of bare Postfix")
    print("\nhost CPU ms per msg by systemd unit (medians; the cgroup's total also counts "
          "what the probes themselves and the kernel cost)")
    names = {u for m in MODES for r in runs[m] for u in r.units}
    per = {u: [statistics.median(r.units.get(u, 0.0) for r in runs[m]) for m in MODES]
           for u in names}
    for unit, (ours, bare) in sorted(per.items(), key=lambda kv: -kv[1][0]):
        if max(ours, bare) >= UNIT_SHOWN:
            print(f"{unit:26}{ours:6.2f}{bare:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
