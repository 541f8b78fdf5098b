"""A site: the directory a user owns (a git repo) holding desired state, inventory and
secrets. ``init_site`` writes a new one; ``Site`` opens an existing one."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from mailstack.errors import ConfigError, MailstackError
from mailstack.files import write_all_atomic, write_atomic
from mailstack.site.config import CONFIG_FILE, SITE_FORMAT
from mailstack.site.document import ConfigDocument
from mailstack.site.inventory import (
    DEFAULT_INVENTORY,
    write_inventory,
)
from mailstack.site.names import (
    address_problem,
    control_problem,
    domain_problem,
    host_problem,
    user_problem,
)
from mailstack.site.secrets import SECRETS_DIR, Secrets
from mailstack.site.vault import VAULT_PASSWORD_FILE, Vault, new_password, password_file

T = TypeVar("T")
KNOWN_HOSTS_FILE = "known_hosts"
GITIGNORE = """\
# The vault password unlocks every secret: never commit it. Back it up somewhere safe.
/.vault-password
# Rendered files hold secrets in clear text; they are rebuilt by `mailstack render`.
/build/
"""


class Site:
    """An existing site directory."""

    def __init__(
        self, root: Path, *, vault_password_file: Path | None = None,
        inventory: str = DEFAULT_INVENTORY,
    ) -> None:
        self.root = Path(root)
        self.inventory = inventory
        self.vault = Vault(password_file(self.root, vault_password_file))
        if not (self.root / CONFIG_FILE).exists():
            raise MailstackError(
                f"{self.root.resolve()} is not a mailstack site (no {CONFIG_FILE}); cd into "
                "your site, pass --site DIR, or create one with `mailstack init DIR`"
            )

    @cached_property
    def doc(self) -> ConfigDocument:
        return ConfigDocument.load(self.root / CONFIG_FILE)

    @property
    def config(self):  # -> SiteConfig
        return self.doc.model

    @cached_property
    def secrets(self) -> Secrets:
        return Secrets.load(self.root, self.vault)

    @property
    def known_hosts(self) -> Path:
        """The SSH host keys of the site's servers, pinned at first contact (deploy/ssh.py)."""
        return self.root.resolve() / KNOWN_HOSTS_FILE

    @contextlib.contextmanager
    def editing(self) -> Iterator[None]:
        """Hold the site for one whole read-modify-write. Two edits at once (two `user add`, a
        `domain add`) otherwise both read the old state and the second write loses the first
        change. The lock is flock on the site directory itself (no lock file to commit); the
        state is read again under it."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise MailstackError(f"cannot open the site {self.root}: {exc.strerror}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"waiting for another mailstack command editing {self.root} …",
                      file=sys.stderr, flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
            self.__dict__.pop("doc", None)
            self.__dict__.pop("secrets", None)
            yield
        finally:
            os.close(fd)  # releases the lock

    def commit(self, *, config: bool = True, secrets: bool = True) -> None:
        """Validate the edited state, then write mailstack.yml and the changed secrets files
        as one change: all of them, or none (files.write_all_atomic)."""
        self.doc.revalidate()
        files: list[tuple[Path, bytes, int]] = []
        if secrets:
            files += self.secrets.changed_files()
        if config:
            files.append((self.doc.path, self.doc.dumps().encode(), 0o644))
        write_all_atomic(files)


def edits_site(fn: Callable[..., T]) -> Callable[..., T]:
    """Run an edit of the site (its first argument) under Site.editing()."""
    @functools.wraps(fn)
    def wrapper(site: Site, *args: Any, **kwargs: Any) -> T:
        with site.editing():
            return fn(site, *args, **kwargs)
    return wrapper


@dataclass(frozen=True)
class InitOptions:
    domain: str
    hostname: str
    host: str
    ssh_user: str = "root"
    ssh_port: int = 22
    ssh_key: str | None = None
    admin_email: str | None = None


def check_init_options(opts: InitOptions) -> InitOptions:
    """Every problem with the init flags at once, each naming its flag."""
    flags = {"--domain": opts.domain, "--hostname": opts.hostname, "--host": opts.host,
             "--ssh-user": opts.ssh_user, "--ssh-key": opts.ssh_key or "",
             "--admin-email": opts.admin_email or ""}
    controls = [f"{flag} {value!r}: {p}" for flag, value in flags.items()
                if (p := control_problem(value))]
    if controls:
        raise ConfigError("cannot create the site:", details=controls)
    domain = opts.domain.strip().lower().rstrip(".")
    hostname = opts.hostname.strip().lower().rstrip(".")
    admin = (opts.admin_email or f"postmaster@{domain}").strip().lower()
    problems = []
    if p := domain_problem(domain):
        problems.append(f"--domain {opts.domain!r}: {p}")
    if p := domain_problem(hostname):
        problems.append(f"--hostname {opts.hostname!r}: {p} (the server's full name, like "
                        f"mail.{domain or 'example.org'})")
    if p := host_problem(opts.host.strip()):
        problems.append(f"--host {opts.host!r}: {p}")
    if not 1 <= opts.ssh_port <= 65535:
        problems.append(f"--ssh-port {opts.ssh_port}: must be between 1 and 65535")
    if p := user_problem(opts.ssh_user):
        problems.append(f"--ssh-user {opts.ssh_user!r}: {p}")
    if opts.ssh_key and not Path(opts.ssh_key).expanduser().is_file():
        problems.append(f"--ssh-key {opts.ssh_key!r}: no such file; give the private key "
                        "that logs in to the host")
    if p := address_problem(admin):
        problems.append(f"--admin-email {admin!r}: {p}")
    if problems:
        raise ConfigError("cannot create the site:", details=problems)
    key = str(Path(opts.ssh_key).expanduser().resolve()) if opts.ssh_key else None
    return InitOptions(domain, hostname, opts.host.strip(), opts.ssh_user, opts.ssh_port, key,
                       admin)


def config_document(opts: InitOptions) -> str:
    return f"""\
# mailstack site: the desired state of your mail server.
# Edit it by hand or with `mailstack user|alias|domain …`, then run `mailstack deploy`.
# Every key is checked: a typo is an error, never silently ignored.

# The layout of this file. A newer mailstack brings an older site up to date itself (and
# says what it changed); an older one refuses a site it cannot read.
format: {SITE_FORMAT}

# The server's fully qualified host name. Needs an A (and AAAA) record, and the provider's
# reverse DNS (PTR) should point back to it: `mailstack dns` lists the records.
hostname: {opts.hostname}

# Where delivery problems and reports go. Can be outside the domains below.
admin_email: {opts.admin_email}

# The mail domains this server receives for. The first one is the primary domain.
# Each domain gets its own DKIM key (in secrets/dkim.yml) when it is added.
domains:
  - {opts.domain}

# Mailboxes: `mailstack user add name@{opts.domain}`. Passwords are never stored here: only
# their Argon2id hashes, encrypted in secrets/accounts.yml.
#   - address: alice@{opts.domain}
#     quota: 2G          # optional; 0 or absent = unlimited. A message that would not fit
#                        # is refused when the sender names the recipient (552 5.2.2); the
#                        # user is mailed a warning at 80 % and 95 %
users: []

# Aliases: an address that forwards to one or more addresses (local or outside).
# `mailstack alias add postmaster@{opts.domain} alice@{opts.domain}`
#   postmaster@{opts.domain}: alice@{opts.domain}
#   team@{opts.domain}: [alice@{opts.domain}, bob@{opts.domain}]
aliases: {{}}

options:
  # Largest message accepted, in bytes or with K/M/G.
  message_size_limit: 50M

  # Send outgoing mail through a relay host (smarthost) instead of directly, e.g. when the
  # provider blocks port 25 outbound. Its password goes into the secrets:
  # `mailstack relay set [smtp.example.com]:587 USERNAME`.
  relay: null

  # How long Postfix retries a message it cannot deliver yet: warn the sender after
  # delay_warning_time (0s: never), give up (bounce) after maximal_queue_lifetime; both
  # notices are DKIM-signed. s, m, h, d or w, up to 100d.
  queue:
    delay_warning_time: 4h
    maximal_queue_lifetime: 5d
    bounce_queue_lifetime: 5d

  # Mail at rest: gocryptfs (default), encfs (weaker, legacy), or none (only if the disk is
  # encrypted another way). The passphrase is in secrets/site.yml and never rests on the server.
  storage:
    encryption: gocryptfs

  # Brute-force bans (fail2ban): an address that fails to log in max_failures times within
  # find_time is refused on the mail ports (never SSH) for ban_time; ignore lists addresses
  # or networks never banned nor limited below, e.g. [192.0.2.10, 2001:db8::/32].
  bans:
    enabled: true
    max_failures: 5
    find_time: 10m
    ban_time: 1h
    ignore: []

  # The host's SSH server: harden allows logins by key only (mailstack's own always use
  # one) and no X11 forwarding; false leaves sshd's settings as they are.
  ssh:
    harden: true

  # What one address may do on the SMTP ports (Postfix's anvil): connections open at once,
  # new connections and AUTH commands per minute. Past a limit it gets 421 and retries.
  limits:
    connections: 20
    connections_per_minute: 60
    auth_per_minute: 30

  # What this server sends over SMTP to one destination (a receiving domain; with a relay,
  # the relay, which then takes all outbound mail), for a relay's or receiver's quota:
  # deliveries at once, and a pause between two deliveries (e.g. 12s for 300 an hour; they
  # then go one at a time). 0s: no pause.
  outbound:
    concurrency: 20
    rate_delay: 0s

  # The spam filter (rspamd). At reject_score a message is refused (5xx), at junk_score it
  # goes to Junk, at greylist_score (null: never) the sender must retry after
  # greylist_delay. One authenticated user may send user_hourly_limit messages an hour.
  spam:
    reject_score: 15
    junk_score: 6
    greylist_score: 4
    greylist_delay: 5m
    user_hourly_limit: 200

  # postscreen on port 25: a client whose DNS lists add up to threshold is refused before
  # it reaches the SMTP server (a negative weight is an allowlist); allow: addresses or
  # networks never checked. Each list: {{zone, weight, answers}} (answers: which replies
  # count, e.g. 127.0.0.[2..11]). The default lists are Spamhaus ZEN, SpamCop and DNSWL.
  blocklists:
    threshold: 3
    allow: []

  # The host's own DNS resolver (unbound): it resolves from the root servers and validates
  # DNSSEC, as DNS blocklists require (they refuse the big public resolvers). forward_to
  # sends every query to these resolvers instead, e.g. [192.0.2.53]; dnssec: false only for
  # one that strips DNSSEC data (no validation from the root's key). trust_anchors: DS or
  # DNSKEY records of signed zones the root does not vouch for (a private zone), e.g.
  # ["lab.example. DS 12345 13 2 <64 hex digits>"]: they are validated (DANE counts there)
  # with dnssec true and false alike; with dnssec false nothing else is.
  resolver:
    forward_to: []
    dnssec: true
    trust_anchors: []

  # Virus scanning: none, or clamav (ClamAV's clamd, asked by rspamd about every message:
  # a virus is refused at SMTP time; while clamd cannot answer, senders get 4xx and retry).
  # clamd keeps its signatures in memory (about 1-1.3 GiB): deploy refuses clamav on a host
  # with less than 1.5 GiB available. freshclam fetches the signatures from
  # database.clamav.net (HTTPS).
  antivirus: none

  # POP3 for mail clients that download and delete (IMAP on 993 is always on): true adds
  # POP3 over TLS on port 995 (never plain POP3 on 110), opened in the firewall.
  pop3: false

  # Webmail, calendars and contacts (CalDAV/CardDAV) and Exchange ActiveSync (push on
  # phones' own mail apps): true adds SOGo on https://HOSTNAME/SOGo/ with the same
  # accounts. About 65 MiB more memory; its calendars are not on the encrypted store yet
  # (README: Webmail, calendars, contacts, ActiveSync).
  groupware: false

  # The certificate of SMTP, IMAP and the web names (MTA-STS policy, client autoconfig).
  # acme: from Let's Encrypt (or acme_directory) for the host name and each domain's
  # mta-sts., autoconfig. and autodiscover. names (publish `mailstack dns` first), renewed
  # by a timer with the same key; a self-signed one is served until it is issued.
  # self-signed: clients warn. files: your own (`mailstack tls import CERT KEY`).
  tls:
    certificate: acme
    acme_directory: https://acme-v02.api.letsencrypt.org/directory
    acme_email: null

  # `mailstack dns push` publishes the records `mailstack dns` prints by dynamic update
  # (RFC 2136: BIND, Knot, PowerDNS), signed with a TSIG key whose secret is in the vault:
  # `mailstack dns key set NAME --algorithm hmac-sha256` reads it from standard input and
  # fills this in ({{key_name, algorithm, server, zones}}; server: default each zone's
  # primary from its SOA; zones: default as DNS says). null: publish them yourself.
  dns_update: null

  # `mailstack status` (exit 0 ok, 1 warning, 2 critical, for monitoring): the certificate's
  # days left, the age of the oldest queued message, the store's disk and inode use, the
  # age of the last backup, each {{warning, critical}}. prometheus: true installs
  # prometheus-node-exporter (listening on 127.0.0.1:9100 only) and writes the same facts
  # for it every minute.
  monitoring:
    prometheus: false
    certificate_days: {{warning: 14, critical: 3}}
    queue_age: {{warning: 1h, critical: 1d}}
    disk_percent: {{warning: 85, critical: 95}}
    backup_age: {{warning: 26h, critical: 3d}}
  # Encrypted backups with borg over SSH (README "Backups and restore"): target
  # user@host[:port] (any machine with borg), path: the repository there; retention
  # ({{keep_daily: 7, keep_weekly: 4, keep_monthly: 6}}), schedule and check_schedule
  # (systemd calendar times). `mailstack backup init` then makes the key and the
  # passphrase (into the vault). null: no backups.
  backup: null
"""


def init_site(
    target: Path, opts: InitOptions, *, vault_password_file: Path | None = None
) -> Path:
    """Create a complete site directory at ``target``, or nothing at all.

    Everything is written into a temporary sibling directory that is renamed into place at
    the end, so an error (or Ctrl-C) never leaves half a site behind.
    """
    opts = check_init_options(opts)
    target = Path(target)
    if (target / CONFIG_FILE).exists():
        raise MailstackError(
            f"{target} is already a mailstack site; refusing to touch it. Use the day-2 "
            "commands (`mailstack user add …`) to change it, or choose another directory"
        )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise MailstackError(
            f"{target} exists and is not empty; refusing to write a site into it. Choose a "
            "new directory name"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.init-", dir=target.parent))
    try:
        _write_site(staging, opts, vault_password_file)
        if target.exists():
            target.rmdir()
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _write_site(root: Path, opts: InitOptions, vault_password_file: Path | None) -> None:
    root.chmod(0o755)
    if vault_password_file is None and not _env_vault_file():
        write_atomic(root / VAULT_PASSWORD_FILE, new_password() + "\n", mode=0o600)
    vault = Vault(password_file(root, vault_password_file))
    write_atomic(root / CONFIG_FILE, config_document(opts))
    write_atomic(root / ".gitignore", GITIGNORE)
    write_inventory(root, opts.hostname, opts.host, opts.ssh_user, opts.ssh_port, opts.ssh_key)
    (root / SECRETS_DIR).mkdir(mode=0o700)
    secrets = Secrets(vault=vault, root=root)
    secrets.ensure([opts.domain])
    secrets.save()
    # Prove the model accepts what we just wrote (a bug here must not ship a broken site).
    ConfigDocument.load(root / CONFIG_FILE)
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q", str(root)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _env_vault_file() -> bool:
    import os

    from mailstack.site.vault import ENV_VAULT_PASSWORD_FILE

    return bool(os.environ.get(ENV_VAULT_PASSWORD_FILE))
