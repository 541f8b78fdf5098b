"""The memory check that refuses the virus scanner on a small host (roles/clamav's
mailstack_memory module), on fake /proc and /sys trees: a container's limit counts, not
the machine's memory /proc/meminfo shows inside it, and a clamd already running counts as
available (a re-deploy must not refuse itself)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

MODULE = Path(__file__).parents[2] / "roles" / "clamav" / "library" / "mailstack_memory.py"
spec = importlib.util.spec_from_file_location("mailstack_memory", MODULE)
assert spec and spec.loader
memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(memory)

MiB = 1024**2
CONTAINER = "/docker/0123abcd"


def write(root: Path, path: str, text: str) -> None:
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(text)


def machine(root: Path, available_mib: int) -> None:
    write(root, "proc/meminfo", f"MemTotal:  {24000 * 1024} kB\nMemFree: 1 kB\n"
                                f"MemAvailable:   {available_mib * 1024} kB\n")


def cgroup_v1(root: Path, limit: int, usage: int, inactive: int = 0) -> None:
    write(root, "proc/1/cgroup", f"5:devices:{CONTAINER}/init.scope\n"
                                 f"4:memory:{CONTAINER}/init.scope\n0::{CONTAINER}/init.scope\n")
    base = f"sys/fs/cgroup/memory{CONTAINER}"
    write(root, f"{base}/memory.limit_in_bytes", f"{limit}\n")
    write(root, f"{base}/memory.usage_in_bytes", f"{usage}\n")
    write(root, f"{base}/memory.stat", f"cache 5\ntotal_inactive_file {inactive}\n")
    for level in (f"{base}/init.scope", "sys/fs/cgroup/memory/docker", "sys/fs/cgroup/memory"):
        write(root, f"{level}/memory.limit_in_bytes", "9223372036854771712\n")  # no limit
        write(root, f"{level}/memory.usage_in_bytes", "1\n")


def cgroup_v2(root: Path, limit: str, current: int, inactive: int = 0) -> None:
    write(root, "proc/1/cgroup", f"0::{CONTAINER}/init.scope\n")
    write(root, f"sys/fs/cgroup{CONTAINER}/memory.max", f"{limit}\n")
    write(root, f"sys/fs/cgroup{CONTAINER}/memory.current", f"{current}\n")
    write(root, f"sys/fs/cgroup{CONTAINER}/memory.stat", f"anon 1\ninactive_file {inactive}\n")
    write(root, f"sys/fs/cgroup{CONTAINER}/init.scope/memory.max", "max\n")
    write(root, f"sys/fs/cgroup{CONTAINER}/init.scope/memory.current", "1\n")


def process(root: Path, pid: int, comm: str, rss_mib: int) -> None:
    write(root, f"proc/{pid}/comm", f"{comm}\n")
    write(root, f"proc/{pid}/status", f"Name:\t{comm}\nVmRSS:\t  {rss_mib * 1024} kB\n")


def test_a_vps_without_limits_has_what_meminfo_says(tmp_path):
    machine(tmp_path, 1800)
    write(tmp_path, "proc/1/cgroup", "0::/init.scope\n")
    result = memory.measure(str(tmp_path))
    assert result["available"] == 1800 * MiB
    assert result["cgroup_limit"] is None


@pytest.mark.parametrize("setup", [
    lambda root: cgroup_v1(root, 1024 * MiB, 400 * MiB, inactive=100 * MiB),
    lambda root: cgroup_v2(root, str(1024 * MiB), 400 * MiB, inactive=100 * MiB),
], ids=["cgroup-v1", "cgroup-v2"])
def test_a_container_has_what_its_limit_leaves(tmp_path, setup):
    machine(tmp_path, 20000)  # the machine's memory, as /proc/meminfo shows it in a container
    setup(tmp_path)
    result = memory.measure(str(tmp_path))
    # The limit minus what is used, page cache that can be dropped not counted as used.
    assert result["available"] == (1024 - 300) * MiB
    assert result["cgroup_limit"] == 1024 * MiB


def test_the_machine_counts_when_it_has_less_than_the_container_limit(tmp_path):
    machine(tmp_path, 500)
    cgroup_v2(tmp_path, str(4096 * MiB), 100 * MiB)
    assert memory.measure(str(tmp_path))["available"] == 500 * MiB


def test_an_unlimited_cgroup_v2_is_no_limit(tmp_path):
    machine(tmp_path, 3000)
    cgroup_v2(tmp_path, "max", 100 * MiB)
    result = memory.measure(str(tmp_path))
    assert (result["available"], result["cgroup_limit"]) == (3000 * MiB, None)


def test_a_running_clamd_counts_as_available(tmp_path):
    machine(tmp_path, 20000)
    cgroup_v1(tmp_path, 2048 * MiB, 1700 * MiB)
    process(tmp_path, 4242, "clamd", 1200)
    process(tmp_path, 4243, "rspamd", 100)
    write(tmp_path, "proc/self/comm", "python3\n")
    without = memory.measure(str(tmp_path))
    assert without["available"] == 348 * MiB
    result = memory.measure(str(tmp_path), ["clamd"])
    assert (result["available"], result["processes_rss"]) == ((348 + 1200) * MiB, 1200 * MiB)
