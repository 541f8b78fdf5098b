#!/usr/bin/env python3
"""Deploy benchmark: cold deploy, idempotent re-run, and the floor, on identical fresh hosts.

Each host is a fresh container from the test-bed base image (a bare Debian 12, like a new
VPS), reached over SSH. The floor is what no deploy can beat: one `apt-get update` plus one
`apt-get install` of the same packages the roles install. Prints the numbers and the ratio.

    .venv/bin/python bench/deploy.py [--runs N]
"""

from __future__ import annotations

import argparse
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


def fresh_host(tag: str, key: Path) -> testbed.Host:
    name = f"mailstack-bench-{tag}-{uuid.uuid4().hex[:6]}"
    return testbed.start_host(name, testbed.base_image(), hostname="mail.bench.test",
                              ssh_pubkey=key.with_suffix(".pub").read_text())


def floor(key: Path, packages: list[str]) -> float:
    host = fresh_host("floor", key)
    try:
        started = time.monotonic()
        testbed.exec_in(host.name, ["sh", "-ec",
                                    "echo 'postfix postfix/main_mailer_type select No configuration'"
                                    " | debconf-set-selections; apt-get update -q >/dev/null; "
                                    "DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                                    + " ".join(packages) + " >/dev/null"])
        return time.monotonic() - started
    finally:
        testbed.remove_host(host.name)


def deploy_times(key: Path, workdir: Path) -> tuple[float, float]:
    host = fresh_host("deploy", key)
    try:
        site = new_site(workdir / host.name, host.ip, key, "alice@bench.test")
        cold = mailstack(site, "deploy")
        rerun = mailstack(site, "deploy")
        return cold, rerun
    finally:
        testbed.remove_host(host.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="repetitions (median is printed)")
    args = parser.parse_args()
    testbed.ensure_engine()
    testbed.base_image()
    key = sandbox.ensure_keypair(sandbox.default_state_dir())
    packages = testbed.role_packages()
    floors, colds, reruns = [], [], []
    with tempfile.TemporaryDirectory(prefix="mailstack-bench-") as tmp:
        for i in range(args.runs):
            floors.append(floor(key, packages))
            cold, rerun = deploy_times(key, Path(tmp))
            colds.append(cold)
            reruns.append(rerun)
            print(f"run {i + 1}: floor {floors[-1]:.1f} s, cold deploy {cold:.1f} s, "
                  f"re-run {rerun:.1f} s", flush=True)
    f, c, r = (statistics.median(x) for x in (floors, colds, reruns))
    print(f"packages ({len(packages)}): {' '.join(packages)}")
    print(f"floor (apt-get update + install): {f:6.1f} s")
    print(f"cold deploy:                      {c:6.1f} s   ratio cold/floor = {c / f:.2f}"
          "   (aim <= 1.5)")
    print(f"idempotent re-run:                {r:6.1f} s   (aim < 20 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
