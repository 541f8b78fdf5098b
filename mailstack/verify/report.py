"""The outcome of `mailstack verify`: one Check per probe, as a table or JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Check:
    host: str
    name: str
    passed: bool
    detail: str


def table(results: list[Check]) -> str:
    width = max(len(r.name) for r in results)
    lines = []
    for r in results:
        mark = "ok  " if r.passed else "FAIL"
        lines.append(f"{mark}  {r.host}  {r.name:<{width}}  {r.detail}")
    failed = sum(not r.passed for r in results)
    lines.append(f"{failed} of {len(results)} checks FAILED" if failed
                 else f"all {len(results)} checks passed")
    return "\n".join(lines)


def as_json(results: list[Check]) -> str:
    return json.dumps([asdict(r) for r in results], indent=2)
