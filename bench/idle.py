#!/usr/bin/env python3
"""Push over IMAP IDLE at scale: N idle IMAPS connections on one host, Dovecot's memory per
connection with and without hibernation, and delivery -> EXISTS latency, in one run.

A fresh host from the test-bed stack image, deployed with U users (default 50) on the
gocryptfs store. Then twice, first as deployed (imap_hibernate_timeout 30 s), then with
hibernation off (`imap_hibernate_timeout = 0` written into dovecot.conf, Dovecot
restarted):

1. Dovecot's memory with no client: PSS (/proc/PID/smaps_rollup, shared pages divided
   among their users) summed over every process of dovecot.service.
2. N = U x C connections over IMAPS from this machine (one address: C per user, under
   mail_max_userip_connections), as mail apps keep them: each user's first on its INBOX,
   the others each on a folder of its own (made beforehand with doveadm), all in IDLE.
   Then the hibernation timeout and a settle, and Dovecot's memory again, by process:
   (with N - with none) / N per connection.
3. D deliveries over SMTP (port 25, from this machine) to the users' INBOXes in turn, each
   user at most once per round and rounds apart by more than the hibernation timeout, so
   that every delivery wakes a client that idles hibernated (as deployed). A woken client
   leaves IDLE and enters it again, as mail apps do after fetching. Latency: from Dovecot's
   LMTP log line (the message saved) to the client's `* N EXISTS`, and from SMTP's 250.

Every IDLE client holds an inotify instance of the mail user (uid 5000): the kernel's
fs.inotify.max_user_instances must exceed N. The hosts are containers on this machine's
kernel, which the deploy cannot raise (it warns): the script stops unless it is high enough
(`sysctl -w fs.inotify.max_user_instances=8192` as root, what the deploy sets on a VPS).

    .venv/bin/python bench/idle.py [--users U] [--per-user C] [--deliveries D] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import json
import smtplib
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import testbed  # noqa: E402
from benchlib import PASSWORD, mailstack, new_site  # noqa: E402

from mailstack.render.context import IMAP_IDLE  # noqa: E402
from mailstack.sandbox import host as sandbox  # noqa: E402
from mailstack.site.config import duration_seconds  # noqa: E402

DOMAIN = "bench.test"
HIBERNATE_AFTER = duration_seconds(IMAP_IDLE["hibernate_timeout"])
CONNECT_AT_ONCE = 40  # TLS handshakes and logins in flight
MiB = 1024 * 1024

# Runs inside the host: PSS of every process of dovecot.service, by command name.
PSS = r"""
import json, os
out = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        if not open(f"/proc/{pid}/cgroup").read().strip().endswith("/dovecot.service"):
            continue
        comm = open(f"/proc/{pid}/comm").read().strip()
        pss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/smaps_rollup") if l.startswith("Pss:"))
    except (OSError, StopIteration):
        continue
    n, total = out.get(comm, (0, 0))
    out[comm] = (n + 1, total + pss * 1024)
print(json.dumps(out))
"""


def tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


@dataclass
class Client:
    """One IMAPS connection in IDLE on a folder; records when each EXISTS arrives."""

    user: str
    folder: str
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    exists: list[float] = field(default_factory=list)
    tag: int = 0

    async def command(self, text: str) -> bytes:
        self.tag += 1
        t = f"t{self.tag}".encode()
        self.writer.write(t + b" " + text.encode() + b"\r\n")
        while not (line := await self.reader.readline()).startswith(t + b" "):
            if not line:
                raise ConnectionError(f"{self.user}: closed during {text.split()[0]}")
        return line

    async def start(self, ip: str) -> None:
        self.reader, self.writer = await asyncio.open_connection(ip, 993, ssl=tls(), limit=1 << 20)
        await self.reader.readline()
        for cmd in (f'LOGIN "{self.user}" "{PASSWORD}"', f'SELECT "{self.folder}"'):
            answer = await self.command(cmd)
            if b" OK" not in answer:
                raise ConnectionError(f"{self.user}: {cmd.split()[0]}: {answer!r}")
        await self.idle()

    async def idle(self) -> None:
        self.tag += 1
        self.writer.write(f"t{self.tag} IDLE\r\n".encode())
        if not (await self.reader.readline()).startswith(b"+"):
            raise ConnectionError(f"{self.user}: IDLE refused")

    async def listen(self) -> None:
        """In IDLE until closed: at each new EXISTS, DONE and IDLE again (as mail apps do)."""
        while line := await self.reader.readline():
            if line.startswith(b"* ") and line.rstrip().endswith(b" EXISTS"):
                self.exists.append(time.time())
                self.writer.write(b"DONE\r\n")
                t = f"t{self.tag} ".encode()
                while not (await self.reader.readline()).startswith(t):
                    pass
                await self.idle()

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def folder(i: int) -> str:
    """The folder a user's i-th connection idles on."""
    return "INBOX" if i == 0 else f"watched{i}"


def sh(host: str, script: str, input: str | None = None) -> str:
    return testbed.exec_in(host, ["bash", "-ec", script], input=input).stdout


def pss(host: str) -> dict[str, tuple[int, int]]:
    return {k: tuple(v) for k, v in json.loads(sh(host, "python3 -", input=PSS)).items()}


def total(mem: dict[str, tuple[int, int]]) -> int:
    return sum(b for _, b in mem.values())


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class Sender:
    """One SMTP session to port 25 for every delivery (Postfix limits new connections per
    client and minute)."""

    def __init__(self, ip: str):
        self.smtp = smtplib.SMTP(ip, 25, timeout=60, local_hostname="client.test")

    def deliver(self, rcpt: str, subject: str) -> tuple[str, float]:
        """One message; its Message-ID and when DATA was accepted."""
        msgid = email.utils.make_msgid(domain="outside.test")
        self.smtp.sendmail("", [rcpt], f"From: <friend@outside.test>\r\nTo: {rcpt}\r\n"
                           f"Subject: {subject}\r\nDate: {email.utils.formatdate()}\r\n"
                           f"Message-ID: {msgid}\r\n\r\nbody of {subject}\r\n")
        return msgid, time.time()

    def close(self) -> None:
        self.smtp.quit()


def logged_at(entry: dict) -> float:
    """A journal entry's time: when the logging process sent it, else when journald got it."""
    return int(entry.get("_SOURCE_REALTIME_TIMESTAMP") or entry["__REALTIME_TIMESTAMP"]) / 1e6


def saved_times(host: str, since: float) -> dict[str, float]:
    """msgid -> when Dovecot's LMTP logged it stored (the journal's timestamp)."""
    out = sh(host, f"journalctl -u dovecot -o json --no-pager --since @{int(since)} "
                   "-g 'stored mail into mailbox'")
    saved = {}
    for line in out.splitlines():
        entry = json.loads(line)
        msg = entry["MESSAGE"]
        start = msg.index("msgid=") + 6
        msgid = msg[start:msg.index(">: ", start) + 1]
        saved[msgid] = logged_at(entry)
    return saved


async def run_mode(name: str, host: str, ip: str, users: list[str], per_user: int,
                   deliveries: int, hibernating: bool) -> dict:
    result: dict = {"mode": name}
    result["baseline"] = pss(host)
    clients = [Client(u, folder(i)) for u in users for i in range(per_user)]
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)

    async def start(c: Client) -> None:
        async with gate:
            await c.start(ip)

    started = time.monotonic()
    await asyncio.gather(*(start(c) for c in clients))
    result["connect_s"] = time.monotonic() - started
    print(f"[{name}] {len(clients)} connections in IDLE after {result['connect_s']:.0f} s",
          flush=True)
    listeners = [asyncio.create_task(c.listen()) for c in clients]
    try:
        await asyncio.sleep(HIBERNATE_AFTER + 20)
        result["idle"] = pss(host)
        result["who"] = int(sh(host, "doveadm who -1 | tail -n +2 | wc -l"))
        inboxes = {c.user: c for c in clients if c.folder == "INBOX"}
        sent: list[tuple[str, str, float]] = []
        since = time.time() - 5
        sender = await asyncio.to_thread(Sender, ip)
        for k in range(deliveries):
            user = users[k % len(users)]
            if k and k % len(users) == 0 and hibernating:
                # Every user's INBOX client idles hibernated again before its next message.
                await asyncio.sleep(HIBERNATE_AFTER + 10)
            msgid, accepted = await asyncio.to_thread(sender.deliver, user, f"push {k}")
            sent.append((user, msgid, accepted))
            await asyncio.sleep(0.3)
        await asyncio.to_thread(sender.close)
        deadline = time.monotonic() + 60
        wanted = {u: sum(1 for s in sent if s[0] == u) for u in inboxes}
        while any(len(inboxes[u].exists) < n for u, n in wanted.items()):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        saved = await asyncio.to_thread(saved_times, host, since)
        seen: dict[str, int] = {}
        from_saved, from_smtp, missing = [], [], 0
        for user, msgid, accepted in sent:
            i = seen.get(user, 0)
            seen[user] = i + 1
            if i >= len(inboxes[user].exists) or msgid not in saved:
                missing += 1
                continue
            at = inboxes[user].exists[i]
            from_saved.append(at - saved[msgid])
            from_smtp.append(at - accepted)
        result.update(from_saved=from_saved, from_smtp=from_smtp, missing=missing)
    finally:
        for t in listeners:
            t.cancel()
        for c in clients:
            c.close()
    return result


def report(results: list[dict], n: int) -> None:
    kinds = ["imap-login", "imap", "imap-hibernate", "auth", "dovecot"]
    print(f"\n{n} IDLE connections (IMAPS, one client address), Dovecot's PSS")
    print(f"{'':34}" + "".join(f"{r['mode']:>22}" for r in results))
    rows = [("PSS, no client (MiB)", lambda r: f"{total(r['baseline']) / MiB:.1f}"),
            (f"PSS, {n} idle (MiB)", lambda r: f"{total(r['idle']) / MiB:.1f}"),
            ("per idle connection (KiB)",
             lambda r: f"{(total(r['idle']) - total(r['baseline'])) / n / 1024:.0f}")]
    for kind in kinds:
        rows.append((f"  {kind}: processes, MiB",
                     lambda r, k=kind: "{} {:.1f}".format(*(lambda v: (v[0], v[1] / MiB))(
                         r["idle"].get(k, (0, 0))))))
    rows += [("doveadm who: connections", lambda r: str(r["who"])),
             ("connecting took (s)", lambda r: f"{r['connect_s']:.0f}"),
             ("deliveries measured", lambda r: f"{len(r['from_saved'])} ({r['missing']} missed)"),
             ("saved -> EXISTS p50 (ms)", lambda r: f"{statistics.median(r['from_saved']) * 1000:.0f}"),
             ("saved -> EXISTS p99 (ms)", lambda r: f"{p(r['from_saved'], 0.99) * 1000:.0f}"),
             ("saved -> EXISTS max (ms)", lambda r: f"{max(r['from_saved']) * 1000:.0f}"),
             ("SMTP 250 -> EXISTS p50 (ms)", lambda r: f"{statistics.median(r['from_smtp']) * 1000:.0f}"),
             ("SMTP 250 -> EXISTS p99 (ms)", lambda r: f"{p(r['from_smtp'], 0.99) * 1000:.0f}")]
    for label, cell in rows:
        print(f"{label:34}" + "".join(f"{cell(r):>22}" for r in results))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--per-user", type=int, default=20,
                        help=f"connections per user (at most {IMAP_IDLE['max_userip_connections']})")
    parser.add_argument("--deliveries", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="leave the host running")
    args = parser.parse_args()
    n = args.users * args.per_user
    if args.per_user > IMAP_IDLE["max_userip_connections"]:
        raise SystemExit("--per-user is above mail_max_userip_connections")

    testbed.ensure_engine()
    name = f"mailstack-bench-idle-{uuid.uuid4().hex[:6]}"
    key = sandbox.ensure_keypair(sandbox.default_state_dir())
    users = [f"idle{i:03d}@{DOMAIN}" for i in range(args.users)]
    try:
        host = testbed.start_host(name, testbed.stack_image(), hostname=f"mail.{DOMAIN}",
                                  ssh_pubkey=key.with_suffix(".pub").read_text())
        with tempfile.TemporaryDirectory(prefix="mailstack-bench-") as tmp:
            site = new_site(Path(tmp) / "site", host.ip, key, users[0])
            for user in users[1:]:
                mailstack(site, "user", "add", user, "--password-stdin", input=PASSWORD + "\n")
            print(f"{len(users)} users; deployed in {mailstack(site, 'deploy'):.0f} s", flush=True)
        folders = " ".join(folder(i) for i in range(1, args.per_user))
        sh(name, f"for u in {' '.join(users)}; do doveadm mailbox create -u $u {folders}; done")
        time.sleep(20)  # the deploy's processes (auth workers) end
        limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
        if limit < n + 100:
            raise SystemExit(f"fs.inotify.max_user_instances is {limit}: {n} IDLE clients "
                             "need more (`sysctl -w fs.inotify.max_user_instances=8192` as root)")
        results = [asyncio.run(run_mode("hibernation (30 s)", name, host.ip, users,
                                        args.per_user, args.deliveries, True))]
        sh(name, "sed -i 's/^imap_hibernate_timeout = .*/imap_hibernate_timeout = 0/' "
                 "/etc/dovecot/dovecot.conf && systemctl restart dovecot && sleep 20")
        results.append(asyncio.run(run_mode("no hibernation", name, host.ip, users,
                                            args.per_user, args.deliveries, False)))
        report(results, n)
    finally:
        if args.keep:
            print(f"kept: {name}")
        else:
            testbed.remove_host(name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
