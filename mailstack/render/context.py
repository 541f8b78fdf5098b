"""The render context: every decision about the files, made in Python from the site, so
that templates only place values (docs/render-context.md is the contract), and the facts the
roles share with those files (host_vars: build/<host>/mailstack_vars.yml).

The paths, the mail user, the sockets are defined here and nowhere else.
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import quote

from mailstack.errors import ConfigError
from mailstack.host import acme, backup_tool, fts_decoder, sealer, storage_tool
from mailstack.site.config import RESERVED_LOCAL_PART, SiteConfig, duration_seconds
from mailstack.site.inventory import InventoryHost
from mailstack.site.tls import CERTIFICATE as TLS_CERTIFICATE
from mailstack.site.tls import site_key

MANAGED_HEADER = (
    "Managed by mailstack: edit mailstack.yml and run `mailstack deploy`; "
    "local changes are overwritten."
)
# Mozilla "intermediate" (TLS 1.2 ciphers; TLS 1.3 suites are OpenSSL's defaults).
MOZILLA_INTERMEDIATE_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305",
])
# A mailbox that deploy creates and `mailstack verify` uses for its round trip. It has no
# password but for the run of `mailstack verify`, which sets a new one-time password over
# SSH and locks it again (storage_tool.VERIFY_LOCKED). Reserved: users cannot take it.
VERIFY_LOCAL_PART = RESERVED_LOCAL_PART
# Facts that templates, roles and the host tool share. They are defined here and nowhere
# else: templates get them in the render context, roles from the rendered
# mailstack_vars.yml (see host_vars), the host tool from its rendered storage.json.
VMAIL = {"user": "vmail", "group": "vmail", "uid": 5000, "gid": 5000, "root": "/var/mail/vhosts"}
# The encrypted store's FUSE daemon (gocryptfs or EncFS) runs as its own user, which no other
# process runs as: a process may read the memory of any other process of its uid, and the
# daemon's memory holds the store's key. It presents every file as VMAIL's.
FUSE_USER = {"user": "mailcrypt", "group": "mailcrypt", "uid": 5001, "gid": 5001}
TLS_DIR = "/etc/mailstack/tls"
# The web server (nginx): port 80 answers ACME HTTP-01 challenges and redirects the rest to
# HTTPS; 443 serves each domain's MTA-STS policy with the site's certificate.
WEB = {"service": "nginx", "conf_file": "/etc/nginx/conf.d/mailstack.conf",
       "root": "/var/www/mailstack", "http_port": 80, "https_port": 443,
       # Debian's example site listens on port 80 as the default server: replaced by ours.
       "stock_site": "/etc/nginx/sites-enabled/default",
       # The documents it serves, below root (the web role places them).
       "documents": ["mta-sts.txt", "autoconfig/mail/config-v1.1.xml",
                     "autodiscover/autodiscover.xml"],
       # With the groupware, autodiscover answers by what the request's body asks for; nginx
       # reads a body only to pass it on, so it passes it to a server of its own on loopback
       # with the schema asked for in a header (templates/etc/nginx/conf.d/mailstack.conf.j2).
       "autodiscover_port": 20080,
       # The phones' (Exchange ActiveSync) answer, with the groupware only.
       "mobilesync_document": "autodiscover/mobilesync.xml"}
# The names each mail domain serves over HTTPS (the certificate covers them with the host
# name): the MTA-STS policy host, Thunderbird's autoconfig and Outlook's autodiscover.
WEB_NAME_PREFIXES = ("mta-sts", "autoconfig", "autodiscover")
# ACME (options.tls.certificate: acme): uacme, run by mailstack-acme at deploy and by a
# timer; its account key and state in confdir, the HTTP-01 answers below webroot.
ACME = {"confdir": "/etc/mailstack/acme", "webroot": "/var/lib/mailstack/acme",
        "renew_days": 30, "service_unit": "mailstack-acme.service",
        "timer_unit": "mailstack-acme.timer"}
# Full-text search: Dovecot's FTS with Xapian (dovecot-fts-xapian from APT_BACKPORTS). Its
# index sits in each mailbox's INDEX directory (~/Maildir/xapian-indexes), on the store like
# the mail itself.
FTS = {
    # Search words of 3 characters or more (the plugin's default).
    "partial": 3,
    # The plugin writes its batch to disk as soon as the host has less memory available
    # than this (its default, written down): indexing never pushes the services into swap.
    "lowmemory_mib": 300,
    # The indexer's address-space cap: Xapian's batch, ICU's tables and the plugin's threads,
    # with room (its README asks for 2G; Dovecot's default 256M is too little).
    "indexer_vsz_limit": "1G",
    "index_dir": "xapian-indexes",
    # `doveadm fts optimize -A` every night: merges each index's segments and drops what
    # expunged mail left in it.
    "optimize_service": "mailstack-fts-optimize.service",
    "optimize_timer": "mailstack-fts-optimize.timer",
    # Its package, from APT_BACKPORTS (the dovecot role installs it).
    "package": "dovecot-fts-xapian",
    # Attachments' text (PDF, office documents): mailstack-fts-decoder (a host tool,
    # mailstack/host/fts_decoder.py) behind Dovecot's script service of the same name,
    # running as a user of its own (what it reads is what strangers mail) that can read no
    # mail; its PDF reader, pdftotext, is Debian's poppler-utils (the dovecot role's).
    "decoder": {"tool": fts_decoder.PATH, "service": "mailstack-fts-decoder",
                "user": "mailstack-decoder", "vsz_limit": "512M"},
}
# Debian packages apt takes from bookworm-backports, pinned one by one: every other package
# stays bookworm's. dovecot-fts-xapian: bookworm's 1.5.5 indexed 12 messages/s into an
# index 7 times the size of the mail; the backport (1.9.1) 168/s into 0.65 times on the
# encrypted store (bench/search.py, README "Full-text search").
APT_BACKPORTS = {"suite": "bookworm-backports", "uri": "http://deb.debian.org/debian",
                 "packages": [FTS["package"]]}
# Push: IMAP IDLE (README "Push"). Dovecot learns of new mail through inotify on the
# mailbox's files, which fires on the encrypted store's FUSE mount too (LMTP writes through
# the same kernel: tests/e2e/test_push.py measures it).
IMAP_IDLE = {
    # A connection in IDLE this long moves from its own imap process into the one
    # imap-hibernate process, which holds every idle client for a fraction of the memory.
    "hibernate_timeout": "30s",
    # "* OK Still here" to an idle client this often (Dovecot's default, written down):
    # NAT routers and mobile networks drop connections that stay silent much longer.
    "notify_interval": "2 mins",
    # Connections per user and client address (Dovecot's default is 10): a household or an
    # office behind one NAT address, each device with a connection per watched folder.
    "max_userip_connections": 50,
    # imap-login: each process serves many connections (TLS for all of them), instead of
    # one process per connection (1.4 MiB each, and no more than 100 of them).
    "login_clients": 1000,
    "login_processes": 2,
    # Address space for a thousand TLS sessions (Dovecot's advice for this mode).
    "login_vsz_limit": "1G",
}
# The kernel's inotify limits (etc/sysctl.d): every IDLE client, hibernated or not, holds
# an inotify instance of the mail user's (one uid for all mailboxes), and the kernel's
# default of 128 per user would send the 129th into 30-second polling. Watches: the
# kernel's ceiling for its own default (it never lowers it; memory is taken only by
# watches in use, about 3 per IDLE client).
INOTIFY_LIMITS = {"file": "/etc/sysctl.d/60-mailstack-inotify.conf",
                  "max_user_instances": 8192, "max_user_watches": 1048576}
# Outbound MTA-STS (RFC 8461): postfix-mta-sts-resolver answers Postfix's policy lookups
# (socketmap) from the policies it fetches and caches.
MTA_STS_RESOLVER = {"service": "postfix-mta-sts-resolver", "conf_file": "/etc/mta-sts-daemon.yml",
                    "address": "127.0.0.1", "port": 8461, "cache_file": "/var/lib/mta-sts/cache.db"}
# MTA-STS (RFC 8461): how long senders keep the policy. enforce: a week (the RFC suggests
# weeks); testing: a day, so the switch to enforce reaches them soon.
MTA_STS_MAX_AGE = {"enforce": 604800, "testing": 86400}
DKIM_KEYS_DIR = "/etc/opendkim/keys"
DB_NAME = "mailstack"
POSTFIX_QUEUE_DIR = "/var/spool/postfix"
LMTP_SOCKET = "private/dovecot-lmtp"  # relative to Postfix's queue directory (its chroot)
AUTH_SOCKET = "private/auth"
SEALER_UNIT = "mailstack-sealer"
SEALER_QUEUE_UNIT = "mailstack-seal-queue.service"
# The ports the mail services listen on, open in the firewall with the host's SSH port.
MAIL_PORTS = {"smtp": 25, "submissions": 465, "submission": 587, "imaps": 993, "sieve": 4190}
# POP3 over TLS, only with options.pop3 (plain POP3 on 110 is never offered).
POP3S_PORT = 995
# The clients trusted as "this host" (Postfix's mynetworks, rspamd's local_addrs): loopback
# only; everyone else authenticates or is scanned as a stranger.
MYNETWORKS = ["127.0.0.0/8", "::1/128"]
# The host's own resolver (unbound), which Postfix and rspamd ask.
RESOLVER_ADDRESS = "127.0.0.1"
# The milters' sockets, relative to Postfix's queue directory (smtpd and cleanup run
# chrooted there): unix sockets, each in a directory of its own that only Postfix and its
# milter may enter. Not loopback TCP: there each reply of a milter that writes twice waited
# for a delayed ACK (Nagle), 50 to 90 ms per message, and any local process could have had
# OpenDKIM sign a message.
MILTER_SOCKETS = {"rspamd": "rspamd/milter.sock", "opendkim": "opendkim/opendkim.sock"}
# rspamd: the milter Postfix talks to (the proxy worker, scanning itself); the controller's
# unix socket, which rspamd trusts without a password, so only its group (rspamd's own,
# plus Dovecot's mail processes, which learn through it) may use it; the web interface on
# loopback, behind the vault's password, reached through an SSH tunnel. Redis keeps the
# statistics, greylisting and rate-limit buckets.
RSPAMD = {"milter_socket": f"{POSTFIX_QUEUE_DIR}/{MILTER_SOCKETS['rspamd']}",
          "controller_socket": "/run/rspamd/controller.sock",
          "web_ui": "127.0.0.1:11334", "user": "_rspamd", "group": "_rspamd",
          "redis": "127.0.0.1:6379"}
# ClamAV (options.antivirus: clamav): clamd on a local socket, which systemd's socket unit
# holds (clamd starts on the first connection), asked by rspamd's antivirus module. Its
# signature databases live in database_dir; it needs min_available_mib of RAM (the full
# database loaded, reloads one at a time). Every file or unit named here is rendered or
# managed from these values.
CLAMAV = {
    "socket": "/run/clamav/clamd.ctl",
    "database_dir": "/var/lib/clamav",
    "user": "clamav",
    "daemon_unit": "clamav-daemon.service",
    "socket_unit": "clamav-daemon.socket",
    "updater_unit": "clamav-freshclam.service",
    "min_available_mib": 1536,
    # rspamd: the symbol a virus adds, and the one a failed scan adds (turned into 4xx).
    "symbol": "CLAM_VIRUS",
    "fail_symbol": "CLAM_VIRUS_FAIL",
}
# rspamd's settings that exist only with a virus scanner (removed when it is turned off).
RSPAMD_ANTIVIRUS_FILES = ["/etc/rspamd/local.d/antivirus.conf",
                          "/etc/rspamd/local.d/force_actions.conf"]
# Global Sieve scripts (Junk filing, learning) and the programs they may pipe mail to.
SIEVE_DIR = "/etc/dovecot/sieve"
SIEVE_PIPE_DIR = "/etc/dovecot/sieve-pipe"
# Mailbox quotas (users[].quota): Dovecot's quota-status service answers Postfix's policy
# queries at RCPT on policy_socket (relative to Postfix's queue directory; the sealer answers
# there while the store is locked), for the mailboxes that have a quota; a mailbox crossing
# one of the warnings (percent of its quota, highest first: Dovecot runs only the first that
# applies) gets a mail from its domain's postmaster, sent by warning_script.
QUOTA = {"policy_socket": sealer.QUOTA_POLICY_SOCKET, "policy_timeout": "10s",
         "warnings": [95, 80], "warning_script": "/etc/dovecot/quota-warning.sh",
         # Postfix's restriction class for mailboxes with a quota (the policy query).
         "restriction_class": "mailbox_quota"}
# With a rate delay, deliveries to a destination go one at a time, and by Postfix's default
# one failed connection suspends the whole destination; postconf(5) advises 10 or more.
RATE_DELAY_FAILED_COHORT_LIMIT = 10
# The systemd unit of the Postfix instance (Debian's postfix.service only starts it): its
# journal is where fail2ban reads Postfix's failed logins.
POSTFIX_INSTANCE_UNIT = "postfix@-"
# fail2ban's repeat-offender jail: banned that often within a day, banned for a week.
RECIDIVE = {"max_failures": 5, "find_time": "1d", "ban_time": "1w"}
# options.monitoring.prometheus: Debian's prometheus-node-exporter, listening on loopback
# only (scraped through an SSH tunnel, or by a Prometheus on the host: port 9100 never
# faces the internet), its textfile collector reading the file `mailstack-storage metrics`
# writes every minute (started by metrics_timer).
PROMETHEUS = {"service": "prometheus-node-exporter",
              "defaults_file": "/etc/default/prometheus-node-exporter",
              "listen": "127.0.0.1:9100",
              "textfile_dir": "/var/lib/prometheus/node-exporter",
              "textfile": "/var/lib/prometheus/node-exporter/mailstack.prom",
              "metrics_service": "mailstack-metrics.service",
              "metrics_timer": "mailstack-metrics.timer"}
# Groupware (options.groupware): SOGo's sogod on loopback behind nginx, its own database
# and account, memcached on a unix socket only the sogo group may use. Few workers: each
# costs memory, and an ActiveSync device holds one for the length of its Ping.
SOGO = {"service": "sogo", "user": "sogo", "group": "sogo", "conf_file": "/etc/sogo/sogo.conf",
        "defaults_file": "/etc/default/sogo",
        # Where Debian's unit has sogod write its log (-WOLogFile): fail2ban reads it.
        "log_file": "/var/log/sogo/sogo.log",
        "port": 20000, "db_name": "sogo", "db_user": "mailstack_sogo",
        # sogod's workers: 3 for the webmail and DAV, and 2 per mailbox (a phone and a
        # tablet), because an ActiveSync device holds one for the length of its Ping; at
        # most 11 (each idle worker ~10 MiB: bench/memory.py --groupware --workers 11).
        "workers_base": 3, "workers_per_mailbox": 2, "workers_max": 11,
        # The accounts SOGo may read: a view of the enabled mailboxes (see schema.sql).
        "users_view": "sogo_users",
        # ActiveSync Ping/Sync: held open up to 9 minutes (below nginx's read timeout), the
        # mailbox looked at every 10 s meanwhile (SOGo's push is that poll: new mail reaches
        # a phone within about that); the watchdog lets such a request live.
        "ping_seconds": 540, "sync_poll_seconds": 10, "watchdog_minutes": 10, "sync_window": 100,
        "memcached": {"service": "memcached", "conf_file": "/etc/memcached.conf",
                      "socket": "/run/memcached/memcached.sock", "group": "memcache",
                      "max_mib": 32},
        "paths": {"webmail": "/SOGo", "activesync": "/Microsoft-Server-ActiveSync"},
        # Its database (profiles, calendars, contacts, ActiveSync state) has a MariaDB server
        # of its own whose data lives inside the encrypted store, so calendars and contacts
        # are encrypted at rest like mail and unreadable while it is locked. It runs as the
        # mail user (the store shows every file as that user's), bound to the store's mount
        # like Dovecot, on a unix socket only. A backup dumps it into the store first (a
        # running server's files copied as they change are no backup); a restore loads that
        # dump into a new data directory.
        "db": {"service": "mailstack-groupware-db",
               "unit_file": "/etc/systemd/system/mailstack-groupware-db.service",
               # Beside the main server's settings, which do not include them; not in
               # /etc/mailstack, which only root may enter.
               "conf_file": "/etc/mysql/mailstack-groupware-db.cnf",
               "init_file": "/etc/mysql/mailstack-groupware-db.sql",
               # /run/<runtime_directory>, made by systemd for the unit.
               "runtime_directory": "mailstack-groupware-db",
               "socket": "/run/mailstack-groupware-db/mariadbd.sock",
               "pid_file": "/run/mailstack-groupware-db/mariadbd.pid",
               "dir": f"{VMAIL['root']}/.groupware",
               "datadir": f"{VMAIL['root']}/.groupware/db",
               "dump": f"{VMAIL['root']}/.groupware/sogo.sql",
               # Written by a restore: load the dump at the next start.
               "load_marker": f"{VMAIL['root']}/.groupware/load-dump",
               # Beside the store in each archive: whether the run could dump (the store
               # was unlocked) or the data directory at rest is the one to take.
               "backup_note": "/var/lib/mailstack/backup/groupware-db.json",
               "buffer_pool_mib": 16, "max_connections": 40}}
# Services that must never run without the mounted store, and those `mailstack status` shows.
STORE_BOUND_SERVICES = ["dovecot"]
STATUS_SERVICES = ["postfix", "dovecot", "opendkim", "mariadb", "rspamd", "redis-server",
                   "unbound"]


# Backups (options.backup): borgbackup over SSH to the target, run by mailstack-backup (the
# host tool, mailstack/host/backup_tool.py) from a timer and from `mailstack backup now`.
# `mailstack status` reads the state file a successful run writes: {"finished": unix time,
# "archive": its name, "ok": true, ...}.
BACKUP_STATE_FILE = "/var/lib/mailstack/backup/last.json"
BACKUP = {
    "tool": backup_tool.PATH,
    "conf_file": backup_tool.CONF,
    # The secrets' directory (root only): the repository's passphrase, the SSH key.
    "dir": "/etc/mailstack/backup",
    "passphrase_file": "/etc/mailstack/backup/passphrase",
    "key_file": "/etc/mailstack/backup/id_ed25519",
    "known_hosts": "/etc/mailstack/backup/known_hosts",
    "state_file": BACKUP_STATE_FILE,
    # borg's cache and its per-repository security data.
    "base_dir": "/var/lib/mailstack/backup/borg",
    # A restore extracts here first (each chunk checked) before anything is replaced.
    "staging_dir": "/var/lib/mailstack/restore",
    "service": "mailstack-backup.service",
    "timer": "mailstack-backup.timer",
    "check_service": "mailstack-backup-check.service",
    "check_timer": "mailstack-backup-check.timer",
    # zstd, where it helps: the store is ciphertext, which does not compress, and borg's
    # auto mode skips chunks a quick lz4 trial finds incompressible.
    "compression": "auto,zstd,3",
    # rspamd's learned data (Bayes statistics, fuzzy hashes, reputation) live in Redis,
    # which writes them to this file (SAVE, just before each run).
    "redis_dump": "/var/lib/redis/dump.rdb",
}


def systemd_mount_unit(path: str) -> str:
    """`systemd-escape --path --suffix=mount` for the plain paths mailstack uses."""
    escaped = "".join(c if c.isalnum() or c in "/_." else f"\\x{ord(c):02x}"
                      for c in path.strip("/"))
    return escaped.replace("/", "-") + ".mount"


def postfix_network(network: str) -> str:
    """Postfix writes IPv6 networks with the address in brackets: [::1]/128."""
    address, _, length = network.partition("/")
    return f"[{address}]/{length}" if ":" in address else network


def antivirus_context(cfg: SiteConfig) -> dict[str, Any]:
    """The virus scanner's settings. scan_limit: the largest message clamd takes whole
    (rspamd sends it in one stream): the message size limit plus room for the headers
    Postfix and rspamd add, so that no message Postfix accepts is too large to scan."""
    enabled = cfg.options.antivirus == "clamav"
    return {
        "engine": cfg.options.antivirus,
        "enabled": enabled,
        **CLAMAV,
        "scan_limit": cfg.options.message_size_limit + 1024**2,
        "rspamd_files": list(RSPAMD_ANTIVIRUS_FILES),
    }


def web_names(cfg: SiteConfig) -> list[str]:
    """The names the site serves over HTTPS besides the host name, domain by domain."""
    return [f"{prefix}.{d}" for d in sorted(cfg.domains) for prefix in WEB_NAME_PREFIXES]


def mta_sts_policy(cfg: SiteConfig) -> dict[str, Any]:
    """The MTA-STS policy every domain serves (they share the MX) and its id, which changes
    when the policy does. enforce only with a certificate senders trust: a sender never
    fetches a policy over an untrusted one anyway, and testing asks nothing of them."""
    mode = "testing" if cfg.options.tls.certificate == "self-signed" else "enforce"
    mx = [cfg.hostname]
    text = "".join(f"{k}: {v}\n" for k, v in (
        ("version", "STSv1"), ("mode", mode), *(("mx", m) for m in mx),
        ("max_age", MTA_STS_MAX_AGE[mode])))
    return {"mode": mode, "mx": mx, "text": text,
            "id": hashlib.sha256(text.encode()).hexdigest()[:20]}


def client_settings(cfg: SiteConfig) -> dict[str, Any]:
    """What a mail client needs (Thunderbird's autoconfig, Outlook's autodiscover, Apple's
    profile): IMAP over TLS on 993, submission over TLS on 465 (RFC 8314 prefers it to
    STARTTLS on 587, offered second), the full address as the login."""
    return {
        "hostname": cfg.hostname,
        "domains": sorted(cfg.domains),
        "primary_domain": cfg.primary_domain,
        "imap": {"port": MAIL_PORTS["imaps"], "socket": "SSL"},
        "smtp": [{"port": MAIL_PORTS["submissions"], "socket": "SSL"},
                 {"port": MAIL_PORTS["submission"], "socket": "STARTTLS"}],
    }


def tls_context(cfg: SiteConfig, secrets: Any) -> dict[str, Any]:
    """The certificate: its files, the names it covers, where it comes from."""
    tls = cfg.options.tls
    key = site_key(secrets)
    chain = secrets.site.get(TLS_CERTIFICATE)
    if tls.certificate == "files" and not chain:
        raise ConfigError(
            "options.tls.certificate is files but the vault has no certificate: import it "
            "with `mailstack tls import FULLCHAIN.pem KEY.pem`")
    acme_conf = {**ACME, "enabled": tls.certificate == "acme", "directory": tls.acme_directory,
                 "email": tls.acme_email or cfg.admin_email,
                 "tool": acme.PATH, "conf_file": acme.CONF,
                 # Reloaded (when running) once a new certificate is in place.
                 "reload_units": [f"{POSTFIX_INSTANCE_UNIT}.service", "dovecot.service",
                                  f"{WEB['service']}.service"]}
    return {
        "certificate": tls.certificate,
        "cert_file": f"{TLS_DIR}/fullchain.pem",
        "key_file": f"{TLS_DIR}/privkey.pem",
        "key": key,
        # options.tls.certificate files: the imported chain, placed as cert_file.
        "chain": chain if tls.certificate == "files" else None,
        "names": [cfg.hostname, *web_names(cfg)],
        "acme": acme_conf,
        "protocols_postfix": "!SSLv2, !SSLv3, !TLSv1, !TLSv1.1",
        "protocols_nginx": "TLSv1.2 TLSv1.3",
        "min_protocol_dovecot": "TLSv1.2",
        "ciphers": MOZILLA_INTERMEDIATE_CIPHERS,
    }


def outbound_context(cfg: SiteConfig) -> dict[str, Any]:
    """options.outbound as the smtp transport's per-destination limits. A rate delay makes
    deliveries one at a time, so a single failed connection would suspend the destination:
    the failed-cohort limit is raised with it, and only then (Postfix's default otherwise)."""
    outbound = cfg.options.outbound
    delayed = duration_seconds(outbound.rate_delay) > 0
    return {
        "concurrency": outbound.concurrency,
        "rate_delay": outbound.rate_delay if delayed else "0s",
        "failed_cohort_limit": RATE_DELAY_FAILED_COHORT_LIMIT if delayed else None,
    }


def mail_ports(cfg: SiteConfig) -> dict[str, int]:
    """The ports the mail services listen on: MAIL_PORTS, and POP3S with options.pop3."""
    return {**MAIL_PORTS, **({"pop3s": POP3S_PORT} if cfg.options.pop3 else {})}


def groupware_db_facts(cfg: SiteConfig) -> dict[str, Any] | None:
    """What the host tools need of the groupware's database (None without the groupware):
    the backup dumps it, a restore loads the dump."""
    if not cfg.options.groupware:
        return None
    db = SOGO["db"]
    return {"db_name": SOGO["db_name"], **{k: db[k] for k in (
        "service", "socket", "datadir", "dump", "load_marker", "backup_note")}}


def backup_context(cfg: SiteConfig, secrets: Any) -> dict[str, Any]:
    """options.backup: what the host tool and the timers need (the secrets from the vault,
    where `mailstack backup init` made them). What is backed up: the store as the host has
    it at rest (the cipher directory; the clear directory only without encryption), the
    mail sealed while it is locked, rspamd's learned data."""
    backup = cfg.options.backup
    if backup is None:
        return {"enabled": False, **BACKUP}
    from mailstack.site.backup import backup_secrets, repository_url

    vault = backup_secrets(secrets.site)
    encrypted = cfg.options.storage.encryption != "none"
    store = VMAIL["root"] + ".crypt" if encrypted else VMAIL["root"]
    return {
        "enabled": True,
        **BACKUP,
        "repository": repository_url(backup),
        "target_host": backup.host,
        "target_port": backup.port,
        # Archives are named after the site's host name (not the machine's): a restored
        # host carries on the same series, and prune keeps to it.
        "prefix": cfg.hostname,
        "paths": [store, sealer.SEALED_DIR, BACKUP["redis_dump"],
                  *([SOGO["db"]["backup_note"]] if cfg.options.groupware else [])],
        "groupware_db": groupware_db_facts(cfg),
        "store": store,
        "retention": backup.retention.model_dump(),
        "schedule": backup.schedule,
        "check_schedule": backup.check_schedule,
        "passphrase": vault["passphrase"],
        "ssh_key": vault["ssh_key"],
        "known_host_lines": list(vault["known_hosts"]),
    }


def verify_address(cfg: SiteConfig) -> str:
    return f"{VERIFY_LOCAL_PART}@{cfg.primary_domain}"


def groupware_context(cfg: SiteConfig, site_secrets: dict[str, Any]) -> dict[str, Any]:
    """SOGo's settings (options.groupware): its database URLs carry its account's password,
    URL-encoded; mail, submission and Sieve on loopback (TLS, the certificate names the host,
    not 127.0.0.1: SOGo's allowInsecureLocalhost accepts it there only)."""
    workers = min(SOGO["workers_base"] + SOGO["workers_per_mailbox"] * len(cfg.users),
                  SOGO["workers_max"])
    facts = {"enabled": cfg.options.groupware, **SOGO, "workers": workers,
             "db": dict(SOGO["db"]), "memcached": dict(SOGO["memcached"]),
             "paths": dict(SOGO["paths"])}
    if not cfg.options.groupware:
        return facts
    password = (site_secrets.get("mariadb") or {}).get("sogo_password")
    if not isinstance(password, str) or not password:
        raise ConfigError(
            "options.groupware is on but secrets/site.yml has no mariadb.sogo_password (the "
            "site is older than options.groupware): run `mailstack groupware secret` to add it")
    login = f"{SOGO['db_user']}:{quote(password, safe='')}"
    socket = quote(SOGO["db"]["socket"], safe="")  # SOPE takes a host that starts with / as one
    verify = "tlsVerifyMode=allowInsecureLocalhost"
    return {
        **facts,
        "db_password": password,
        "db_url": f"mysql://{login}@{socket}/{SOGO['db_name']}",
        "users_url": f"mysql://{login}@127.0.0.1:3306/{DB_NAME}/{SOGO['users_view']}",
        "imap_url": f"imaps://127.0.0.1:{MAIL_PORTS['imaps']}/?{verify}",
        "smtp_url": f"smtp://127.0.0.1:{MAIL_PORTS['submission']}/?tls=YES&{verify}",
        "sieve_url": f"sieve://127.0.0.1:{MAIL_PORTS['sieve']}/?tls=YES&{verify}",
        "mail_domain": cfg.primary_domain,
    }


def build_context(cfg: SiteConfig, secrets: Any, host: InventoryHost) -> dict[str, Any]:
    """The render context (docs/render-context.md is its contract)."""
    site_secrets = secrets.site
    bans = cfg.options.bans
    spam = cfg.options.spam
    resolver = cfg.options.resolver
    blocklists = cfg.options.blocklists
    relay = None
    if cfg.options.relay:
        password = site_secrets.get("relay_password")
        if not password:
            raise ConfigError(
                "options.relay is set but secrets/site.yml has no relay password: run "
                "`mailstack relay set HOST USERNAME` to store it"
            )
        relay = {"host": cfg.options.relay.host, "username": cfg.options.relay.username,
                 "password": password}
    missing_hash = [u.address for u in cfg.users if u.address not in secrets.accounts]
    if missing_hash:
        raise ConfigError(
            "users without a password hash in secrets/accounts.yml:",
            details=[f"{a}: set one with `mailstack user passwd {a}`" for a in missing_hash],
        )
    domains = sorted(cfg.domains)
    queue = cfg.options.queue
    mailboxes = [
        {"address": u.address, "domain": u.address.split("@")[1],
         "local_part": u.address.split("@")[0],
         "password_hash": secrets.accounts[u.address], "quota_bytes": u.quota}
        for u in cfg.users
    ]
    mailboxes.append({
        "address": verify_address(cfg), "domain": cfg.primary_domain,
        "local_part": VERIFY_LOCAL_PART, "password_hash": storage_tool.VERIFY_LOCKED,
        "quota_bytes": 10 * 1024**2,
    })
    antivirus = antivirus_context(cfg)
    groupware = groupware_context(cfg, site_secrets)
    ports = mail_ports(cfg)
    status_services = [*STATUS_SERVICES,
                       *([CLAMAV["daemon_unit"].removesuffix(".service")] if antivirus["enabled"] else []),
                       *([SOGO["db"]["service"], SOGO["service"], SOGO["memcached"]["service"]]
                         if groupware["enabled"] else [])]
    # SOGo shows mail (from Dovecot) and keeps calendars: while the store is locked it must
    # not run either (its pages would show an empty mailbox, its devices would sync one).
    bound_services = [*STORE_BOUND_SERVICES,
                      *([SOGO["db"]["service"], SOGO["service"]] if groupware["enabled"] else [])]
    return {
        "managed_header": MANAGED_HEADER,
        "host": {"name": host.name, "hostname": cfg.hostname, "ssh_port": host.ssh_port,
                 "ssh_harden": cfg.options.ssh.harden},
        "ports": ports,
        "pop3": {"enabled": cfg.options.pop3},
        # The port this host is reached on for SSH is always open: a ruleset without it would
        # lock out every later deploy and `mailstack unlock`.
        "firewall": {"tcp_ports": sorted({host.ssh_port, *ports.values(),
                                          WEB["http_port"], WEB["https_port"]})},
        # Bans close the mail ports only, never SSH: deploys and `mailstack unlock` come
        # over SSH, and its key-only logins are not what fail2ban is for here.
        "bans": {
            "enabled": bans.enabled,
            "max_failures": bans.max_failures,
            "find_time": bans.find_time,
            "ban_time": bans.ban_time,
            "ignore": ["127.0.0.1/8", "::1/128", *bans.ignore],
            "ports": sorted(ports.values()),
            "postfix_unit": f"{POSTFIX_INSTANCE_UNIT}.service",
            "recidive": dict(RECIDIVE),
        },
        # Postfix's anvil, on every SMTP port; the ban list's addresses are exempt too.
        "limits": {
            "connections": cfg.options.limits.connections,
            "connections_per_minute": cfg.options.limits.connections_per_minute,
            "auth_per_minute": cfg.options.limits.auth_per_minute,
            "exempt": " ".join(postfix_network(n) for n in bans.ignore),
        },
        # Outbound SMTP per destination (a domain; with a relay host, the relay, which then
        # takes everything). Set on the smtp transport only: Postfix's default_destination_*
        # would also hold back the LMTP deliveries into our own mailboxes.
        "outbound": outbound_context(cfg),
        # postscreen on port 25: Postfix's zone=answers*weight form for each list.
        "blocklists": {
            "sites": [f"{dl.zone}{'=' + dl.answers if dl.answers else ''}*{dl.weight}"
                      for dl in blocklists.lists],
            "threshold": blocklists.threshold,
            # The blocklists (not the allowlists) whose test entry `status` asks for.
            "checked": [{"zone": dl.zone, "answers": dl.answers}
                        for dl in blocklists.lists if dl.weight > 0],
            "allow": list(blocklists.allow),
        },
        # Validation from the root's key (dnssec), below the site's own anchors, or both;
        # none at all only with neither.
        "resolver": {
            "address": RESOLVER_ADDRESS,
            "forward_to": list(resolver.forward_to),
            "dnssec": resolver.dnssec,
            "trust_anchors": list(resolver.trust_anchors),
            "validates": resolver.dnssec or bool(resolver.trust_anchors),
        },
        "spam": {
            "milter": f"unix:{MILTER_SOCKETS['rspamd']}",
            "milter_socket": RSPAMD["milter_socket"],
            "controller": RSPAMD["controller_socket"],
            "group": RSPAMD["group"],
            # No hash in the vault (a site older than the interface): no interface.
            "web_ui": ({"address": RSPAMD["web_ui"],
                        "password_hash": site_secrets["spam_ui_password_hash"]}
                       if site_secrets.get("spam_ui_password_hash") else None),
            "redis": RSPAMD["redis"],
            "redis_max_memory": "64mb",
            "nameserver": f"{RESOLVER_ADDRESS}:53",
            "local_addrs": list(MYNETWORKS),
            "reject_score": spam.reject_score,
            "junk_score": spam.junk_score,
            "greylist_score": spam.greylist_score,
            "greylist_delay": spam.greylist_delay,
            "user_hourly_limit": spam.user_hourly_limit,
            # The header rspamd's milter adds at junk_score, which the Sieve script files.
            "header": "X-Spam",
            "sieve_dir": SIEVE_DIR,
            "sieve_pipe_dir": SIEVE_PIPE_DIR,
        },
        "antivirus": antivirus,
        "monitoring": {"prometheus": cfg.options.monitoring.prometheus, **PROMETHEUS,
                       "backup_state": BACKUP_STATE_FILE},
        "groupware": groupware,
        "fts": dict(FTS),
        "imap_idle": dict(IMAP_IDLE),
        "inotify": dict(INOTIFY_LIMITS),
        "mail": {
            "domains": domains,
            # Postfix's form: virtual_mailbox_domains, and the SQL tables' `domain` filter.
            "domain_list": ", ".join(domains),
            "primary_domain": cfg.primary_domain,
            "admin_email": cfg.admin_email,
            "verify_address": verify_address(cfg),
            "message_size_limit": cfg.options.message_size_limit,
            "mynetworks": " ".join(map(postfix_network, MYNETWORKS)),
            "vmail": dict(VMAIL),
            "postfix_queue_dir": POSTFIX_QUEUE_DIR,
            "lmtp_socket": LMTP_SOCKET,
            "auth_socket": AUTH_SOCKET,
            "quota": dict(QUOTA),
            "queue": {
                "delay_warning_time": queue.delay_warning_time,
                "maximal_queue_lifetime": queue.maximal_queue_lifetime,
                "bounce_queue_lifetime": queue.bounce_queue_lifetime,
            },
            "relay": relay,
        },
        "tls": tls_context(cfg, secrets),
        # How Postfix sends: with DANE (TLSA records through the validating resolver) and
        # MTA-STS policies when it delivers itself; through a relay host, the relay's
        # verified TLS alone (the recipients' policies are the relay's business).
        "smtp_tls": {
            "dane": relay is None,
            "mta_sts": {**MTA_STS_RESOLVER, "enabled": relay is None},
        },
        "web": {**WEB, "acme_webroot": ACME["webroot"],
                "documents": WEB["documents"] + (
                    [WEB["mobilesync_document"]] if cfg.options.groupware else []),
                # What must not be there: Debian's example site, and the phones' answer
                # once the groupware is off.
                "absent": [WEB["stock_site"]] + (
                    [] if cfg.options.groupware
                    else [f"{WEB['root']}/{WEB['mobilesync_document']}"]),
                **{f"{prefix.replace('-', '_')}_names": [f"{prefix}.{d}" for d in domains]
                   for prefix in WEB_NAME_PREFIXES},
                "mta_sts_policy": mta_sts_policy(cfg),
                "client": client_settings(cfg)},
        "db": {
            "name": DB_NAME,
            "host": "127.0.0.1",
            "port": 3306,
            "postfix": {"user": "mailstack_postfix",
                        "password": site_secrets["mariadb"]["postfix_password"]},
            "dovecot": {"user": "mailstack_dovecot",
                        "password": site_secrets["mariadb"]["dovecot_password"]},
        },
        "dkim": {
            "milter": f"unix:{MILTER_SOCKETS['opendkim']}",
            "socket": f"local:{POSTFIX_QUEUE_DIR}/{MILTER_SOCKETS['opendkim']}",
            "signing_keys": [
                {"domain": d, "selector": secrets.dkim_key(d)["selector"],
                 "key_file": f"{DKIM_KEYS_DIR}/{d}/{secrets.dkim_key(d)['selector']}.private"}
                for d in domains
            ],
            "trusted_hosts": ["127.0.0.1", "::1", "localhost"],
        },
        "storage": {
            "encryption": cfg.options.storage.encryption,
            "root": VMAIL["root"],
            "cipher_dir": VMAIL["root"] + ".crypt",
            "fuse_user": dict(FUSE_USER),
            "mount_unit": systemd_mount_unit(VMAIL["root"]),
            "tool": storage_tool.PATH,
            "conf_file": storage_tool.CONF,
            "lmtp_socket": f"{POSTFIX_QUEUE_DIR}/{LMTP_SOCKET}",
            "bound_services": bound_services,
            "status_services": status_services,
            "postfix_queue_dir": POSTFIX_QUEUE_DIR,
            # A restore's archive, extracted and checked by mailstack-backup: the store's
            # first `init` on a new host takes it instead of making an empty one.
            "restore_dir": BACKUP["staging_dir"],
            "groupware_db": groupware_db_facts(cfg),
            # Dovecot's index files and the search indexes, made again after a restore.
            "index_names": ["dovecot.index", "dovecot.index.log", "dovecot.index.log.2",
                            "dovecot.index.cache", "dovecot.list.index",
                            "dovecot.list.index.log", "dovecot.list.index.log.2"],
            "index_dirs": [FTS["index_dir"]],
            # Mail at rest while the store is locked: sealed to the store's public key by
            # mailstack-sealer, which systemd runs on Dovecot's LMTP socket while Dovecot is
            # stopped (see mailstack/host/sealer.py).
            "sealing": {
                "enabled": cfg.options.storage.encryption != "none",
                "tool": sealer.PATH,
                "user": SEALER_UNIT,
                "dir": sealer.SEALED_DIR,
                # systemd's StateDirectory= name for that directory, below /var/lib.
                "state_directory": sealer.SEALED_DIR.removeprefix("/var/lib/"),
                "recipient_file": sealer.RECIPIENT_FILE,
                "socket_unit": SEALER_UNIT + ".socket",
                "service_unit": SEALER_UNIT + "@.service",
                "queue_unit": SEALER_QUEUE_UNIT,
                "postfix_unit": f"{POSTFIX_INSTANCE_UNIT}.service",
                "reinject_service": sealer.REINJECT_SERVICE,
                # The quota policy's socket, where the sealer answers while Dovecot is stopped.
                "policy_socket": f"{POSTFIX_QUEUE_DIR}/{QUOTA['policy_socket']}",
            },
        },
        "backup": backup_context(cfg, secrets),
        "accounts": {
            "domains": domains,
            "mailboxes": sorted(mailboxes, key=lambda m: m["address"]),
            "aliases": [
                {"source": src, "destination": dest}
                for src in sorted(cfg.aliases)
                for dest in sorted(cfg.aliases[src])
            ],
        },
    }


def host_vars(context: dict[str, Any]) -> dict[str, Any]:
    """The facts the roles share with the templates, taken from the render context: site.yml
    loads them from build/<host>/mailstack_vars.yml, so no role keeps a copy of its own."""
    storage = context["storage"]
    return {
        "mailstack_hostname": context["host"]["hostname"],
        "mailstack_ssh_port": context["host"]["ssh_port"],
        "mailstack_ssh_harden": context["host"]["ssh_harden"],
        "mailstack_firewall_tcp_ports": list(context["firewall"]["tcp_ports"]),
        "mailstack_bans_enabled": context["bans"]["enabled"],
        "mailstack_postfix_instance_service": POSTFIX_INSTANCE_UNIT,
        "mailstack_vmail": dict(context["mail"]["vmail"]),
        "mailstack_fuse_user": dict(storage["fuse_user"]),
        "mailstack_tls": {"dir": TLS_DIR, "key_file": context["tls"]["key_file"],
                          "cert_file": context["tls"]["cert_file"],
                          "certificate": context["tls"]["certificate"],
                          "names": list(context["tls"]["names"]),
                          "acme": {k: v for k, v in context["tls"]["acme"].items()
                                   if k not in ("directory", "email", "reload_units")}},
        "mailstack_mta_sts": {k: context["smtp_tls"]["mta_sts"][k] for k in (
            "enabled", "service", "conf_file")},
        "mailstack_web": {k: context["web"][k] for k in (
            "service", "conf_file", "root", "acme_webroot", "documents", "absent")},
        "mailstack_dkim_keys_dir": DKIM_KEYS_DIR,
        "mailstack_sieve_dirs": [SIEVE_DIR, SIEVE_PIPE_DIR],
        "mailstack_quota_warning_script": QUOTA["warning_script"],
        "mailstack_pop3": context["pop3"]["enabled"],
        "mailstack_apt_backports": dict(APT_BACKPORTS),
        "mailstack_fts": {k: context["fts"][k] for k in (
            "optimize_service", "optimize_timer", "package", "decoder")},
        "mailstack_inotify_limits": dict(context["inotify"]),
        "mailstack_spam_group": context["spam"]["group"],
        "mailstack_spam_user": RSPAMD["user"],
        # The directories of the milters' sockets, which the rspamd and opendkim roles make.
        "mailstack_milter_dirs": {name: f"{POSTFIX_QUEUE_DIR}/{path.rsplit('/', 1)[0]}"
                                  for name, path in MILTER_SOCKETS.items()},
        "mailstack_db_name": context["db"]["name"],
        "mailstack_lmtp_socket": storage["lmtp_socket"],
        "mailstack_antivirus": {k: context["antivirus"][k] for k in (
            "enabled", "socket", "database_dir", "user", "daemon_unit", "socket_unit",
            "updater_unit", "min_available_mib", "rspamd_files")},
        "mailstack_monitoring": {k: context["monitoring"][k] for k in (
            "prometheus", "service", "defaults_file", "textfile_dir", "metrics_service",
            "metrics_timer")},
        "mailstack_groupware": {k: context["groupware"][k] for k in (
            "enabled", "service", "user", "group", "conf_file", "defaults_file", "port",
            "db", "memcached")},
        "mailstack_storage": {k: storage[k] for k in (
            "encryption", "root", "cipher_dir", "mount_unit", "tool", "conf_file",
            "bound_services", "sealing")},
        "mailstack_backup": {k: context["backup"][k] for k in (
            "enabled", "tool", "conf_file", "dir", "passphrase_file", "key_file", "known_hosts",
            "base_dir", "staging_dir", "service", "timer", "check_service", "check_timer")},
    }
