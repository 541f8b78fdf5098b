"""Writing files so that a crash or an error never leaves half a file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, content: str | bytes, *, mode: int = 0o644) -> None:
    """Write via a temp file in the same directory and rename: readers see old or new, never
    half. The mode is set before any byte is written, so a secret is never world-readable."""
    data = content.encode() if isinstance(content, str) else content
    write_all_atomic([(path, data, mode)])


def write_all_atomic(files: list[tuple[Path, bytes, int]]) -> None:
    """Replace several files as one change: all of them or none.

    Every new content is first written and synced to a temp file beside its target, its mode
    set before any byte (a full disk or a read-only directory fails here, before anything is
    replaced); then each target is replaced, its old version kept as a hard link until all are
    in place, and put back if a later replacement fails.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data, mode in files:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            staged.append((path, Path(tmp)))
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
    except BaseException:
        for _, tmp in staged:
            tmp.unlink(missing_ok=True)
        raise
    done: list[list] = []  # [target, its old version or None, replaced yet?], in order
    try:
        for path, tmp in staged:
            old = path.with_name(f".{path.name}.{os.getpid()}.old") if path.exists() else None
            if old is not None:
                old.unlink(missing_ok=True)
                os.link(path, old)
            entry = [path, old, False]
            done.append(entry)
            os.replace(tmp, path)
            entry[2] = True
    except BaseException:
        for path, old, replaced in reversed(done):
            with contextlib.suppress(OSError):  # best effort: put back every other file too
                if replaced and old is not None:
                    os.replace(old, path)
                elif replaced:
                    path.unlink()
                elif old is not None:
                    old.unlink()
        for _, tmp in staged:
            tmp.unlink(missing_ok=True)
        raise
    for _, old, _ in done:
        if old is not None:
            old.unlink(missing_ok=True)
