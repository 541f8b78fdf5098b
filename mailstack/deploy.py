"""`mailstack deploy`: render, then run site.yml against the site's inventory over SSH.

ansible-runner drives ansible-playbook; its event callback feeds a live progress line
(task, host, ok/changed/failed counts) and the final summary. SSH and task failures become
one clear message naming the host and the cause.
"""

from __future__ import annotations

import difflib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MailstackError
from .inventory import inventory_file, load_hosts
from .render import render_site, write_tree
from .resources import resource_dir
from .site import Site


@dataclass
class HostStats:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0
    unreachable: int = 0


@dataclass
class DeployResult:
    hosts: dict[str, HostStats] = field(default_factory=dict)
    changes: list[tuple[str, str]] = field(default_factory=list)  # (host, task)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (host, task, why)
    diffs: list[tuple[str, str, str]] = field(default_factory=list)  # (host, task, diff)
    elapsed: float = 0.0
    rc: int = 0

    @property
    def changed(self) -> int:
        return sum(s.changed for s in self.hosts.values())

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.failures


class Progress:
    """One live status line on a terminal; plain lines (changes, failures) otherwise."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.task = ""
        self.counts = HostStats()

    def _status(self, host: str = "") -> None:
        if not self.tty:
            return
        c = self.counts
        line = (f"ok={c.ok} changed={c.changed} failed={c.failed + c.unreachable}  "
                f"{host + ': ' if host else ''}{self.task}")
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.stream.write("\r\033[K" + line[:width])
        self.stream.flush()

    def line(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()
        self._status()

    def task_started(self, name: str) -> None:
        self.task = name
        self._status()

    def result(self, host: str, kind: str, task: str) -> None:
        c = self.counts
        if kind == "ok":
            c.ok += 1
        elif kind == "changed":
            c.changed += 1
            self.line(f"  changed  {host}  {task}")
        elif kind == "failed":
            c.failed += 1
            self.line(f"  FAILED   {host}  {task}")
        elif kind == "unreachable":
            c.unreachable += 1
            self.line(f"  UNREACHABLE  {host}")
        elif kind == "skipped":
            c.skipped += 1
        self._status(host)

    def done(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _failure_reason(res: dict[str, Any]) -> str:
    parts = [str(res.get("msg", "")).strip()]
    for key in ("stderr", "module_stderr"):
        text = str(res.get(key) or "").strip()
        if text and text not in parts[0]:
            parts.append(text.splitlines()[-1])
    return " — ".join(p for p in parts if p) or "no reason given"


def _unreachable_reason(host: str, res: dict[str, Any], site: Site) -> str:
    msg = str(res.get("msg", "")).strip()
    inv = {h.name: h for h in load_hosts(site.root, site.inventory)}
    h = inv.get(host)
    where = f"{h.ssh_user}@{h.address}:{h.ssh_port}" if h else host
    if "Permission denied" in msg or "Authentication failed" in msg:
        return (f"SSH authentication failed for {where}: check ansible_user and "
                f"ansible_ssh_private_key_file in {inventory_file(site.root, site.inventory)}"
                f" ({msg})")
    if "Host key verification failed" in msg or "REMOTE HOST IDENTIFICATION" in msg:
        return (f"the SSH host key of {where} changed (a rebuilt server?): remove its line "
                f"from {site.root / 'known_hosts'} if that is expected ({msg})")
    return f"cannot reach {where} over SSH: {msg}"


def _changed(res: dict[str, Any], event: dict[str, Any]) -> bool:
    """Whether a task changed the host. ansible-runner replaces the whole result of a
    `no_log` task (creating or mounting the store, placing secret files) with a `censored`
    note, `changed` included; the callback's own line ("changed: [host]") still says it."""
    if "censored" in res:
        return str(event.get("stdout", "")).lstrip().startswith("changed:")
    return bool(res.get("changed"))


class _Events:
    def __init__(self, site: Site, progress: Progress, result: DeployResult) -> None:
        self.site = site
        self.progress = progress
        self.result = result

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host = data.get("host", "")
        task = data.get("task", "")
        res = data.get("res") or {}
        stats = self.result.hosts.setdefault(host, HostStats()) if host else None
        if kind == "playbook_on_task_start":
            self.progress.task_started(task)
        elif kind == "runner_on_ok" and stats is not None:
            if _changed(res, event):
                stats.changed += 1
                self.result.changes.append((host, task))
                self.progress.result(host, "changed", task)
                self._diff(host, task, res)
            else:
                stats.ok += 1
                self.progress.result(host, "ok", task)
        elif kind == "runner_on_failed" and stats is not None:
            if data.get("ignore_errors"):
                return True
            stats.failed += 1
            self.result.failures.append((host, task, _failure_reason(res)))
            self.progress.result(host, "failed", task)
        elif kind == "runner_on_unreachable" and stats is not None:
            stats.unreachable += 1
            self.result.failures.append(
                (host, task, _unreachable_reason(host, res, self.site)))
            self.progress.result(host, "unreachable", task)
        elif kind == "runner_on_skipped" and stats is not None:
            stats.skipped += 1
        return True

    def _diff(self, host: str, task: str, res: dict[str, Any]) -> None:
        diffs = res.get("diff")
        if not diffs:
            return
        for d in diffs if isinstance(diffs, list) else [diffs]:
            if "prepared" in d:
                text = str(d["prepared"])
            elif "before" in d or "after" in d:
                text = "".join(difflib.unified_diff(
                    str(d.get("before", "")).splitlines(True),
                    str(d.get("after", "")).splitlines(True),
                    str(d.get("before_header", "before")),
                    str(d.get("after_header", "after"))))
            else:
                continue
            if text.strip():
                self.result.diffs.append((host, task, text))


def run_playbook(
    site: Site,
    build_dir: Path,
    *,
    check: bool = False,
    limit: str | None = None,
    tags: str | None = None,
    progress: Progress | None = None,
) -> DeployResult:
    import ansible_runner

    progress = progress or Progress()
    result = DeployResult()
    playbook = resource_dir("site.yml")
    if not playbook.exists():
        raise MailstackError(f"playbook {playbook} is missing: reinstall mailstack")
    bindir = str(Path(sys.executable).parent)
    env = {
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_ROLES_PATH": str(resource_dir("roles")),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_FORKS": "10",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        # Trust a new server's key on first contact, refuse a changed one later.
        "ANSIBLE_SSH_ARGS": ("-o ControlMaster=auto -o ControlPersist=60s "
                             "-o StrictHostKeyChecking=accept-new "
                             f"-o UserKnownHostsFile={site.root.resolve() / 'known_hosts'}"),
        "ANSIBLE_NOCOLOR": "1",
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mailstack-runner-") as private:
        os.chmod(private, 0o700)  # artifacts can hold task output
        run = ansible_runner.run(
            private_data_dir=private,
            playbook=str(playbook),
            inventory=str(inventory_file(site.root, site.inventory).resolve()),
            # The storage passphrase only ever sits in runner's private 0700 directory on the
            # controller; roles pipe it to gocryptfs on stdin (no_log).
            extravars={"mailstack_build_dir": str(build_dir.resolve()),
                       "storage__passphrase": site.secrets.site.get("storage_passphrase", "")},
            envvars=env,
            limit=limit,
            tags=tags,
            cmdline="--check --diff" if check else None,
            quiet=True,
            event_handler=_Events(site, progress, result),
            rotate_artifacts=1,
        )
        result.rc = run.rc
        if run.rc != 0 and not result.failures:
            tail = (run.stdout.read() if run.stdout else "").strip().splitlines()[-5:]
            result.failures.append(("", "ansible-playbook", " | ".join(tail) or run.status))
    progress.done()
    result.elapsed = time.monotonic() - started
    return result


def deploy(
    site: Site,
    *,
    check: bool = False,
    limit: str | None = None,
    tags: str | None = None,
    progress: Progress | None = None,
    on_rendered: Callable[[int], None] | None = None,
) -> DeployResult:
    build = site.root / "build"
    rendered = render_site(site, limit)
    for host, files in rendered.items():
        write_tree(files, build / host)
    if on_rendered:
        on_rendered(sum(len(f) for f in rendered.values()))
    return run_playbook(site, build, check=check, limit=limit, tags=tags, progress=progress)
