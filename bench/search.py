#!/usr/bin/env python3
"""IMAP SEARCH BODY with the full-text index (Xapian) against Dovecot's scan, one mailbox,
same host, same run; with the indexing rate and the index's size.

A fresh host from the test-bed stack image, deployed with the default site (gocryptfs store,
FTS on). Then:

1. N generated messages are written as Maildir files straight into the user's INBOX on the
   store (as the mail user, through the mount, the way Dovecot would find mail restored from
   a backup): bodies of lognormal size (median about 2 KiB, a long tail to ~200 KiB) drawn
   from a Zipf-distributed vocabulary of pseudo-words plus a few non-ASCII words, realistic
   headers, one in ten with a text attachment. Fast: no SMTP in the way.
2. Dovecot reads the folder (`doveadm mailbox status`: its index of the Maildir, timed
   apart), then `doveadm index` builds the Xapian index: messages/s, the indexer's peak RSS,
   and the index's size as % of the mail's (apparent sizes, below the mount).
3. Two IMAP sessions on the same mailbox, side by side: Dovecot's imap binary run for the
   user over `docker exec` (PREAUTH, no TLS: the same pipe for both, so the difference is the
   search alone); one as deployed (FTS, fts_enforced), one with `-o mail_plugins=quota`
   (no FTS: the scan through every message). Each asks SEARCH BODY for words of every
   frequency (rare, medium, common) and for a word in no message; FTS gets --queries of
   them, the scan --scan-queries (each reads the whole folder). p50/p95 per side.

    .venv/bin/python bench/search.py [--messages N] [--queries Q] [--scan-queries S] [--keep]

The aim (issue 12): FTS p95 < 100 ms on 100,000 messages, at least 20x faster than the scan.
"""

from __future__ import annotations

import argparse
import imaplib
import inspect
import json
import random
import shlex
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

from mailstack.render.context import FTS, VMAIL  # noqa: E402
from mailstack.sandbox import host as sandbox  # noqa: E402

DOMAIN = "bench.test"
USER = f"bench@{DOMAIN}"
HOME = f"{VMAIL['root']}/{DOMAIN}/bench"
MAILDIR = f"{HOME}/Maildir"
INDEX = f"{MAILDIR}/{FTS['index_dir']}"
IMAP = "/usr/lib/dovecot/imap"
VOCABULARY = 30000
# Words by frequency rank (Zipf: rank 1 is in nearly every message).
RANKS = {"common": (20, 200), "medium": (200, 3000), "rare": (3000, VOCABULARY)}
UMLAUT_WORDS = ["Größe", "café", "naïve", "Übersicht", "señal", "façade", "Ærø", "smörgåsbord"]


def vocabulary(seed: int, size: int) -> list[str]:
    """Pseudo-words from syllables, the same for a seed here and on the host (GENERATOR)."""
    import random
    syllables = ["ka", "lo", "mi", "ne", "ra", "tu", "ve", "si", "do", "ber", "gan", "tor",
                 "lin", "mes", "pra", "sto", "qui", "zel", "fen", "hal", "wor", "dru", "ple",
                 "cas", "nor", "ith"]
    rng = random.Random(seed)
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < size:
        w = "".join(rng.choice(syllables) for _ in range(rng.randint(2, 4)))
        if len(words) > 5000:
            w += str(rng.randint(0, 9))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


# Runs on the host as the mail user (with vocabulary() above it): writes argv[1] messages
# into the Maildir argv[2], words from the vocabulary of the seed argv[3].
GENERATOR = inspect.getsource(vocabulary) + r"""
import bisect, itertools, math, os, random, sys, time, unicodedata
from email.header import Header
n, maildir, seed, vocab_size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
umlauts = sys.argv[5].split(",")
rng = random.Random(seed)
words = vocabulary(seed, vocab_size)
# Zipf (s = 1.07) over ranks, as a cumulative table for bisect.
weights = [1 / (r + 1) ** 1.07 for r in range(vocab_size)]
cum = list(itertools.accumulate(weights))
total = cum[-1]
def draw(k):
    return [words[bisect.bisect_left(cum, rng.random() * total)] for _ in range(k)]
names = ["Anna Schmidt", "Jürgen Größmann", "Zoë Martin", "Li Wei", "Carlos Peña", "Mary Smith",
         "Olaf Ærø", "Priya Patel", "Tom Jones", "Élodie Faure"]
os.makedirs(f"{maildir}/cur", exist_ok=True)
os.makedirs(f"{maildir}/new", exist_ok=True)
os.makedirs(f"{maildir}/tmp", exist_ok=True)
host = os.uname().nodename
start = int(time.time()) - n * 60
written = 0
for i in range(n):
    size = min(200_000, int(rng.lognormvariate(math.log(2048), 1.0)))
    nwords = max(5, size // 7)
    body = draw(nwords)
    if rng.random() < 0.05:
        body.append(rng.choice(umlauts))
    lines, line = [], []
    for w in body:
        line.append(w)
        if len(line) >= 11:
            lines.append(" ".join(line)); line = []
    lines.append(" ".join(line))
    # Ends with a line break, as mail clients write it (1.9.1 drops a part's last word
    # when no line break follows it: README "Full-text search").
    text = "\r\n".join(lines) + "\r\n"
    name = rng.choice(names)
    local = unicodedata.normalize("NFKD", name.split()[0].lower()).encode("ascii", "ignore").decode()
    display = Header(name, "utf-8").encode() if not name.isascii() else name
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(start + i * 60))
    subject = " ".join(draw(rng.randint(3, 8)))
    head = (f"Return-Path: <{local}@example.net>\r\n"
            f"Received: from mx.example.net by mail.bench.test with LMTP; {date}\r\n"
            f"From: {display} <{local}@example.net>\r\n"
            f"To: bench@bench.test\r\nSubject: {subject}\r\nDate: {date}\r\n"
            f"Message-ID: <{i}.{seed}@example.net>\r\nMIME-Version: 1.0\r\n")
    if i % 10 == 9:
        b = f"b{i}"
        att = "\r\n".join(" ".join(draw(11)) for _ in range(rng.randint(5, 60)))
        msg = (head + f'Content-Type: multipart/mixed; boundary="{b}"\r\n\r\n'
               f"--{b}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
               f"{text}\r\n--{b}\r\nContent-Type: text/plain; charset=utf-8; name=notes.txt\r\n"
               f"Content-Disposition: attachment; filename=notes.txt\r\n\r\n{att}\r\n\r\n--{b}--\r\n")
    else:
        msg = (head + "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
               + text)
    data = msg.encode()
    base = f"{start + i * 60}.M{i}P{os.getpid()}.{host},S={len(data)}"
    with open(f"{maildir}/cur/{base}:2,S", "wb") as f:
        f.write(data)
    written += len(data)
print(written)
"""

# Runs on the host as root: `doveadm index` of the INBOX, its wall time and peak RSS (KiB).
INDEXER = r"""
import json, resource, subprocess, sys, time
t = time.monotonic()
subprocess.run(["doveadm", "index", "-u", sys.argv[1], "INBOX"], check=True)
print(json.dumps({"seconds": time.monotonic() - t,
                  "max_rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def sh(host: str, script: str, input: str | None = None) -> str:
    return testbed.exec_in(host, ["bash", "-ec", script], input=input).stdout


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def session(container: str, *options: str) -> imaplib.IMAP4_stream:
    command = shlex.join(["docker", "exec", "-i", container, IMAP, "-u", USER, *options])
    imap = imaplib.IMAP4_stream(command)
    typ, data = imap.select("INBOX", readonly=True)
    if typ != "OK":
        raise SystemExit(f"SELECT INBOX failed: {data}")
    return imap


def timed_search(imap: imaplib.IMAP4_stream, word: str) -> tuple[float, int]:
    started = time.monotonic()
    typ, data = imap.search("UTF-8", f'BODY "{word}"'.encode())
    elapsed = (time.monotonic() - started) * 1000
    if typ != "OK":
        raise SystemExit(f"SEARCH BODY {word!r} failed: {data}")
    return elapsed, len(data[0].split())


def queries(words: list[str], count: int, rng: random.Random) -> list[tuple[str, str]]:
    """count (kind, word) pairs, the kinds in turn: common, medium, rare, non-ASCII, absent."""
    kinds = [*RANKS, "non-ascii", "absent"]
    picked = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        if kind in RANKS:
            lo, hi = RANKS[kind]
            picked.append((kind, words[rng.randrange(lo, hi)]))
        elif kind == "non-ascii":
            picked.append((kind, rng.choice(UMLAUT_WORDS)))
        else:
            picked.append((kind, f"zz{uuid.uuid4().hex[:8]}"))
    return picked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="messages in the mailbox")
    parser.add_argument("--queries", type=int, default=100, help="SEARCH BODY with FTS")
    parser.add_argument("--scan-queries", type=int, default=5,
                        help="SEARCH BODY without FTS (each reads every message)")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--keep", action="store_true", help="leave the host running")
    args = parser.parse_args()

    testbed.ensure_engine()
    tag = uuid.uuid4().hex[:6]
    network = f"mailstack-bench-search-{tag}"
    server = f"mailstack-bench-search-{tag}"
    testbed.ensure_network(network)
    key = sandbox.ensure_keypair(sandbox.default_state_dir())
    try:
        host = testbed.start_host(server, testbed.stack_image(), hostname=f"mail.{DOMAIN}",
                                  network=network, ssh_pubkey=key.with_suffix(".pub").read_text())
        with tempfile.TemporaryDirectory(prefix="mailstack-bench-") as tmp:
            site = new_site(Path(tmp) / "site", host.ip, key, USER)
            print(f"deployed in {mailstack(site, 'deploy'):.0f} s", flush=True)
            # The user's home exists once Dovecot has served the user once.
            sh(server, f"doveadm mailbox status -u {USER} messages INBOX >/dev/null")

            started = time.monotonic()
            mail_bytes = int(sh(server, f"runuser -u {VMAIL['user']} -- python3 - "
                                        f"{args.messages} {MAILDIR} {args.seed} {VOCABULARY} "
                                        f"{','.join(UMLAUT_WORDS)}", input=GENERATOR))
            print(f"generated {args.messages} messages ({mail_bytes / 2**20:.0f} MiB) in "
                  f"{time.monotonic() - started:.0f} s", flush=True)
            started = time.monotonic()
            # "messages=N" (doveadm's flow format), after the mailbox's name.
            counted = sh(server, f"doveadm mailbox status -u {USER} messages INBOX").split("=")[-1].strip()
            sync = time.monotonic() - started
            if counted != str(args.messages):
                raise SystemExit(f"Dovecot sees {counted}, expected {args.messages}")
            print(f"Dovecot read the folder in {sync:.1f} s", flush=True)
            indexed = json.loads(sh(server, f"python3 - {USER}", input=INDEXER))
            rate = args.messages / indexed["seconds"]
            print(f"indexed in {indexed['seconds']:.1f} s ({rate:.0f} msg/s)", flush=True)
            sizes = sh(server, f"du -sb {INDEX} | cut -f1; du -sb {MAILDIR}/cur | cut -f1").split()
            index_bytes, maildir_bytes = int(sizes[0]), int(sizes[1])

            words = vocabulary(args.seed, VOCABULARY)
            rng = random.Random(args.seed)
            fts = session(server)
            scan = session(server, "-o", "mail_plugins=quota")
            timed: dict[str, list[tuple[str, float, int]]] = {"fts": [], "scan": []}
            try:
                # One of each side first, uncounted: both sessions' caches warm alike.
                timed_search(fts, words[100]), timed_search(scan, words[100])
                plan = queries(words, args.queries, rng)
                for i, (kind, w) in enumerate(plan):
                    ms, hits = timed_search(fts, w)
                    timed["fts"].append((kind, ms, hits))
                    if i < args.scan_queries:
                        ms_scan, hits_scan = timed_search(scan, w)
                        timed["scan"].append((kind, ms_scan, hits_scan))
                        # The index answers what reading the messages answers.
                        if hits_scan != hits:
                            print(f"  differ: {kind} {w!r}: FTS {hits}, scan {hits_scan}")
                        print(f"  {kind:9} {w!r:22} FTS {ms:7.1f} ms  scan {ms_scan:9.1f} ms  "
                              f"{hits} hits", flush=True)
            finally:
                fts.logout()
                scan.logout()

        fts_ms = [ms for _, ms, _ in timed["fts"]]
        scan_ms = [ms for _, ms, _ in timed["scan"]]
        print(f"\n{args.messages} messages, {mail_bytes / 2**20:.0f} MiB of mail, one folder, "
              f"on the gocryptfs store")
        print(f"indexing: {rate:.0f} msg/s ({indexed['seconds']:.1f} s), indexer peak RSS "
              f"{indexed['max_rss_kib'] / 1024:.0f} MiB; index {index_bytes / 2**20:.0f} MiB = "
              f"{100 * index_bytes / maildir_bytes:.0f} % of the mail "
              f"({maildir_bytes / 2**20:.0f} MiB)")
        print(f"SEARCH BODY    {'queries':>8}{'p50 ms':>10}{'p95 ms':>10}")
        print(f"FTS (Xapian)   {len(fts_ms):8}{statistics.median(fts_ms):10.1f}{p(fts_ms, 0.95):10.1f}")
        print(f"scan (no FTS)  {len(scan_ms):8}{statistics.median(scan_ms):10.1f}{p(scan_ms, 0.95):10.1f}")
        for kind in [*RANKS, "non-ascii", "absent"]:
            of_kind = [ms for k, ms, _ in timed["fts"] if k == kind]
            hits = [h for k, _, h in timed["fts"] if k == kind]
            if of_kind:
                print(f"  FTS {kind:10} p50 {statistics.median(of_kind):7.1f} ms  p95 "
                      f"{p(of_kind, 0.95):7.1f} ms  median hits {statistics.median(hits):.0f}")
        print(f"scan / FTS at p50: {statistics.median(scan_ms) / statistics.median(fts_ms):.0f}x; "
              f"aim: FTS p95 < 100 ms and >= 20x faster than the scan")
    finally:
        if args.keep:
            print(f"kept: {server}")
        else:
            testbed.remove_host(server)
            testbed.remove_network(network)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
