#!/usr/bin/env python3
"""What indexing an attachment costs: mailstack-fts-decoder (mailstack/host/fts_decoder.py)
on documents of several kinds and sizes, in a container of the test-bed stack image (the
host's Python and Debian's pdftotext), as Dovecot runs it: one process per attachment, the
content type as its argument, the document on stdin.

Side by side in one run, each R times (default 20): the bare cost of a process of the
host's Python (`python3 -c pass`, the floor of any decoder written in it), then each
document. Printed: milliseconds per attachment (median, and its ratio to the floor), the
document's size and the text it gave.

    .venv/bin/python bench/decoder.py [--runs R] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import testbed  # noqa: E402
from documents import DOCX, ODT, XLSX, archive, docx, odt, pdf  # noqa: E402

from mailstack.host import fts_decoder  # noqa: E402

WORDS = ["quokka", "wombat", "Größe", "façade", "naïve", "report", "figure", "total",
         "budget", "meeting", "schedule", "contract", "invoice", "delivery"]


def sentence(i: int, n: int = 12) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(n))


def documents() -> dict[str, tuple[str, bytes]]:
    """name: (content type, bytes). A page is about 40 lines of 12 words."""
    ascii_words = [w for w in WORDS if w.isascii()]
    page = lambda p: "\n".join(" ".join(ascii_words[(p + line + k) % len(ascii_words)]  # noqa: E731
                                         for k in range(12)) for line in range(40))
    cells = "".join(f"<si><t>{sentence(i, 3)}</t></si>" for i in range(5000))
    return {
        "pdf, 1 page": ("application/pdf", pdf(page(0))),
        "pdf, 100 pages": ("application/pdf", pdf(*(page(p) for p in range(100)))),
        "docx, 1 page": (DOCX, docx(*[[sentence(i)] for i in range(40)])),
        "docx, 100 pages": (DOCX, docx(*[[sentence(i)] for i in range(4000)])),
        "xlsx, 5,000 cells": (XLSX, archive({"xl/sharedStrings.xml": f"<sst>{cells}</sst>"})),
        "odt, 100 pages": (ODT, odt("".join(f"<text:p>{sentence(i)}</text:p>"
                                            for i in range(4000)))),
    }


SCRIPT = r"""
import json, subprocess, sys, time
runs, cases = int(sys.argv[1]), json.load(open("/w/cases.json"))
def timed(cmd, stdin):
    times = []
    for _ in range(runs):
        with open(stdin, "rb") as f:
            t = time.perf_counter()
            out = subprocess.run(cmd, stdin=f, capture_output=True, check=True).stdout
            times.append((time.perf_counter() - t) * 1000)
    return sorted(times)[len(times) // 2], len(out)
floor, _ = timed(["python3", "-c", "pass"], "/dev/null")
result = {"python3 -c pass": [floor, 0, 0]}
for name, (ctype, file) in cases.items():
    ms, text = timed(["python3", "/w/decoder", ctype], "/w/" + file)
    result[name] = [ms, len(open("/w/" + file, "rb").read()), text]
print(json.dumps(result))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    testbed.ensure_engine()
    image = testbed.stack_image()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cases = {}
        for i, (name, (ctype, data)) in enumerate(documents().items()):
            (work / f"doc{i}").write_bytes(data)
            cases[name] = (ctype, f"doc{i}")
        (work / "cases.json").write_text(json.dumps(cases))
        (work / "decoder").write_text(Path(fts_decoder.__file__).read_text())
        (work / "bench.py").write_text(SCRIPT)
        work.chmod(0o755)
        proc = subprocess.run(["docker", "run", "--rm", "-v", f"{work}:/w:ro", "--entrypoint",
                               "python3", image, "/w/bench.py", str(args.runs)],
                              capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"the run failed:\n{proc.stderr}")
    result = json.loads(proc.stdout)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    floor = result["python3 -c pass"][0]
    print(f"mailstack-fts-decoder, median of {args.runs} runs each, image {image}")
    print(f"{'attachment':<22} {'ms':>8} {'x floor':>8} {'size':>10} {'text':>10}")
    for name, (ms, size, text) in result.items():
        print(f"{name:<22} {ms:8.1f} {ms / floor:8.1f} {size:10,} {text:10,}")


if __name__ == "__main__":
    main()
