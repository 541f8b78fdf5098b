#!/usr/bin/python3
# Managed by mailstack (roles/common).
"""mailstack_stage: put a host's rendered tree into a private directory in one round trip.

On a fresh host nearly every rendered file is to be placed. `copy` from the controller
costs each file a stat, a temporary directory, a transfer, the copy itself and a cleanup
(five SSH round trips); copying from a directory on the host (`remote_src`) costs one.
This module receives the whole tree at once (the files are module arguments, censored like
any no_log value) and writes it into `dest`, a directory only root can enter, which it
empties first. The roles then place each file from there with `copy` and its `validate`,
exactly as from the controller.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mailstack_stage
short_description: Write a rendered tree into a root-only staging directory in one round trip
options:
  dest:
    description: The staging directory; emptied, then created with mode 0700.
    type: path
    required: true
  files:
    description: Relative path to base64-encoded content.
    type: dict
    required: true
author: mailstack
"""

EXAMPLES = r"""
- name: Send the rendered tree in one transfer
  mailstack_stage:
    dest: /run/mailstack/rendered
    files: "{{ rendered_root | mailstack_tree_content }}"
  no_log: true
"""

RETURN = r"""
dest:
  description: The staging directory.
  type: str
  returned: always
count:
  description: How many files were written.
  type: int
  returned: always
"""

import base64
import os
import shutil

from ansible.module_utils.basic import AnsibleModule


def safe_path(dest, rel):
    """dest/rel, refusing anything that would land outside dest."""
    norm = os.path.normpath(rel)
    if os.path.isabs(norm) or norm == ".." or norm.startswith("../") or norm == ".":
        raise ValueError(f"not a relative path inside the tree: {rel!r}")
    return os.path.join(dest, norm)


def stage(dest, files):
    if os.path.lexists(dest):
        shutil.rmtree(dest)
    os.makedirs(dest, mode=0o700)
    os.chmod(dest, 0o700)
    for rel, content in sorted(files.items()):
        path = safe_path(dest, rel)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(content))
    return len(files)


def main():
    module = AnsibleModule(
        argument_spec={
            "dest": {"type": "path", "required": True},
            "files": {"type": "dict", "required": True, "no_log": True},
        },
        supports_check_mode=True,
    )
    dest, files = module.params["dest"], module.params["files"]
    try:
        for rel in files:
            safe_path(dest, rel)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    if module.check_mode:
        module.exit_json(changed=True, dest=dest, count=len(files))
    module.exit_json(changed=True, dest=dest, count=stage(dest, files))


if __name__ == "__main__":
    main()
