"""The live progress display of `mailstack deploy`: one status line on a terminal (task,
host, ok/changed/failed counts), plain lines for changes and failures otherwise."""

from __future__ import annotations

import shutil
import sys

from mailstack.deploy.events import HostStats


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
