"""What the end-to-end tests share: the real CLI as a subprocess, and real SMTP/IMAP
clients talking to the deployed host."""

from __future__ import annotations

import email
import email.policy
import email.utils
import imaplib
import os
import secrets
import smtplib
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import testbed

from mailstack.sandbox import host as sandbox

PASSWORD = "correct horse battery staple"


def mailstack(site: Path | None, *args: str, input: str | None = None,
              timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """`mailstack [--site SITE] ARGS…` exactly as a user runs it (no ANSIBLE_* from us)."""
    cmd = [sys.executable, "-m", "mailstack", *(["--site", str(site)] if site else []), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)


Cli = Callable[..., subprocess.CompletedProcess[str]]


def installed_mailstack(venv: Path) -> Cli:
    """mailstack() for the `mailstack` of another install (an older release in its own
    virtualenv): the same arguments, run the same way."""
    def run(site: Path | None, *args: str, input: str | None = None,
            timeout: float = 900) -> subprocess.CompletedProcess[str]:
        cmd = [str(venv / "bin" / "mailstack"), *(["--site", str(site)] if site else []), *args]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ANSIBLE_", "PYTHON", "VIRTUAL_ENV"))}
        return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                              env=env, check=False)
    return run


def tls_context() -> ssl.SSLContext:
    """The test hosts have self-signed certificates."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def imap_login(ip: str, user: str) -> imaplib.IMAP4_SSL:
    imap = imaplib.IMAP4_SSL(ip, 993, ssl_context=tls_context(), timeout=10)
    imap.login(user, PASSWORD)
    return imap


def imap_subjects(ip: str, user: str) -> list[str]:
    """The subject of every message in the user's INBOX, read over IMAPS (duplicates kept).
    Each message is fetched whole: one the server cannot read back from its store fails
    here (its headers alone may come from Dovecot's cache)."""
    imap = imap_login(ip, user)
    try:
        imap.select("INBOX")
        _, data = imap.search(None, "ALL")
        subjects = []
        for num in data[0].split():
            _, fetched = imap.fetch(num, "(BODY.PEEK[])")
            subjects.append(str(email.message_from_bytes(fetched[0][1])["Subject"]))
        return subjects
    finally:
        imap.logout()


def fetch(ip: str, user: str, subject: str, folder: str = "INBOX", timeout: float = 30) -> list[bytes]:
    """Every message whose subject contains this text in the folder (waits for at least one).
    The server's SEARCH SUBJECT is answered by the full-text index, which matches words, not
    the substring IMAP asks for (README, "Full-text search"): it finds the candidates, and the subject
    itself is checked here."""
    def has_subject(raw: bytes) -> bool:
        return subject in str(email.message_from_bytes(raw, policy=email.policy.default)["Subject"])
    return fetch_matching(ip, user, ("SUBJECT", f'"{subject}"'), folder, timeout, has_subject)


def fetch_matching(ip: str, user: str, criteria: Sequence[str], folder: str = "INBOX",
                   timeout: float = 30,
                   keep: Callable[[bytes], bool] = lambda raw: True) -> list[bytes]:
    """Every message an IMAP SEARCH with these criteria finds in the folder and keep accepts,
    whole (waits for at least one)."""
    deadline = time.monotonic() + timeout
    while True:
        imap = imap_login(ip, user)
        try:
            imap.select(folder)
            _, data = imap.search(None, *criteria)
            found = [raw for n in data[0].split()
                     if keep(raw := imap.fetch(n, "(BODY.PEEK[])")[1][0][1])]
        finally:
            imap.logout()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def message(subject: str, rcpt: str, sender: str = "<>") -> str:
    """A well-formed message (the headers the spam filter expects of a real MTA's mail)."""
    return (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
            f"Date: {email.utils.formatdate()}\r\nMessage-ID: {email.utils.make_msgid()}\r\n"
            f"\r\nbody of {subject}\r\n")


def send(ip: str, rcpt: str, subjects: list[str]) -> None:
    """One message per subject from the outside, over port 25 (each accepted with 250)."""
    with smtplib.SMTP(ip, 25, timeout=20, local_hostname="client.test") as smtp:
        for subject in subjects:
            smtp.sendmail("", [rcpt], message(subject, rcpt))


def wait_for_subjects(ip: str, user: str, subjects: list[str], timeout: float = 30) -> list[str]:
    """Wait until every subject is in the INBOX; return the INBOX's subjects."""
    deadline = time.monotonic() + timeout
    while True:
        inbox = imap_subjects(ip, user)
        if all(s in inbox for s in subjects):
            return inbox
        if time.monotonic() > deadline:
            pytest.fail(f"never arrived: {sorted(set(subjects) - set(inbox))}")
        time.sleep(0.5)


def assert_each_once(inbox: list[str], subjects: list[str]) -> None:
    """Every subject exactly once: none lost, none delivered twice."""
    counts = {s: inbox.count(s) for s in subjects}
    assert all(n == 1 for n in counts.values()), {s: n for s, n in counts.items() if n != 1}


def edit_config(site: Path, *replacements: tuple[str, str]) -> None:
    """Change mailstack.yml as a user would, each (old, new) text exactly once."""
    config = site / "mailstack.yml"
    text = config.read_text()
    for old, new in replacements:
        assert old in text, f"mailstack.yml has no {old!r}"
        text = text.replace(old, new, 1)
    config.write_text(text)


@dataclass
class BoxedHost:
    """A deployed mail host on a test network with the internet in a box beside it."""

    name: str
    ip: str
    internet: testbed.Internet
    site: Path
    # The first deploy's output (its warnings among it).
    deployed: subprocess.CompletedProcess[str] | None = None

    @property
    def outside(self) -> str:
        """The box's outside mail host (it sends as outside.test)."""
        return self.internet.sender.host.name  # type: ignore[union-attr]

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A command on the mail host."""
        return testbed.exec_in(self.name, list(cmd), check=check)


@dataclass(frozen=True)
class SiteSpec:
    """One mail host of a box: its site directory (made by `mailstack init` for mail.DOMAIN),
    the users added, the edits to mailstack.yml, extra capabilities of its container."""

    site: Path
    domain: str
    users: Sequence[str] = ()
    edits: Sequence[tuple[str, str]] = ()
    cap_add: tuple[str, ...] = ()

    @property
    def hostname(self) -> str:
        return f"mail.{self.domain}"


@contextmanager
def hosts_in_a_box(what: str, specs: Sequence[SiteSpec], *,
                   before_deploy: Callable[[list[BoxedHost]], None] = lambda beds: None,
                   signed: tuple[str, ...] = (), cli: Cli = mailstack,
                   ) -> Iterator[list[BoxedHost]]:
    """Stack-image hosts, one per spec, and the box, on a network of their own; each site is
    made with `mailstack init`, gets a self-signed certificate, is changed by its edits,
    resolves through the box and has its users. before_deploy sees them all (to publish
    their records, say), then they are deployed, at once. Everything is removed afterwards,
    also on failure. signed: the box's DNSSEC-signed zones. cli: the mailstack that makes,
    fills and deploys the sites (an older release's, installed_mailstack)."""
    tag = secrets.token_hex(3)
    network = f"mailstack-e2e-{what}-{tag}"
    # One host keeps the network's name; several are told apart by their domain.
    names = [network] if len(specs) == 1 else [f"{network}-{s.domain.split('.')[0]}" for s in specs]
    key = sandbox.ensure_keypair(sandbox.default_state_dir())
    testbed.ensure_network(network)
    try:
        hosts = [testbed.start_host(name, testbed.stack_image(), hostname=spec.hostname,
                                    network=network, cap_add=spec.cap_add,
                                    ssh_pubkey=key.with_suffix(".pub").read_text())
                 for name, spec in zip(names, specs, strict=True)]
        with testbed.Internet(network, prefix=f"mailstack-inet-{what}-{tag}",
                              signed=signed) as internet:
            beds = [_new_site(spec, host, internet, key, cli)
                    for spec, host in zip(specs, hosts, strict=True)]
            before_deploy(beds)
            # Each deploy is a subprocess of its own (its site, its SSH connections): together
            # they take the time of the slowest.
            with ThreadPoolExecutor(len(beds)) as pool:
                for bed, done in zip(beds, pool.map(lambda b: cli(b.site, "deploy"), beds),
                                     strict=True):
                    bed.deployed = done
            for bed in beds:
                assert bed.deployed.returncode == 0, bed.deployed.stdout + bed.deployed.stderr
            yield beds
    finally:
        # The hosts, and any other a test started on the network named after it (NETWORK-…).
        others = testbed.docker("ps", "-a", "--filter", f"name=^{network}-", "--format",
                                "{{.Names}}", check=False).stdout.split()
        for name in dict.fromkeys([*names, *others]):
            testbed.remove_host(name)
        testbed.remove_network(network)


def _new_site(spec: SiteSpec, host: testbed.Host, internet: testbed.Internet, key: Path,
              cli: Cli) -> BoxedHost:
    """`mailstack init` for the host, as a test-bed site (self-signed, resolving through the
    box), then the spec's edits and users."""
    init = cli(None, "init", str(spec.site), "--domain", spec.domain, "--hostname",
                     spec.hostname, "--host", host.ip, "--ssh-key", str(key))
    assert init.returncode == 0, init.stderr
    testbed.self_signed_site(spec.site)
    edit_config(spec.site, *spec.edits)
    testbed.set_site_resolver(spec.site, internet.resolver_ip, dnssec=False)
    for user in spec.users:
        assert cli(spec.site, "user", "add", user, "--password-stdin",
                         input=PASSWORD + "\n").returncode == 0
    return BoxedHost(host.name, host.ip, internet, spec.site)


@contextmanager
def host_in_a_box(what: str, site: Path, domain: str, users: Sequence[str], *,
                  edits: Sequence[tuple[str, str]] = (), cap_add: tuple[str, ...] = (),
                  before_deploy: Callable[[BoxedHost], None] = lambda bed: None,
                  signed: tuple[str, ...] = (), cli: Cli = mailstack,
                  ) -> Iterator[BoxedHost]:
    """One host in a box (hosts_in_a_box): mail.DOMAIN with the site made at `site`.
    signed: the box's DNSSEC-signed zones (before_deploy may give their trust anchors to the
    site)."""
    with hosts_in_a_box(what, [SiteSpec(site, domain, users, edits, cap_add)], signed=signed, cli=cli,
                        before_deploy=lambda beds: before_deploy(beds[0])) as (bed,):
        yield bed
