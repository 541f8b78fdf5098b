#!/usr/bin/env python3
"""Idle memory of the deployed stack, per systemd unit, against the 1 GB VPS aim (640 MiB).

One run: a fresh host from the test-bed stack image (packages preinstalled; `--image base`
for the bare Debian 12, where the deploy installs them), `mailstack deploy` of the default
site, `mailstack unlock` (a no-op when the deploy left the store mounted), a few messages
in over port 25 and over submission (587, STARTTLS + AUTH, DKIM-signed), all read back whole
over IMAPS, so every daemon has done real work. The host has NET_ADMIN, as a KVM VPS has
(without it the deploy leaves fail2ban off). Then the settle period, then one look inside
the host (`docker exec`):

- PSS: for every process, Pss from /proc/PID/smaps_rollup (shared pages divided among their
  users), summed per unit; the unit is read from /proc/PID/cgroup (the first cgroup below
  the host's root that is not a slice: system.slice/*, init.scope, ...). Nothing is listed
  by hand, so a new daemon shows up on its own.
- memory.current (cgroup v2; memory.usage_in_bytes on v1) of the unit's cgroup, with the
  file cache it includes (memory.stat `file`; v1 `total_cache`): page cache the unit read
  or wrote, which the kernel drops under pressure. current - cache is comparable with PSS.

`free` and MemTotal mean nothing inside a container (they describe the machine), so the
total is the sum of PSS of every process on the host. A benchmark prints numbers: it fails
only when it cannot measure, not when the total is over the aim.

With `--groupware` the site has options.groupware on (SOGo, its database server, memcached)
and the user also logs in to the webmail and lists the INBOX there before the settle period.
`--workers N` (with it) then measures the same host again with N sogod workers (PREFORK in
/etc/default/sogo, SOGo restarted, the webmail used again, the same settle period) and
prints what each worker more costs: how many devices that wait in ActiveSync's Ping (one
worker each) the memory allows.

    .venv/bin/python bench/memory.py [--settle S] [--image stack|base] [--runs N]
                                     [--groupware [--workers N]] [--json]
"""

from __future__ import annotations

import argparse
import json
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from email.utils import formatdate, make_msgid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import testbed  # noqa: E402
from benchlib import PASSWORD, mailstack, new_site  # noqa: E402
from e2e.helpers import edit_config, imap_subjects, send, tls_context  # noqa: E402
from e2e.sogo import Web, subjects_of  # noqa: E402

from mailstack.deploy.ssh import control_path_dir  # noqa: E402
from mailstack.sandbox import host as sandbox  # noqa: E402

DOMAIN = "bench.test"
USER = f"bench@{DOMAIN}"
AIM_MIB = 640
MESSAGES = 5  # per way in: port 25 and submission
MiB = 1024 * 1024

# Runs inside the host with its python3; prints JSON. Processes are grouped by the first
# cgroup below the host's root (the parent of init.scope) that is not a slice.
PROBE = r"""
import json, os
def lines(path):
    with open(path) as f:
        return f.read().splitlines()
def cgroup(pid):  # v1: the memory controller's line; v2: the one line, "0::PATH"
    for line in lines(f"/proc/{pid}/cgroup"):
        _, controllers, path = line.split(":", 2)
        if CONTROLLER in controllers.split(","):
            return path
def memory(path):
    d = BASE + path
    current = int(lines(f"{d}/{CURRENT}")[0])
    stat = dict(line.split() for line in lines(f"{d}/memory.stat"))
    return current, int(stat[CACHE])
V1 = os.path.isdir("/sys/fs/cgroup/memory")
CONTROLLER, BASE, CURRENT, CACHE = (
    ("memory", "/sys/fs/cgroup/memory", "memory.usage_in_bytes", "total_cache") if V1
    else ("", "/sys/fs/cgroup", "memory.current", "file"))
root = cgroup(1).rsplit("/", 1)[0]
units = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) == os.getpid():
        continue
    try:
        path = cgroup(pid)
        rollup = dict(l.split()[:2] for l in lines(f"/proc/{pid}/smaps_rollup")[1:])
        pss, pss_file = (int(rollup[k]) * 1024 for k in ("Pss:", "Pss_File:"))
        comm = lines(f"/proc/{pid}/comm")[0]
    except (OSError, KeyError):
        continue  # gone meanwhile, or a zombie (no memory left)
    parts = path[len(root):].strip("/").split("/") if path.startswith(root + "/") else []
    depth = next((i + 1 for i, p in enumerate(parts) if not p.endswith(".slice")), 0)
    name = parts[depth - 1] if depth else "(container root: docker exec)"
    unit = units.setdefault(name, {"cgroup": "/".join([root, *parts[:depth]]), "pss": 0,
                                   "pss_file": 0, "processes": []})
    unit["pss"] += pss
    unit["pss_file"] += pss_file
    unit["processes"].append([comm, pss])
for unit in units.values():
    unit["current"], unit["cache"] = memory(unit["cgroup"])
current, cache = memory(root)
print(json.dumps({"cgroup": "v1" if V1 else "v2", "units": units,
                  "host": {"current": current, "cache": cache}}))
"""


def deploy(site: Path) -> None:
    print(f"deployed in {mailstack(site, 'deploy'):.0f} s", flush=True)
    mailstack(site, "unlock")  # a no-op when the deploy left the store mounted
    # The deploy's shared SSH connection stays open for ControlPersist (60 s), as sshd
    # processes in ssh.service: close it, so that they are not measured.
    for socket in control_path_dir(site).iterdir():
        subprocess.run(["ssh", "-S", str(socket), "-O", "exit", "host"], capture_output=True,
                       check=False)


def traffic(ip: str, tag: str) -> None:
    """Mail in from outside (port 25) and from the user (587), then all of it read back."""
    inbound = [f"inbound {tag} {i}" for i in range(MESSAGES)]
    submitted = [f"submitted {tag} {i}" for i in range(MESSAGES)]
    testbed.wait_for_port(ip, 587, 60)
    send(ip, USER, inbound)
    with smtplib.SMTP(ip, 587, timeout=20, local_hostname="client.test") as smtp:
        smtp.starttls(context=tls_context())
        smtp.login(USER, PASSWORD)
        for subject in submitted:  # well-formed, so that no filter holds it back
            smtp.sendmail(USER, [USER], f"From: {USER}\r\nTo: {USER}\r\nSubject: {subject}\r\n"
                                        f"Date: {formatdate()}\r\nMessage-ID: {make_msgid()}\r\n"
                                        f"\r\nbody of {subject}\r\n")
    deadline = time.monotonic() + 60
    while missing := set(inbound + submitted) - set(imap_subjects(ip, USER)):
        if time.monotonic() > deadline:
            raise SystemExit(f"never arrived in the INBOX: {sorted(missing)}")
        time.sleep(0.5)


def webmail(ip: str, tag: str) -> None:
    """The user logs in to the webmail (SOGo) and lists the INBOX there."""
    web = Web(ip, f"mail.{DOMAIN}")
    deadline = time.monotonic() + 60
    while (login := web.login(USER, PASSWORD)).status != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"webmail login failed: {login.status} {login.body[:200]!r}")
        time.sleep(1)
    listing = web.inbox(USER)
    if listing.status != 200 or f"inbound {tag} 0" not in subjects_of(listing.json()):
        raise SystemExit(f"webmail INBOX listing failed: {listing.status} {listing.body[:200]!r}")


def measure(host: str) -> dict:
    proc = testbed.exec_in(host, ["python3", "-"], input=PROBE, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"measuring inside {host} failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


SOGO_DEFAULTS = "/etc/default/sogo"


def sogo_workers(host: str) -> int:
    text = testbed.exec_in(host, ["cat", SOGO_DEFAULTS]).stdout
    return int(next(line for line in text.splitlines() if line.startswith("PREFORK="))[8:])


def with_workers(name: str, ip: str, workers: int, settle: float) -> dict:
    """The same host measured again with `workers` sogod workers."""
    testbed.exec_in(name, ["sed", "-i", f"s/^PREFORK=.*/PREFORK={workers}/", SOGO_DEFAULTS])
    testbed.exec_in(name, ["systemctl", "restart", "sogo"])
    webmail(ip, name)
    print(f"sogod restarted with {workers} workers; settling {settle:.0f} s", flush=True)
    time.sleep(settle)
    return measure(name)


def one_run(image: str, settle: float, key: Path, workdir: Path, groupware: bool,
            workers: int | None = None) -> dict:
    started = time.monotonic()
    name = f"mailstack-bench-memory-{uuid.uuid4().hex[:6]}"
    try:
        # NET_ADMIN, as a KVM VPS has: without it the deploy leaves fail2ban off.
        host = testbed.start_host(name, image, hostname=f"mail.{DOMAIN}", cap_add=("NET_ADMIN",),
                                  ssh_pubkey=key.with_suffix(".pub").read_text())
        site = new_site(workdir / name, host.ip, key, USER)
        if groupware:
            edit_config(site, ("  groupware: false\n", "  groupware: true\n"))
        deploy(site)
        traffic(host.ip, name)
        if groupware:
            webmail(host.ip, name)
        print(f"{2 * MESSAGES} messages delivered and read; settling {settle:.0f} s", flush=True)
        time.sleep(settle)
        result = measure(name)
        if workers is not None:
            result["workers"] = sogo_workers(name)
            result["more_workers"] = {"workers": workers,
                                      **with_workers(name, host.ip, workers, settle)}
        # Containers from one image share the pages of its files (binaries, libraries):
        # with neighbours, file-backed PSS is split with them and reads lower than on a VPS.
        ps = testbed.docker("ps", "-q", "--filter", f"ancestor={image}").stdout.split()
        result["neighbours"] = len(ps) - 1
    finally:
        testbed.remove_host(name)
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def commands(processes: list[list]) -> str:
    """The unit's process names, each once: "smtpd(2)" for two of them."""
    processes = [comm for comm, _ in processes]
    names = sorted(set(processes), key=processes.index)
    return " ".join(f"{n}({processes.count(n)})" if processes.count(n) > 1 else n for n in names)


def report(result: dict) -> float:
    """Print the table of one run; return its total PSS in MiB."""
    units = sorted(result["units"].items(), key=lambda kv: -kv[1]["pss"])
    current = "memory.current" if result["cgroup"] == "v2" else "usage_in_bytes"
    print(f"\n{'unit':30}{'procs':>6}{'PSS MiB':>9}{current:>16}{'of it cache':>13}  processes")
    for name, u in units:
        print(f"{name:30}{len(u['processes']):6}{u['pss'] / MiB:9.1f}{u['current'] / MiB:16.1f}"
              f"{u['cache'] / MiB:13.1f}  {commands(u['processes'])[:60]}")
    pss, pss_file, cur, cache = (sum(u[k] for _, u in units) / MiB
                                 for k in ("pss", "pss_file", "current", "cache"))
    host = result["host"]
    print(f"{'total':30}{sum(len(u['processes']) for _, u in units):6}{pss:9.1f}{cur:16.1f}"
          f"{cache:13.1f}")
    print(f"PSS: {pss - pss_file:.1f} MiB anonymous/shmem + {pss_file:.1f} MiB file-backed "
          f"(binaries, libraries; shared with {result['neighbours']} other running "
          "container(s) of this image or one built on it)")
    print(f"cgroup {result['cgroup']}: the units' {current} minus cache {cur - cache:.1f} MiB; "
          f"the host's whole cgroup {host['current'] / MiB:.1f} MiB, of it cache "
          f"{host['cache'] / MiB:.1f} MiB (page cache: dropped under memory pressure)")
    print(f"total PSS {pss:.1f} MiB, aim {AIM_MIB} MiB, ratio {pss / AIM_MIB:.2f}   "
          f"(run took {result['seconds']:.0f} s)")
    return pss


def report_workers(result: dict) -> None:
    """sogo.service's PSS with the deployed workers and with more, side by side."""
    more = result["more_workers"]
    before = result["units"]["sogo.service"]
    after = more["units"]["sogo.service"]
    added = more["workers"] - result["workers"]
    each = (after["pss"] - before["pss"]) / MiB / added
    total_after = sum(u["pss"] for u in more["units"].values()) / MiB
    print(f"\nsogo.service: {result['workers']} workers {before['pss'] / MiB:.1f} MiB "
          f"({len(before['processes'])} processes), {more['workers']} workers "
          f"{after['pss'] / MiB:.1f} MiB ({len(after['processes'])} processes): "
          f"{each:.1f} MiB per worker more; total PSS then {total_after:.1f} MiB "
          f"= {total_after / AIM_MIB:.2f} of the {AIM_MIB} MiB aim")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=60, help="idle seconds before measuring")
    parser.add_argument("--image", choices=("stack", "base"), default="stack",
                        help="stack: packages preinstalled (quick); base: bare Debian 12")
    parser.add_argument("--runs", type=int, default=1, help="fresh hosts, one after another")
    parser.add_argument("--groupware", action="store_true",
                        help="options.groupware on (SOGo), used once through the webmail")
    parser.add_argument("--workers", type=int, default=None,
                        help="with --groupware: measure again with this many sogod workers")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()
    if args.workers is not None and (not args.groupware or args.workers < 1):
        parser.error("--workers N needs --groupware and N >= 1")
    testbed.ensure_engine()
    image = testbed.stack_image() if args.image == "stack" else testbed.base_image()
    key = sandbox.ensure_keypair(sandbox.default_state_dir())
    results, totals = [], []
    with tempfile.TemporaryDirectory(prefix="mailstack-bench-") as tmp:
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs} on {image}", flush=True)
            try:
                results.append(one_run(image, args.settle, key, Path(tmp), args.groupware,
                                       args.workers))
            except (testbed.SandboxError, OSError, smtplib.SMTPException) as exc:
                raise SystemExit(f"run {i + 1} failed: {exc}") from exc
            totals.append(report(results[-1]))
            if args.workers is not None:
                report_workers(results[-1])
    if args.runs > 1:
        print(f"\ntotal PSS per run: {', '.join(f'{t:.1f}' for t in totals)} MiB; median "
              f"{statistics.median(totals):.1f} MiB = {statistics.median(totals) / AIM_MIB:.2f} "
              f"of the {AIM_MIB} MiB aim")
    if args.json:
        print(json.dumps({"image": image, "settle": args.settle, "aim_mib": AIM_MIB,
                          "groupware": args.groupware,
                          "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
