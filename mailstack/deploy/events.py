"""What a deploy did, read from ansible-runner's events: per-host counts, the changed tasks
with their diffs, and failures turned into one message naming the host and the cause."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Protocol

from mailstack.site.directory import Site
from mailstack.site.inventory import inventory_file, load_hosts


class ProgressSink(Protocol):
    """Where live progress goes (the CLI's terminal display; a no-op in library use)."""

    def task_started(self, name: str) -> None: ...
    def result(self, host: str, kind: str, task: str) -> None: ...
    def line(self, text: str) -> None: ...
    def done(self) -> None: ...


class NoProgress:
    def task_started(self, name: str) -> None:
        pass

    def result(self, host: str, kind: str, task: str) -> None:
        pass

    def line(self, text: str) -> None:
        pass

    def done(self) -> None:
        pass


@dataclass
class HostStats:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0
    unreachable: int = 0


@dataclass(frozen=True)
class Change:
    """One task that changed a host: its role ("" for the playbook's own tasks) and what it
    changed where the module says (the paths placed, the loop items changed)."""

    host: str
    role: str
    task: str
    what: tuple[str, ...] = ()

    def line(self, most: int = 4) -> str:
        text = f"{self.role}: {self.task}" if self.role else self.task
        if self.what:
            shown = ", ".join(self.what[:most])
            more = len(self.what) - most
            text += f" ({shown}{f', and {more} more' if more > 0 else ''})"
        return text


def _what_changed(res: dict[str, Any]) -> tuple[str, ...]:
    """The paths a mailstack_place task placed, or the label of each changed loop item;
    nothing for a no_log task (its result is censored) or a module that says neither."""
    if res.get("changed_paths"):
        return tuple(str(p) for p in res["changed_paths"])
    found = []
    for item in res.get("results") or []:
        if isinstance(item, dict) and item.get("changed"):
            label = item.get("item")
            if isinstance(label, dict):
                label = next((label[k] for k in ("dest", "path", "name") if k in label), None)
            if isinstance(label, str | int) and "\n" not in str(label):
                found.append(str(label)[:80])
    return tuple(found)


@dataclass
class DeployResult:
    hosts: dict[str, HostStats] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (host, task, why)
    diffs: list[tuple[str, str, str]] = field(default_factory=list)  # (host, task, diff)
    # What a task warned about without failing (the CA has not issued a certificate yet).
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (host, warning)
    elapsed: float = 0.0
    rc: int = 0
    new_host_keys: list[str] = field(default_factory=list)  # first contact: ssh-keygen -l lines

    @property
    def changed(self) -> int:
        return sum(s.changed for s in self.hosts.values())

    def changed_on(self, host: str) -> list[Change]:
        return [c for c in self.changes if c.host == host]

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.failures


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
                f"from {site.known_hosts} if that is expected ({msg})")
    return f"cannot reach {where} over SSH: {msg}"


def _changed(res: dict[str, Any], event: dict[str, Any]) -> bool:
    """Whether a task changed the host. ansible-runner replaces the whole result of a
    `no_log` task (creating or mounting the store, placing secret files) with a `censored`
    note, `changed` included; the callback's own line ("changed: [host]") still says it."""
    if "censored" in res:
        return str(event.get("stdout", "")).lstrip().startswith("changed:")
    return bool(res.get("changed"))


class Events:
    def __init__(self, site: Site, progress: ProgressSink, result: DeployResult) -> None:
        self.site = site
        self.progress = progress
        self.result = result

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host = data.get("host", "")
        task = data.get("task", "")
        role = data.get("role", "")
        res = data.get("res") or {}
        stats = self.result.hosts.setdefault(host, HostStats()) if host else None
        if kind == "playbook_on_task_start":
            self.progress.task_started(task)
        elif kind == "runner_on_ok" and stats is not None:
            self.result.warnings += [(host, str(w)) for w in res.get("warnings") or []]
            if _changed(res, event):
                stats.changed += 1
                self.result.changes.append(Change(host, role, task, _what_changed(res)))
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
