"""mailstack_place (roles/probe): a role's files in one call, each validated before it goes live.

The module's functions run here on local files (as the roles run it on a host), with the
real `run_command` replaced by subprocess (the same argv, no shell).
"""

from __future__ import annotations

import base64
import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


place_mod = _load(REPO / "roles" / "probe" / "library" / "mailstack_place.py", "mailstack_place")
filters = _load(REPO / "roles" / "probe" / "filter_plugins" / "mailstack_probe.py", "filters")

ME = {"owner": "root", "group": "root"} if os.geteuid() == 0 else None
pytestmark = pytest.mark.skipif(ME is None, reason="places files as root (owner and group)")
calls: list[list[str]] = []


def run(argv: list[str]) -> tuple[int, str, str]:
    calls.append(argv)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return done.returncode, done.stdout, done.stderr


def file(dest: Path, text: str, mode: str = "0644", **more) -> dict:
    return {"dest": str(dest), "content": base64.b64encode(text.encode()).decode(),
            "mode": mode, **ME, **more}


def place(entries: list[dict], check_mode: bool = False,
          together: str | None = None) -> tuple[list[str], str]:
    calls.clear()
    place_mod.check_entries(entries)
    changed: list[str] = []
    try:
        place_mod.place(entries, check_mode, run, changed, together)
    except place_mod.PlaceError as exc:
        return changed, str(exc)
    return changed, ""


def test_places_in_order_then_changes_nothing(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    entries = [{"dest": str(conf), "state": "directory", "mode": "0750", **ME},
               file(conf / "a.cf", "a = 1\n", "0640"),
               file(conf / "b.cf", "b = 2\n", validate="grep -q b %s")]
    assert place(entries) == ([str(conf), str(conf / "a.cf"), str(conf / "b.cf")], "")
    assert (conf / "a.cf").read_text() == "a = 1\n"
    assert oct(conf.stat().st_mode & 0o777) == "0o750"
    assert oct((conf / "a.cf").stat().st_mode & 0o777) == "0o640"
    assert place(entries) == ([], "")
    assert calls == [], "an unchanged file is not validated again"
    assert sorted(p.name for p in conf.iterdir()) == ["a.cf", "b.cf"], "no temporary file left"


def test_same_bytes_wrong_mode_is_only_fixed(tmp_path: Path) -> None:
    dest = tmp_path / "x.cf"
    dest.write_text("x\n")
    dest.chmod(0o666)
    inode = dest.stat().st_ino
    assert place([file(dest, "x\n", "0600", validate="false %s")]) == ([str(dest)], "")
    assert oct(dest.stat().st_mode & 0o777) == "0o600"
    assert dest.stat().st_ino == inode and calls == []


def test_a_directory_with_its_owner_and_the_wrong_mode_is_never_chowned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The encrypted store's root (its FUSE daemon is not root) refuses a chown even to the
    owner it presents: only its mode is fixed."""
    root = tmp_path / "vhosts"
    root.mkdir(mode=0o700)

    def refused(*_):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(place_mod.os, "chown", refused)
    entry = {"dest": str(root), "state": "directory", "mode": "0770", **ME}
    assert place([entry]) == ([str(root)], "")
    assert oct(root.stat().st_mode & 0o777) == "0o770"


def test_a_refused_file_goes_nowhere_and_stops_the_rest(tmp_path: Path) -> None:
    first, bad, after = tmp_path / "1.cf", tmp_path / "2.cf", tmp_path / "3.cf"
    bad.write_text("old\n")
    changed, refused = place([file(first, "one\n"),
                              file(bad, "broken\n", validate="grep -q good %s"),
                              file(after, "three\n")])
    assert changed == [str(first)], "what was placed before is reported (its handler runs)"
    assert str(bad) in refused and "grep -q good %s" in refused
    assert bad.read_text() == "old\n"
    assert not after.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.cf", "2.cf"]


def test_validate_sees_the_candidate(tmp_path: Path) -> None:
    dest = tmp_path / "main.cf"
    dest.write_text("old\n")
    assert place([file(dest, "new\n", validate="grep -qx new %s")]) == ([str(dest)], "")
    candidate = calls[0][-1]
    assert candidate != str(dest) and Path(candidate).parent == tmp_path
    assert dest.read_text() == "new\n"


# A set check: every LIVE=CANDIDATE pair's candidate must say "ok" (as rspamadm configtest
# would judge a copy of the whole directory with all candidates in place).
SET_CHECK = "sh -c 'for p; do grep -q ok \"${p#*=}\" || exit 3; done' check %s"


def test_a_set_is_checked_once_then_goes_live_in_order(tmp_path: Path) -> None:
    conf = tmp_path / "local.d"
    a, b = conf / "a.conf", conf / "b.conf"
    entries = [{"dest": str(conf), "state": "directory", "mode": "0755", **ME},
               file(a, "ok a\n"), file(b, "ok b\n")]
    assert place(entries, together=SET_CHECK) == ([str(conf), str(a), str(b)], "")
    assert len(calls) == 1, "one check for the whole set"
    pairs = calls[0][-2:]
    assert [p.split("=")[0] for p in pairs] == [str(a), str(b)]
    assert all(Path(p.split("=")[1]).parent == conf for p in pairs)
    assert a.read_text() == "ok a\n" and sorted(p.name for p in conf.iterdir()) == ["a.conf", "b.conf"]
    assert place(entries, together=SET_CHECK) == ([], "") and calls == []


def test_a_refused_set_replaces_nothing(tmp_path: Path) -> None:
    a, b = tmp_path / "a.conf", tmp_path / "b.conf"
    a.write_text("old a\n")
    changed, refused = place([file(a, "ok a\n"), file(b, "bad\n")], together=SET_CHECK)
    assert changed == [] and "exit 3" in refused and str(b) in refused
    assert a.read_text() == "old a\n" and not b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.conf"], "no candidate left"


def test_check_mode_changes_nothing(tmp_path: Path) -> None:
    conf = tmp_path / "new"
    entries = [{"dest": str(conf), "state": "directory", "mode": "0755", **ME},
               file(tmp_path / "f", "f\n")]
    assert place(entries, check_mode=True) == ([str(conf), str(tmp_path / "f")], "")
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_stops_with_its_name(tmp_path: Path) -> None:
    changed, refused = place([file(tmp_path / "no" / "f", "f\n")])
    assert changed == [] and f"{tmp_path / 'no'} does not exist" in refused


@pytest.mark.parametrize("bad, message", [
    ({"dest": "etc/x"}, "absolute path"),
    ({"dest": "/etc/../x"}, "absolute path"),
    ({"mode": "rw"}, "octal"),
    ({"mode": "17777"}, "out of range"),
    ({"content": None}, "needs its content"),
    ({"content": "not base64!"}, "not base64"),
    ({"validate": "postconf -n"}, "%s"),
    ({"state": "link"}, "file or directory"),
    ({"owner": ""}, "owner is required"),
])
def test_bad_entries_are_refused_before_anything_is_placed(tmp_path: Path, bad: dict,
                                                           message: str) -> None:
    good = file(tmp_path / "good", "g\n")
    entry = {**file(tmp_path / "f", "f\n"), **bad}
    with pytest.raises(place_mod.PlaceError, match=message):
        place_mod.check_entries([good, entry])
    assert list(tmp_path.iterdir()) == []


def test_unknown_owner_is_named(tmp_path: Path) -> None:
    changed, refused = place([file(tmp_path / "f", "f\n", owner="no-such-user-x")])
    assert changed == [] and "no user 'no-such-user-x'" in refused


def test_place_entries_filter_takes_what_the_probe_found_different(tmp_path: Path) -> None:
    rendered = tmp_path / "build"
    (rendered / "etc" / "app").mkdir(parents=True)
    (rendered / "etc" / "app" / "a.conf").write_bytes(b"a\x00\n")
    (rendered / "etc" / "app" / "b.conf").write_bytes(b"b\n")
    entries = [{"path": "/etc/app", "state": "directory", "owner": "root", "group": "app",
                "mode": "0750"},
               {"path": "/etc/app/a.conf", "owner": "root", "group": "app", "mode": "0640",
                "sha256": "ignored"},
               {"path": "/etc/app/b.conf", "owner": "root", "group": "root", "mode": "0644"}]
    probe = {"files": {"/etc/app": {"ok": True}, "/etc/app/a.conf": {"ok": False}}}
    out = filters.mailstack_place_entries(entries, str(rendered), probe,
                                          validate={"/etc/app/b.conf": "check %s"})
    assert out == [
        {"dest": "/etc/app/a.conf", "state": "file", "owner": "root", "group": "app",
         "mode": "0640", "content": base64.b64encode(b"a\x00\n").decode()},
        {"dest": "/etc/app/b.conf", "state": "file", "owner": "root", "group": "root",
         "mode": "0644", "content": base64.b64encode(b"b\n").decode(), "validate": "check %s"},
    ]
