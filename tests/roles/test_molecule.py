"""The roles against a real systemd Debian container: `molecule test -s default`.

molecule creates the container from the test-bed stack image, renders a site with the
real CLI, converges site.yml, converges again (changed=0 required), verifies with
testinfra (services, ports, grants, firewall, a DKIM-signed mail round trip) and
destroys the container. Slow (about a minute or two), so marked `testbed`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from testbed import stack_image

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 15 * 60


@pytest.mark.testbed
def test_molecule_default_scenario() -> None:
    molecule = shutil.which("molecule") or str(Path(sys.executable).with_name("molecule"))
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    # The exact image, built once per machine and cached (tests/testbed).
    env["MAILSTACK_MOLECULE_IMAGE"] = stack_image()
    env.setdefault("ANSIBLE_FORCE_COLOR", "0")
    env.setdefault("PY_COLORS", "0")
    try:
        proc = subprocess.run(
            [molecule, "test", "-s", "default", "--destroy", "always"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    finally:
        # `--destroy always` already removes the container, even after a failure; this
        # covers a timeout or an interrupted molecule.
        subprocess.run([molecule, "destroy", "-s", "default"], cwd=REPO, env=env,
                       capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-12000:]
