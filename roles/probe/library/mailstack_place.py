#!/usr/bin/python3
# Managed by mailstack (roles/probe).
"""mailstack_place: put several rendered files (and their directories) in place in one call.

A role places its files with one call of this module instead of one `copy` task per file
(each a module run, more on a loop). In the order given, each entry is a directory to
have, or a file with its bytes, owner, group and mode. A file whose bytes differ is written
to a temporary file next to it, given its owner and mode, checked by `validate` (the
daemon's own checker, `%s` standing for the candidate) and only then renamed over the old
one: a file the daemon refuses never goes live, and the entries after it are left alone
(reported in `refused`; the calling role fails the play on it).
A file whose bytes match but whose owner or mode do not is only fixed.

The content travels in the module's arguments (censored like any no_log value).
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mailstack_place
short_description: Place files and directories, each file validated before it goes live
options:
  entries:
    description:
      - In order. C(dest) the absolute path; C(state) file (default) or directory;
        C(owner) and C(group) by name; C(mode) as an octal string.
      - A file also has C(content) (base64) and may have C(validate), a command in which
        C(%s) stands for the candidate file (run without a shell).
    type: list
    elements: dict
    required: true
  check_together:
    description:
      - A command that checks the new files as a set, once, before any of them goes live;
        its C(%s) argument becomes one C(LIVE=CANDIDATE) argument per new file. If it
        refuses, nothing is replaced.
    type: str
author: mailstack
"""

EXAMPLES = r"""
- name: Place main.cf and master.cf
  mailstack_place:
    entries:
      - dest: /etc/postfix/main.cf
        content: "{{ lookup('file', 'main.cf') | b64encode }}"
        owner: root
        group: root
        mode: "0644"
        validate: postconf -c %s -n
"""

RETURN = r"""
changed_paths:
  description: The entries that were created, replaced or fixed, in order.
  type: list
  elements: str
  returned: always
refused:
  description:
    - Empty, or why the placing stopped (a file its checker refused, a missing directory);
      the entries after that one were left alone. The task does not fail on it (the
      changes before it must still notify their handler): the caller fails on it.
  type: str
  returned: always
"""

import base64
import grp
import os
import pwd
import shlex
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule


class PlaceError(Exception):
    pass


def ids(entry):
    try:
        uid = pwd.getpwnam(entry["owner"]).pw_uid
    except KeyError:
        raise PlaceError(f"{entry['dest']}: no user {entry['owner']!r} on this host") from None
    try:
        gid = grp.getgrnam(entry["group"]).gr_gid
    except KeyError:
        raise PlaceError(f"{entry['dest']}: no group {entry['group']!r} on this host") from None
    return uid, gid


def check_entry(entry):
    dest = entry.get("dest")
    if not isinstance(dest, str) or not os.path.isabs(dest) or os.path.normpath(dest) != dest:
        raise PlaceError(f"dest must be a normalised absolute path: {dest!r}")
    state = entry.get("state", "file")
    if state not in ("file", "directory"):
        raise PlaceError(f"{dest}: state must be file or directory, not {state!r}")
    for key in ("owner", "group", "mode"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise PlaceError(f"{dest}: {key} is required")
    try:
        entry["_mode"] = int(entry["mode"], 8)
    except ValueError:
        raise PlaceError(f"{dest}: mode must be octal, not {entry['mode']!r}") from None
    if entry["_mode"] & ~0o7777:
        raise PlaceError(f"{dest}: mode out of range: {entry['mode']!r}")
    if state == "file":
        if not isinstance(entry.get("content"), str):
            raise PlaceError(f"{dest}: a file needs its content")
        try:
            entry["_bytes"] = base64.b64decode(entry["content"], validate=True)
        except ValueError:
            raise PlaceError(f"{dest}: content is not base64") from None
        validate = entry.get("validate")
        if validate is not None and "%s" not in str(validate):
            raise PlaceError(f"{dest}: validate must contain %s (the candidate file)")


def attrs_match(st, uid, gid, mode):
    return st.st_uid == uid and st.st_gid == gid and stat.S_IMODE(st.st_mode) == mode


def lstat_or_none(path):
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def place_directory(entry, check_mode):
    dest, mode = entry["dest"], entry["_mode"]
    uid, gid = ids(entry)
    st = lstat_or_none(dest)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise PlaceError(f"{dest} exists and is not a directory")
    if st is not None and attrs_match(st, uid, gid, mode):
        return False
    if check_mode:
        return True
    if st is None:
        os.mkdir(dest, 0o700)
        st = os.lstat(dest)
    # Only when it differs: the encrypted store's root refuses any chown (its FUSE daemon is
    # not root), even to the owner it already presents.
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(dest, uid, gid)
    os.chmod(dest, mode)
    return True


def same_bytes(path, data):
    with open(path, "rb") as f:
        return f.read(len(data) + 1) == data


def stage_file(entry, check_mode, run_command):
    """Bring one file entry as far as going live: False when it is in place, True when only
    its owner or mode was fixed (or check mode), else the path of its validated candidate,
    written next to the live file, which the caller renames into place or removes."""
    dest, mode, data = entry["dest"], entry["_mode"], entry["_bytes"]
    uid, gid = ids(entry)
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise PlaceError(f"{dest}: its directory {parent} does not exist")
    st = lstat_or_none(dest)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise PlaceError(f"{dest} exists and is not a regular file")
    if st is not None and same_bytes(dest, data):
        if attrs_match(st, uid, gid, mode):
            return False
        if not check_mode:
            os.chown(dest, uid, gid)
            os.chmod(dest, mode)
        return True
    if check_mode:
        return True
    fd, tmp = tempfile.mkstemp(prefix=".mailstack-", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchown(f.fileno(), uid, gid)
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        validate = entry.get("validate")
        if validate:
            argv = [tmp if arg == "%s" else arg.replace("%s", tmp) for arg in shlex.split(validate)]
            rc, out, err = run_command(argv)
            if rc != 0:
                raise PlaceError(f"{dest}: the new file was refused by `{validate}` (exit {rc}), "
                                 f"nothing replaced: {(err or out).strip()}")
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def place_file(entry, check_mode, run_command):
    staged = stage_file(entry, check_mode, run_command)
    if isinstance(staged, str):
        os.rename(staged, entry["dest"])
        return True
    return staged


def check_entries(entries):
    for entry in entries:
        check_entry(entry)


def place(entries, check_mode, run_command, changed, together=None):
    """Place the (checked) entries in order, adding each path changed to changed.

    With together (a command whose `%s` argument stands for LIVE=CANDIDATE pairs), the new
    files are all staged first and checked by that one command as a set, then go live in
    order; if it refuses them, none does (for daemons that check a whole configuration
    slowly, once instead of once per file)."""
    if not together:
        for entry in entries:
            if entry.get("state", "file") == "directory":
                done = place_directory(entry, check_mode)
            else:
                done = place_file(entry, check_mode, run_command)
            if done:
                changed.append(entry["dest"])
        return
    staged = []
    try:
        for entry in entries:
            if entry.get("state", "file") == "directory":
                if place_directory(entry, check_mode):
                    changed.append(entry["dest"])
                continue
            done = stage_file(entry, check_mode, run_command)
            if isinstance(done, str):
                staged.append((entry["dest"], done))
            elif done:
                changed.append(entry["dest"])
        if staged:
            pairs = [f"{dest}={tmp}" for dest, tmp in staged]
            argv = []
            for arg in shlex.split(together):
                argv += pairs if arg == "%s" else [arg]
            rc, out, err = run_command(argv)
            if rc != 0:
                raise PlaceError(f"{', '.join(d for d, _ in staged)}: the new files were refused by "
                                 f"`{together}` (exit {rc}), nothing replaced: {(err or out).strip()}")
        while staged:
            dest, tmp = staged[0]
            os.rename(tmp, dest)
            staged.pop(0)
            changed.append(dest)
    finally:
        for _, tmp in staged:
            os.unlink(tmp)


def main():
    module = AnsibleModule(
        argument_spec={"entries": {"type": "list", "elements": "dict", "required": True},
                       "check_together": {"type": "str"}},
        supports_check_mode=True,
    )
    entries = module.params["entries"]
    # The contents are secrets (keys, passwords in lookup tables): never echoed back.
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("content"), str):
            module.no_log_values.add(entry["content"])
    try:
        check_entries(entries)
    except PlaceError as exc:
        module.fail_json(msg=str(exc))
    # A refusal does not fail this task: what was placed before it is reported as a change,
    # so that its handler runs (Ansible notifies only for tasks that succeed). The role
    # fails the play on `refused` in the next task.
    changed, refused = [], ""
    try:
        together = module.params["check_together"]
        if together is not None and "%s" not in shlex.split(together):
            raise PlaceError("check_together must have a %s argument (the LIVE=CANDIDATE pairs)")
        place(entries, module.check_mode, module.run_command, changed, together)
    except (PlaceError, OSError) as exc:
        refused = str(exc)
    module.exit_json(changed=bool(changed), changed_paths=changed, refused=refused)


if __name__ == "__main__":
    main()
