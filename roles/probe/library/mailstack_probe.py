#!/usr/bin/python3
# Managed by mailstack (roles/probe).
"""mailstack_probe: one round trip that reads what a role is about to compare.

Each mailstack role starts with one call of this module: it states what it would put in
place (files with their checksum, owner and mode; units enabled and started; users,
groups) and gets back, per item, whether the host already matches. The role's tasks then
run only for what does not match; on a host that is already deployed they are skipped on
the controller instead of each making a remote call (one SSH round trip each).

It never changes anything (check mode is the same run). Its answers are conservative:
`ok` is true only when the task it stands for would certainly report no change.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mailstack_probe
short_description: Read the state a mailstack role needs, in one round trip
description:
  - Compares files, systemd units, users and groups with what the calling role would put
    in place, lists the packages that are not installed, and runs read-only commands.
  - Never changes the host.
options:
  packages:
    description: Packages whose installation is checked (dpkg status C(ii)).
    type: list
    elements: str
    default: []
  files:
    description:
      - Paths to examine; each is C(ok) when every attribute given matches.
      - C(state) file, directory or absent; C(sha256) of a file's bytes; C(owner) and
        C(group) by name or number; C(mode) as an octal string.
      - C(line) with C(regexp) (lineinfile) - the last line matching C(regexp) is C(line).
      - C(recurse) - every entry below the directory (itself included) has this C(owner),
        C(group), C(dir_mode) and C(file_mode).
      - C(read) returns the text of a small file; C(label) groups entries whose C(ok) is
        also reported together in C(ok).
    type: list
    elements: dict
    default: []
  units:
    description: Systemd units; C(ok) when C(enabled) and C(started) hold as the systemd_service module sees them.
    type: list
    elements: dict
    default: []
  users:
    description: Users; C(ok) when they exist with the C(uid), primary C(group), C(home), C(shell) and C(comment) given.
    type: list
    elements: dict
    default: []
  groups:
    description: Groups; C(ok) when they exist with the C(gid) given.
    type: list
    elements: dict
    default: []
  commands:
    description: Read-only commands (name to argv, no shell); their rc, stdout and stderr are returned.
    type: dict
    default: {}
  full_run:
    description:
      - Answer "does not match" for every file, unit, user and group (the facts are still
        returned), so that every task of the role runs as if nothing were known. Tests use
        it to show that the probe never hides a change.
    type: bool
    default: false
author: mailstack
"""

EXAMPLES = r"""
- name: Probe the Dovecot files and unit
  mailstack_probe:
    files:
      - path: /etc/dovecot/dovecot.conf
        state: file
        sha256: "{{ rendered_root ~ '/etc/dovecot/dovecot.conf' | mailstack_sha256 }}"
        owner: root
        group: root
        mode: "0644"
    units:
      - name: dovecot
        enabled: true
        started: true
  register: probe

- name: Place dovecot.conf
  ansible.builtin.copy:
    src: "{{ rendered_root }}/etc/dovecot/dovecot.conf"
    dest: /etc/dovecot/dovecot.conf
  when: not probe.files['/etc/dovecot/dovecot.conf'].ok
"""

RETURN = r"""
packages_missing:
  description: The packages asked about that are not installed, in the order asked.
  type: list
  returned: always
files:
  description: Per path - ok, exists, type, owner, group, uid, gid, mode, mtime_ns, sha256 (files), content (read).
  type: dict
  returned: always
units:
  description:
    - Per unit - ok, enabled and started (as the systemd_service module judges them),
      load_state, active_state, enabled_state (is-enabled), need_daemon_reload.
  type: dict
  returned: always
users:
  description: Per user - ok, exists, uid, gid, home, shell, comment.
  type: dict
  returned: always
groups:
  description: Per group - ok, exists, gid.
  type: dict
  returned: always
commands:
  description: Per command - rc, stdout, stderr (rc 127 when the program is missing).
  type: dict
  returned: always
ok:
  description: Per label - whether every file entry with that label is ok.
  type: dict
  returned: always
"""

import grp
import hashlib
import os
import pwd
import re
import stat
import subprocess

from ansible.module_utils.basic import AnsibleModule

READ_LIMIT = 1024 * 1024
# `systemctl is-enabled` answers with exit 0 that the systemd_service module still treats
# as "not enabled" (it runs `systemctl enable` for them).
NOT_ENABLED = ("enabled-runtime", "indirect", "alias")
TYPES = {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFLNK: "link"}


def run(argv):
    env = dict(os.environ, LANG="C", LC_ALL="C")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False,
                              stdin=subprocess.DEVNULL)
    except OSError as exc:  # the program is not installed (yet)
        return {"rc": 127, "stdout": "", "stderr": str(exc)}
    return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


def user_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def group_name(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def same_id(expected, number, name):
    """An owner or group given by name or by number."""
    text = str(expected)
    return int(text) == number if text.isdigit() else text == name


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(path, st):
    return {
        "exists": True,
        "type": TYPES.get(stat.S_IFMT(st.st_mode), "other"),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "owner": user_name(st.st_uid),
        "group": group_name(st.st_gid),
        "mode": "%04o" % stat.S_IMODE(st.st_mode),
        "mtime_ns": st.st_mtime_ns,
    }


def attrs_match(info, owner=None, group=None, mode=None):
    return ((owner is None or same_id(owner, info["uid"], info["owner"]))
            and (group is None or same_id(group, info["gid"], info["group"]))
            and (mode is None or int(str(mode), 8) == int(info["mode"], 8)))


def last_match_is(text, regexp, line):
    """lineinfile's test: the last line matching regexp already is the line."""
    matches = [ln for ln in text.splitlines() if re.search(regexp, ln)]
    return bool(matches) and matches[-1] == line


def tree_matches(root, spec):
    """Every entry below root (root included, links excluded) has the owner, group and mode
    that a recursive `file` task would set."""
    for dirpath, dirnames, filenames in os.walk(root):
        for path in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
            st = os.lstat(path)
            info = describe(path, st)
            if info["type"] == "directory":
                mode = spec.get("dir_mode")
            elif info["type"] == "file":
                mode = spec.get("file_mode")
            else:
                return False
            if not attrs_match(info, spec.get("owner"), spec.get("group"), mode):
                return False
    return True


def probe_file(entry):
    path = entry["path"]
    want = entry.get("state")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {"exists": False, "ok": want == "absent"}
    info = describe(path, st)
    ok = want != "absent"
    if want in ("file", "directory"):
        ok = ok and info["type"] == want
    is_file = info["type"] == "file"
    if is_file and (entry.get("sha256") or entry.get("read") or entry.get("line")):
        info["sha256"] = sha256(path)
    if entry.get("sha256"):
        ok = ok and is_file and info["sha256"] == entry["sha256"]
    ok = ok and attrs_match(info, entry.get("owner"), entry.get("group"), entry.get("mode"))
    if is_file and (entry.get("read") or entry.get("line")):
        with open(path, "rb") as f:
            text = f.read(READ_LIMIT).decode("utf-8", errors="replace")
        if entry.get("read"):
            info["content"] = text
        if entry.get("line"):
            ok = ok and last_match_is(text, entry.get("regexp") or re.escape(entry["line"]),
                                      entry["line"])
    elif entry.get("line"):
        ok = False
    if entry.get("recurse"):
        ok = ok and info["type"] == "directory" and tree_matches(path, entry["recurse"])
    info["ok"] = bool(ok)
    return info


def probe_units(entries):
    found = {}
    for entry in entries:
        name = entry["name"]
        show = run(["systemctl", "show", "--property=LoadState,ActiveState,NeedDaemonReload",
                    name])
        props = dict(line.split("=", 1) for line in show["stdout"].splitlines() if "=" in line)
        enabled = run(["systemctl", "is-enabled", name, "-l"])
        info = {
            "load_state": props.get("LoadState", ""),
            "active_state": props.get("ActiveState", ""),
            "need_daemon_reload": props.get("NeedDaemonReload") == "yes",
            "enabled_state": (enabled["stdout"].splitlines() or [""])[0].strip(),
        }
        is_enabled = enabled["rc"] == 0 and enabled["stdout"].rstrip() not in NOT_ENABLED
        is_started = info["active_state"] in ("active", "activating")
        ok = info["load_state"] == "loaded"
        if entry.get("enabled") is not None:
            ok = ok and is_enabled == entry["enabled"]
        if entry.get("started") is not None:
            ok = ok and is_started == entry["started"]
        info.update(ok=ok, enabled=is_enabled, started=is_started)
        found[name] = info
    return found


def probe_user(entry):
    try:
        pw = pwd.getpwnam(entry["name"])
    except KeyError:
        return {"exists": False, "ok": False}
    info = {"exists": True, "uid": pw.pw_uid, "gid": pw.pw_gid, "home": pw.pw_dir,
            "shell": pw.pw_shell, "comment": pw.pw_gecos}
    ok = entry.get("uid") is None or int(entry["uid"]) == pw.pw_uid
    if entry.get("group") is not None:
        ok = ok and same_id(entry["group"], pw.pw_gid, group_name(pw.pw_gid))
    for key in ("home", "shell", "comment"):
        if entry.get(key) is not None:
            ok = ok and entry[key] == info[key]
    info["ok"] = ok
    return info


def probe_group(entry):
    try:
        gr = grp.getgrnam(entry["name"])
    except KeyError:
        return {"exists": False, "ok": False}
    ok = entry.get("gid") is None or int(entry["gid"]) == gr.gr_gid
    return {"exists": True, "gid": gr.gr_gid, "ok": ok}


def missing_packages(names):
    if not names:
        return []
    out = run(["dpkg-query", "--show", "--showformat=${Package}\t${db:Status-Abbrev}\n", *names])
    installed = set()
    for line in out["stdout"].splitlines():
        name, _, status = line.partition("\t")
        if status.startswith("ii"):
            installed.add(name.split(":")[0])
    return [n for n in names if n not in installed]


def main():
    module = AnsibleModule(
        argument_spec={
            "packages": {"type": "list", "elements": "str", "default": []},
            "files": {"type": "list", "elements": "dict", "default": []},
            "units": {"type": "list", "elements": "dict", "default": []},
            "users": {"type": "list", "elements": "dict", "default": []},
            "groups": {"type": "list", "elements": "dict", "default": []},
            "commands": {"type": "dict", "default": {}},
            "full_run": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    p = module.params
    for kind, key in (("files", "path"), ("units", "name"), ("users", "name"), ("groups", "name")):
        for entry in p[kind]:
            if not entry.get(key):
                module.fail_json(msg=f"every entry of {kind} needs a {key}: {entry!r}")
    files, ok = {}, {}
    for entry in p["files"]:
        info = probe_file(entry)
        # A path listed twice is ok only when both expectations hold.
        if entry["path"] in files:
            before = files[entry["path"]]
            info = {**before, **info, "ok": info["ok"] and before["ok"]}
        files[entry["path"]] = info
        if entry.get("label"):
            ok[entry["label"]] = ok.get(entry["label"], True) and info["ok"]
    result = {
        "files": files,
        "ok": ok,
        "units": probe_units(p["units"]),
        "users": {e["name"]: probe_user(e) for e in p["users"]},
        "groups": {e["name"]: probe_group(e) for e in p["groups"]},
    }
    if p["full_run"]:
        for kind in ("files", "units", "users", "groups"):
            for info in result[kind].values():
                info.update(ok=False, **({"enabled": False, "started": False}
                                         if kind == "units" else {}))
        result["ok"] = dict.fromkeys(ok, False)
    module.exit_json(
        changed=False,
        packages_missing=missing_packages(p["packages"]),
        commands={name: run([str(a) for a in argv]) for name, argv in p["commands"].items()},
        **result,
    )


if __name__ == "__main__":
    main()
