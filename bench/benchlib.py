"""What the benchmarks share: running the real CLI, and a site for a fresh host."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import testbed  # bench scripts put tests/ on sys.path first

PASSWORD = "correct horse battery staple"


def mailstack(site: Path | None, *args: str, input: str | None = None) -> float:
    """Run `mailstack [--site SITE] ARGS` as a user would; its duration, or exit on failure."""
    started = time.monotonic()
    cmd = [sys.executable, "-m", "mailstack", *(["--site", str(site)] if site else []), *args]
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"mailstack {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return time.monotonic() - started


def new_site(site: Path, host_ip: str, key: Path, user: str) -> Path:
    """`mailstack init` a site for a fresh host of the user's domain, with that one user."""
    domain = user.partition("@")[2]
    mailstack(None, "init", str(site), "--domain", domain, "--hostname", f"mail.{domain}",
              "--host", host_ip, "--ssh-key", str(key))
    testbed.offline_site(site)
    mailstack(site, "user", "add", user, "--password-stdin", input=PASSWORD + "\n")
    return site
