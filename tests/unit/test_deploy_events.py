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
    assert [task for _, task in result.changes] == ["Place main.cf", "Mount the new store"]
