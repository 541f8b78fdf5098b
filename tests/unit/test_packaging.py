"""Every module the package imports is declared in pyproject.toml (or is the standard library),
so a plain `pip install mailstack` gives a CLI that starts. The host tools run on Debian's bare
python3: standard library only. (tests/package/test_wheel.py proves it on a real install.)"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "mailstack"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {_canonical(re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0])
            for dep in project["dependencies"]}


def _imports(path: Path) -> set[str]:
    """Top-level names of every absolute import in a file, function-level ones included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_every_runtime_import_is_declared():
    provides = packages_distributions()  # import name -> distributions, from what is installed
    declared = _declared()
    undeclared = {}
    for path in PACKAGE.rglob("*.py"):
        for name in _imports(path) - set(sys.stdlib_module_names) - {"mailstack", "__future__"}:
            if not {_canonical(d) for d in provides.get(name, [])} & declared:
                undeclared.setdefault(name, []).append(str(path.relative_to(REPO)))
    assert not undeclared, f"imported but not in [project] dependencies: {undeclared}"


def test_every_declared_dependency_is_used():
    provides = packages_distributions()
    used = set()
    for path in PACKAGE.rglob("*.py"):
        for name in _imports(path):
            used.update(_canonical(d) for d in provides.get(name, []))
    assert _declared() <= used, f"declared but never imported: {_declared() - used}"


def test_host_tools_need_only_the_standard_library():
    for path in (PACKAGE / "host").glob("*.py"):
        outside = _imports(path) - set(sys.stdlib_module_names) - {"__future__"}
        assert not outside, f"{path.name} runs on the host's bare python3 but imports {outside}"


def test_the_test_bed_is_not_in_the_package():
    assert not list(PACKAGE.rglob("testbed*")), "the test bed belongs in tests/testbed"
    for path in PACKAGE.rglob("*.py"):
        assert "testbed" not in _imports(path), path


def test_the_roles_use_only_what_ansible_core_ships():
    """A user's install has ansible-core (declared) but not the `ansible` package's
    collections (a test extra): a role naming one of them (community.general.dict_kv did,
    in 0.1.0) fails only on a user's deploy. Every collection the test venv has is looked
    for by its fully qualified names in the playbook, the roles' YAML and templates."""
    import importlib.util

    spec = importlib.util.find_spec("ansible_collections")
    assert spec and spec.submodule_search_locations, "the test extras' `ansible` is missing"
    collections = {f"{ns.name}.{coll.name}"
                   for root in spec.submodule_search_locations
                   for ns in Path(root).iterdir() if ns.is_dir() and not ns.name.startswith("_")
                   for coll in ns.iterdir() if coll.is_dir() and not coll.name.startswith("_")}
    collections -= {"ansible.builtin", "ansible.legacy"}
    assert "community.general" in collections
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(collections))) + r")\.\w+")
    files = [REPO / "site.yml", *(p for p in (REPO / "roles").rglob("*")
                                  if p.is_file() and p.suffix in {".yml", ".yaml", ".j2", ".py"})]
    found = [f"{p.relative_to(REPO)}:{n}: {m.group(0)}"
             for p in files for n, line in enumerate(p.read_text().splitlines(), 1)
             for m in pattern.finditer(line)]
    assert not found, found
