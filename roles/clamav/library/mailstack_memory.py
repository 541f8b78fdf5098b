#!/usr/bin/python3
# Managed by mailstack (roles/clamav).
"""mailstack_memory: how much memory this host can give a daemon that is about to start.

Read-only. The smaller of the kernel's MemAvailable and what the cgroups the host lives in
still allow: inside a container /proc/meminfo shows the whole machine's memory, while the
container's limit is what counts. Processes of the daemon itself that already run (a
re-deploy) count as available: their memory is the daemon's already.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: mailstack_memory
short_description: The memory a new daemon could use on this host (read-only)
description:
  - The smaller of MemAvailable (/proc/meminfo) and, for every cgroup above PID 1 (v1 or
    v2), its limit minus what it uses (page cache that can be dropped excluded), plus the
    resident memory of the named processes already running.
options:
  processes:
    description: Process names (/proc/PID/comm) whose resident memory counts as available.
    type: list
    elements: str
    default: []
  root:
    description: Where /proc and /sys are (tests point it at a fake tree).
    type: path
    default: /
author: mailstack
"""

RETURN = r"""
available:
  description: Bytes available (the smallest of the sources, plus the processes' memory).
  type: int
meminfo_available:
  description: MemAvailable in bytes.
  type: int
cgroup_available:
  description: Bytes the tightest cgroup limit still allows; null without a limit.
  type: int
cgroup_limit:
  description: That cgroup's limit in bytes; null without one.
  type: int
processes_rss:
  description: Resident bytes of the named processes.
  type: int
"""

import os

NO_LIMIT = 2**60  # cgroup v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX pages)


def _read(path):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _kv(text, scale=1):
    values = {}
    for line in (text or "").splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) >= 2 and parts[1].isdigit():
            values[parts[0]] = int(parts[1]) * scale
    return values


def meminfo_available(root):
    return _kv(_read(os.path.join(root, "proc/meminfo")), 1024).get("MemAvailable", 0)


def _cgroup_path(root):
    """PID 1's memory cgroup: (version, path below the hierarchy's mount)."""
    v2 = None
    for line in (_read(os.path.join(root, "proc/1/cgroup")) or "").splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if "memory" in controllers.split(","):
            return 1, path
        if hier == "0" and controllers == "":
            v2 = path
    return (2, v2) if v2 is not None else (None, None)


def _level(directory, version):
    """(limit, usage without reclaimable page cache) of one cgroup, or None."""
    if version == 1:
        limit, usage = _read(f"{directory}/memory.limit_in_bytes"), _read(f"{directory}/memory.usage_in_bytes")
        inactive = _kv(_read(f"{directory}/memory.stat")).get("total_inactive_file", 0)
    else:
        limit, usage = _read(f"{directory}/memory.max"), _read(f"{directory}/memory.current")
        inactive = _kv(_read(f"{directory}/memory.stat")).get("inactive_file", 0)
    if limit is None or usage is None or not limit.strip().isdigit():
        return None  # no such file, or "max"
    limit_bytes = int(limit)
    if limit_bytes >= NO_LIMIT:
        return None
    return limit_bytes, max(int(usage) - inactive, 0)


def cgroup_available(root):
    """(available, limit) of the tightest cgroup from PID 1's up to the root, or (None, None)."""
    version, path = _cgroup_path(root)
    if version is None:
        return None, None
    mount = os.path.join(root, "sys/fs/cgroup", "memory" if version == 1 else "")
    best = (None, None)
    parts = [p for p in path.split("/") if p]
    for depth in range(len(parts), -1, -1):
        level = _level(os.path.join(mount, *parts[:depth]), version)
        if level is None:
            continue
        limit, used = level
        free = max(limit - used, 0)
        if best[0] is None or free < best[0]:
            best = (free, limit)
    return best


def processes_rss(root, names):
    total = 0
    proc = os.path.join(root, "proc")
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        comm = (_read(os.path.join(proc, pid, "comm")) or "").strip()
        if comm in names:
            total += _kv(_read(os.path.join(proc, pid, "status")), 1024).get("VmRSS", 0)
    return total


def measure(root="/", processes=()):
    meminfo = meminfo_available(root)
    cgroup, limit = cgroup_available(root)
    rss = processes_rss(root, set(processes)) if processes else 0
    base = meminfo if cgroup is None else min(meminfo, cgroup)
    return {"available": base + rss, "meminfo_available": meminfo, "cgroup_available": cgroup,
            "cgroup_limit": limit, "processes_rss": rss}


def main():
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={"processes": {"type": "list", "elements": "str", "default": []},
                       "root": {"type": "path", "default": "/"}},
        supports_check_mode=True,
    )
    module.exit_json(changed=False, **measure(module.params["root"], module.params["processes"]))


if __name__ == "__main__":
    main()
