"""`mailstack deploy`: render, then run site.yml against the site's inventory over SSH.

ansible-runner drives ansible-playbook; its event callback (events.py) feeds the live
progress and the final summary.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mailstack.deploy.events import DeployResult, Events, NoProgress, ProgressSink
from mailstack.deploy.ssh import ansible_ssh_args, control_path_dir
from mailstack.errors import MailstackError
from mailstack.render.renderer import render_site, write_tree
from mailstack.resources import resource_dir
from mailstack.site.config import unreachable_role_addresses
from mailstack.site.directory import Site
from mailstack.site.inventory import inventory_file

# The environment variable the storage role reads the passphrase from (roles/storage).
PASSPHRASE_ENV = "MAILSTACK_STORAGE_PASSPHRASE"


def run_playbook(
    site: Site,
    build_dir: Path,
    *,
    check: bool = False,
    limit: str | None = None,
    tags: str | None = None,
    progress: ProgressSink | None = None,
) -> DeployResult:
    import ansible_runner

    progress = progress or NoProgress()
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
        "ANSIBLE_SSH_ARGS": ansible_ssh_args(site.known_hosts),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_path_dir(site.root)),
        "ANSIBLE_NOCOLOR": "1",
    }
    started = time.monotonic()
    # The storage passphrase reaches ansible-playbook only through the environment it
    # inherits (ansible-runner writes its extravars and envvars to files): it lives in memory
    # for the run, never on a disk. The storage role reads it with an env lookup and pipes it
    # to gocryptfs on stdin (no_log).
    os.environ[PASSPHRASE_ENV] = site.secrets.site.get("storage_passphrase", "")
    try:
        with tempfile.TemporaryDirectory(prefix="mailstack-runner-") as private:
            os.chmod(private, 0o700)  # artifacts can hold task output
            run = ansible_runner.run(
                private_data_dir=private,
                playbook=str(playbook),
                inventory=str(inventory_file(site.root, site.inventory).resolve()),
                extravars={"mailstack_build_dir": str(build_dir.resolve())},
                envvars=env,
                limit=limit,
                tags=tags,
                cmdline="--check --diff" if check else None,
                quiet=True,
                event_handler=Events(site, progress, result),
                rotate_artifacts=1,
            )
            result.rc = run.rc
            if run.rc != 0 and not result.failures:
                tail = (run.stdout.read() if run.stdout else "").strip().splitlines()[-5:]
                result.failures.append(("", "ansible-playbook", " | ".join(tail) or run.status))
    finally:
        os.environ.pop(PASSPHRASE_ENV, None)
    progress.done()
    result.elapsed = time.monotonic() - started
    return result


# Tags Ansible itself gives a meaning to.
SPECIAL_TAGS = {"all", "always", "never", "tagged", "untagged"}


def playbook_tags() -> set[str]:
    """Every tag site.yml and the roles put on a play, role, block or task."""
    import yaml

    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            tags = node.get("tags")
            if isinstance(tags, str):
                found.update(t.strip() for t in tags.split(","))
            elif isinstance(tags, list):
                found.update(str(t) for t in tags)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    roles = resource_dir("roles")
    for path in [resource_dir("site.yml"), *sorted(roles.glob("*/tasks/*.yml")),
                 *sorted(roles.glob("*/handlers/*.yml"))]:
        walk(yaml.safe_load(path.read_text(encoding="utf-8")))
    return found - SPECIAL_TAGS


def check_tags(tags: str | None) -> None:
    """`--tags bogus` would run nothing and report "no changes": refuse what no task has."""
    if tags is None:
        return
    known = playbook_tags()
    wanted = [t.strip() for t in tags.split(",")]
    unknown = [t for t in wanted if t not in known and t not in ("all", "tagged", "untagged")]
    if unknown or not all(wanted):
        raise MailstackError(f"--tags {tags!r}: no task has the tag(s) "
                             f"{', '.join(repr(t) for t in unknown) or repr('')}; "
                             f"mailstack's tags: {', '.join(sorted(known))}")


def deploy(
    site: Site,
    *,
    check: bool = False,
    limit: str | None = None,
    tags: str | None = None,
    progress: ProgressSink | None = None,
    on_rendered: Callable[[int], None] | None = None,
) -> DeployResult:
    """Render into a private directory (0700) that lives only as long as this run: the files
    hold DB passwords and DKIM keys in clear, and nothing needs them once they are placed
    (`mailstack render` writes them to build/ when a user asks to see them)."""
    check_tags(tags)
    rendered = render_site(site, limit)
    missing = unreachable_role_addresses(site.config)
    if missing:
        raise MailstackError("refusing to deploy: mail to these addresses would bounce:",
                             details=missing)
    before = known_host_lines(site.known_hosts)
    with tempfile.TemporaryDirectory(prefix="mailstack-build-") as build_dir:
        build = Path(build_dir)
        for host, files in rendered.items():
            write_tree(files, build / host)
        if on_rendered:
            on_rendered(sum(len(f) for f in rendered.values()))
        result = run_playbook(site, build, check=check, limit=limit, tags=tags,
                              progress=progress)
    result.new_host_keys = fingerprints(known_host_lines(site.known_hosts) - before)
    return result


def known_host_lines(path: Path) -> set[str]:
    try:
        return {line for line in path.read_text().splitlines() if line.strip()}
    except FileNotFoundError:
        return set()


def fingerprints(lines: set[str]) -> list[str]:
    """`ssh-keygen -l` of known_hosts lines: what to compare with the provider's console."""
    if not lines:
        return []
    with tempfile.NamedTemporaryFile("w", suffix=".known_hosts") as tmp:
        tmp.write("\n".join(sorted(lines)) + "\n")
        tmp.flush()
        proc = subprocess.run(["ssh-keygen", "-l", "-f", tmp.name], capture_output=True,
                              text=True, check=False)
    return [line for line in proc.stdout.splitlines() if line.strip()]
