"""Counting what a deploy changed, from ansible-runner's events."""

from __future__ import annotations

import io

from mailstack.cli.progress import Progress
from mailstack.deploy.events import DeployResult, Events

CENSORED = {"censored": "the output has been hidden due to the fact that 'no_log: true' was "
                        "specified for this result"}


def ok_event(task: str, res: dict, stdout: str) -> dict:
    return {"event": "runner_on_ok", "stdout": stdout,
            "event_data": {"host": "mail.example.org", "task": task, "res": res}}


def test_changes_of_no_log_tasks_are_counted():
    result = DeployResult()
    events = Events(None, Progress(io.StringIO()), result)  # type: ignore[arg-type]
    events(ok_event("Place main.cf", {"changed": True}, "changed: [mail.example.org]"))
    events(ok_event("Read the state", {"changed": False}, "ok: [mail.example.org]"))
    # no_log: the runner hides the whole result, `changed` included.
    events(ok_event("Mount the new store", CENSORED, "\r\nchanged: [mail.example.org]"))
    events(ok_event("Place the SQL settings", CENSORED, "ok: [mail.example.org]"))
    stats = result.hosts["mail.example.org"]
    assert (stats.changed, stats.ok) == (2, 2)
    assert [c.task for c in result.changes] == ["Place main.cf", "Mount the new store"]


def test_changes_say_what_they_changed():
    """The summary names the role, the task and the paths placed or loop items changed;
    a censored (no_log) result says nothing more than its task."""
    result = DeployResult()
    events = Events(None, Progress(io.StringIO()), result)  # type: ignore[arg-type]
    placed = ok_event("Place dovecot.conf", {"changed": True, "changed_paths": [
        "/etc/dovecot/dovecot.conf", "/a", "/b", "/c", "/d"]}, "changed: [mail.example.org]")
    placed["event_data"]["role"] = "dovecot"
    events(placed)
    events(ok_event("Enable units", {"changed": True, "results": [
        {"item": {"name": "a.timer"}, "changed": True}, {"item": "b.timer", "changed": False},
        {"item": "c\nd", "changed": True}]}, "changed: [mail.example.org]"))
    events(ok_event("Mount the new store", CENSORED, "changed: [mail.example.org]"))
    events(ok_event("Read the state", {"changed": False}, "ok: [mail.example.org]"))
    assert [c.line() for c in result.changed_on("mail.example.org")] == [
        "dovecot: Place dovecot.conf (/etc/dovecot/dovecot.conf, /a, /b, /c, and 1 more)",
        "Enable units (a.timer)",
        "Mount the new store",
    ]
    assert result.changed_on("other.example.org") == []
