#!/usr/bin/env python3
"""Deploy benchmark: cold deploy and idempotent re-run against the floor, on fresh hosts.

Every host is a fresh container from the test-bed base image (a bare Debian 12, like a new
VPS), reached over SSH. In one run:

1. deploy host: `mailstack deploy` (cold), then `mailstack deploy` again (the re-run, which
   must change nothing). The packages the cold deploy added are the difference of
   `dpkg-query -W` on the host before and after it.
2. floor host, from the same base image: `apt-get update` plus one
   `apt-get install --no-install-recommends` of exactly those packages, with the same
   Postfix debconf answer. No deploy can beat that.

Prints floor, cold, re-run, the ratio cold/floor and the package count.

    .venv/bin/python bench/deploy.py [--runs N]
"""

from __future__ import annotations

import argparse
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import testbed  # noqa: E402
from benchlib import new_site  # noqa: E402

from mailstack.sandbox import host as sandbox  # noqa: E402

# The answer the postfix role preseeds (postfix__debconf_selections).
POSTFIX_PRESEED = "postfix postfix/main_mailer_type select No configuration\n"
COLD_AIM = 1.3
RERUN_AIM = 12.0


@dataclass
class Run:
    floor: float
    cold: float
    rerun: float
    rerun_changed: int
    packages: list[str]


def fresh_host(tag: str, key: Path) -> testbed.Host:
    name = f"mailstack-bench-{tag}-{uuid.uuid4().hex[:6]}"
    return testbed.start_host(name, testbed.base_image(), hostname="mail.bench.test",
                              ssh_pubkey=key.with_suffix(".pub").read_text())


def installed(host: str) -> set[str]:
    out = testbed.exec_in(host, ["dpkg-query", "-W", "-f=${Package}\n"]).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def deploy(site: Path) -> tuple[float, int]:
    """`mailstack deploy` as a user runs it: its duration and the changes it reported."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mailstack", "--site", str(site), "deploy"],
                          capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"mailstack deploy failed:\n{proc.stdout}\n{proc.stderr}")
    changed = sum(int(n) for n in re.findall(r"\bchanged=(\d+)", proc.stdout))
    return elapsed, changed


def deploy_times(key: Path, workdir: Path) -> tuple[float, float, int, list[str]]:
    host = fresh_host("deploy", key)
    try:
        site = new_site(workdir / host.name, host.ip, key, "alice@bench.test")
        before = installed(host.name)
        cold, _ = deploy(site)
        added = sorted(installed(host.name) - before)
        rerun, changed = deploy(site)
        return cold, rerun, changed, added
    finally:
        testbed.remove_host(host.name)


def floor(key: Path, packages: list[str]) -> float:
    host = fresh_host("floor", key)
    try:
        testbed.exec_in(host.name, ["debconf-set-selections"], input=POSTFIX_PRESEED)
        script = ("export DEBIAN_FRONTEND=noninteractive; apt-get update -q >/dev/null; "
                  "apt-get install -y -q --no-install-recommends "
                  + " ".join(shlex.quote(p) for p in packages) + " >/dev/null")
        started = time.monotonic()
        testbed.exec_in(host.name, ["sh", "-ec", script])
        return time.monotonic() - started
    finally:
        testbed.remove_host(host.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="repetitions (medians are printed)")
    args = parser.parse_args()
    testbed.ensure_engine()
    testbed.base_image()
    key = sandbox.ensure_keypair(sandbox.default_state_dir())
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="mailstack-bench-") as tmp:
        for i in range(args.runs):
            cold, rerun, changed, added = deploy_times(key, Path(tmp))
            runs.append(Run(floor(key, added), cold, rerun, changed, added))
            r = runs[-1]
            print(f"run {i + 1}: floor {r.floor:.1f} s, cold deploy {r.cold:.1f} s, "
                  f"re-run {r.rerun:.1f} s (changed={r.rerun_changed}), "
                  f"{len(r.packages)} packages", flush=True)
    f, c, r = (statistics.median(getattr(x, k) for x in runs) for k in ("floor", "cold", "rerun"))
    packages = runs[-1].packages
    print(f"packages the deploy added ({len(packages)}): {' '.join(packages)}")
    print(f"floor (apt-get update + install of those): {f:6.1f} s")
    print(f"cold deploy:                               {c:6.1f} s   ratio cold/floor = "
          f"{c / f:.2f}   (aim <= {COLD_AIM})")
    print(f"idempotent re-run:                         {r:6.1f} s   (aim <= {RERUN_AIM:.0f} s)"
          f"   changed={max(x.rerun_changed for x in runs)}")
    return 0 if all(x.rerun_changed == 0 for x in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
