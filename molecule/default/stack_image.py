"""Molecule dependency step: make sure the test-bed stack image exists and tag it
``mailstack-stack:molecule``, the image molecule.yml names by default.

The stack image's real tag is a hash of its recipe (tests/testbed: stack_image_tag),
which molecule.yml cannot compute; building is skipped when the image is cached.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from testbed import SandboxError, stack_image

ALIAS = "mailstack-stack:molecule"


def main() -> int:
    if os.environ.get("MAILSTACK_MOLECULE_IMAGE"):
        return 0  # the caller chose the image
    try:
        tag = stack_image()
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    subprocess.run(["docker", "tag", tag, ALIAS], check=True)
    print(f"molecule image: {ALIAS} = {tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
