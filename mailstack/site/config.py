"""The desired state of a site (``mailstack.yml``): typed model and validation.

Validation reports *every* problem at once, each naming the field path, the line, the bad
value and the fix. Unknown keys are errors (a typo must never be silently ignored). The file
itself is read and written by document.py.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from mailstack.errors import ConfigError
from mailstack.site.dnssec import trust_anchor
from mailstack.site.names import address_problem, domain_problem, normalize_address

CONFIG_FILE = "mailstack.yml"
RESERVED_LOCAL_PART = "mailstack-verify"  # the mailbox `mailstack verify` uses

_SIZE = re.compile(r"(\d+)\s*([kmg]?)b?", re.IGNORECASE)
_DURATION = re.compile(r"\d{1,6}[smhdw]")
_NETWORK = re.compile(r"[0-9A-Fa-f:.]{2,45}(/[0-9]{1,3})?")
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RELAY_USER = re.compile(r"[^\s:\x00-\x1f\x7f]{1,255}")
# A DNSBL answer filter, Postfix's syntax: 127.0.0.2, 127.0.0.[2..11], 127.0.[0..255].[1;2;3]
_OCTET_SET = r"(?:\d{1,3}|\[\d{1,3}\.\.\d{1,3}\]|\[\d{1,3}(?:;\d{1,3})*\])"
_DNSBL_CODES = re.compile(rf"{_OCTET_SET}(?:\.{_OCTET_SET}){{3}}")
_RELAY_HOST = re.compile(r"(\[[A-Za-z0-9.-]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?")
# Dovecot reads quotas as signed 64-bit numbers (the column, BIGINT UNSIGNED, holds more).
MAX_QUOTA = 2**63 - 1
# Postfix's message_size_limit: 0 would mean "no limit"; past 1 GiB no peer accepts it anyway.
MESSAGE_SIZE_RANGE = (64 * 1024, 1024**3)
# A pause of an hour between two messages to one destination is already 24 a day.
MAX_RATE_DELAY = 3600
# Postfix's queue manager stops at start (and with it all delivery) on a queue lifetime
# longer than 100 days; a delay warning later than that would never be sent.
MAX_QUEUE_TIME = 100 * 86400
# Postfix's smtp service may run default_process_limit (100) processes: more deliveries at
# once to one destination than that never happen.
MAX_DESTINATION_CONCURRENCY = 100


def _size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a size like 50M or 2G")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    match = _SIZE.fullmatch(str(value).strip())
    if not match:
        raise ValueError("must be a size like 50M, 2G or a number of bytes")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def _duration(value: Any) -> str:
    text = str(value).strip()
    if not _DURATION.fullmatch(text):
        raise ValueError("must be a duration like 30m, 4h or 5d (s, m, h, d or w)")
    return text


def duration_seconds(duration: str) -> int:
    """A validated Duration (like 12s or 4h) in seconds."""
    return int(duration[:-1]) * _SECONDS[duration[-1]]


def _rate_delay(value: Any) -> str:
    """Postfix's smtp_destination_rate_delay: a whole number and one unit. No checker reads
    it: the queue manager parses it at its first SMTP delivery, and Postfix 3.7 stops there
    on `1.5s` and reads `500ms` as 500 minutes (it has no unit below the second)."""
    text = str(value).strip()
    if not _DURATION.fullmatch(text) or duration_seconds(text) > MAX_RATE_DELAY:
        raise ValueError("must be a whole number of seconds or minutes up to 1h, like 1s, "
                         "12s or 2m (0s: no delay)")
    return text


def _queue_time(value: Any) -> str:
    """A duration for options.queue, within what Postfix's queue manager accepts."""
    text = _duration(value)
    if duration_seconds(text) > MAX_QUEUE_TIME:
        raise ValueError("must be at most 100d (Postfix's queue manager refuses longer and "
                         "then delivers nothing)")
    return text


def _address(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a mail address like name@example.org")
    value = normalize_address(value)
    problem = address_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _domain(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a domain like example.org")
    value = value.strip().lower().rstrip(".")
    problem = domain_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _bounded(low: int, high: int, what: str):
    """A size within what the daemons (and the database column) can hold."""
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high} bytes ({what})")
        return value
    return check


def _relay_username(value: Any) -> str:
    """It lands in sasl_passwd as `host user:password`: no space, colon or control character."""
    if not isinstance(value, str) or not _RELAY_USER.fullmatch(value):
        raise ValueError("must be a user name without spaces, colons or control characters")
    return value


def relay_host_name(host: str) -> str:
    """The name in a relay host like [smtp.example.com]:587 (a valid one)."""
    match = _RELAY_HOST.fullmatch(host)
    assert match is not None, host
    return match.group(1).strip("[]")


def _relay_host(value: Any) -> str:
    text = str(value)
    match = _RELAY_HOST.fullmatch(text)
    if not match:
        raise ValueError("must look like [smtp.example.com]:587")
    name = relay_host_name(text)
    if problem := domain_problem(name.lower()):
        raise ValueError(f"has a host name that {problem}")
    if match.group(2) and not 1 <= int(match.group(2)) <= 65535:
        raise ValueError(f"port {match.group(2)} is not between 1 and 65535")
    return text


def _network(value: Any) -> str:
    """An address or network (CIDR) fail2ban never bans: lands in its ignoreip list."""
    text = str(value).strip()
    if not _NETWORK.fullmatch(text):
        raise ValueError("must be an IP address or network like 192.0.2.10 or 2001:db8::/32")
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError("must be an IP address or network like 192.0.2.10 or 2001:db8::/32") from None


def _ip(value: Any) -> str:
    """A resolver's address: lands in unbound's forward-addr lines."""
    problem = ValueError("must be an IP address like 192.0.2.53 or 2001:db8::53")
    if not isinstance(value, str) or not _NETWORK.fullmatch(value) or "/" in value:
        raise problem
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise problem from None


def _destinations(value: Any) -> list[str]:
    """An alias points at one address or a list of them."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError("must be an address or a non-empty list of addresses")
    result = []
    for item in items:
        result.append(_address(item))
    return result


Quota = Annotated[int, BeforeValidator(_size),
                  AfterValidator(_bounded(0, MAX_QUOTA, "0 = unlimited; Dovecot's limit"))]
MessageSize = Annotated[int, BeforeValidator(_size),
                        AfterValidator(_bounded(*MESSAGE_SIZE_RANGE, "64K to 1G"))]
Duration = Annotated[str, BeforeValidator(_duration)]
Address = Annotated[str, BeforeValidator(_address)]
Domain = Annotated[str, BeforeValidator(_domain)]
Destinations = Annotated[list[str], BeforeValidator(_destinations)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Relay(_Strict):
    """Send outgoing mail through a smarthost instead of directly (ports 25 blocked, SES …)."""

    host: Annotated[str, BeforeValidator(_relay_host)]
    username: Annotated[str, BeforeValidator(_relay_username)]
    # The relay's SPF record to include in ours (its provider documents it, e.g.
    # amazonses.com): receivers check that the relay may send for our domains.
    spf_include: Domain | None = None

    @property
    def name(self) -> str:
        """The relay's host name, without the brackets and the port (as Postfix logs it)."""
        return relay_host_name(self.host)


QueueTime = Annotated[str, BeforeValidator(_queue_time)]


class Queue(_Strict):
    """How long Postfix retries mail it could not deliver yet: the sender is warned after
    delay_warning_time (0s: never), the mail bounced after maximal_queue_lifetime (its
    bounces, after bounce_queue_lifetime). Seconds to 100 days."""

    delay_warning_time: QueueTime = "4h"
    maximal_queue_lifetime: QueueTime = "5d"
    bounce_queue_lifetime: QueueTime = "5d"


class Storage(_Strict):
    encryption: Literal["gocryptfs", "encfs", "none"] = "gocryptfs"


class Bans(_Strict):
    """Brute-force bans (fail2ban): an address that fails to log in max_failures times within
    find_time is refused on the mail ports for ban_time; one banned again and again, for a
    week."""

    enabled: bool = True
    max_failures: Annotated[int, Field(ge=1, le=100)] = 5
    find_time: Duration = "10m"
    ban_time: Duration = "1h"
    # Addresses or networks never banned (an office, a monitoring host).
    ignore: list[Annotated[str, BeforeValidator(_network)]] = []


class Ssh(_Strict):
    """The host's SSH server. harden: logins by key only (mailstack's own always use one),
    root by key only, no X11 forwarding. New sites get true from `init`."""

    harden: bool = False


class Limits(_Strict):
    """What one client address may do on the SMTP ports, counted by Postfix's anvil over a
    minute; past it the client gets 421 and comes back later. Loopback and the addresses
    in options.bans.ignore are exempt."""

    # Connections open at once.
    connections: Annotated[int, Field(ge=1, le=1000)] = 20
    # New connections per minute.
    connections_per_minute: Annotated[int, Field(ge=1, le=100_000)] = 60
    # AUTH commands per minute (fail2ban bans after options.bans.max_failures failures).
    auth_per_minute: Annotated[int, Field(ge=1, le=100_000)] = 30


class Outbound(_Strict):
    """What this server sends to one destination over SMTP: a receiving domain or, with
    options.relay, the relay (which then takes all outbound mail, so these limits are the
    relay's). For a relay's or receiver's sending quota."""

    # Deliveries at once to one destination (Postfix's default: 20).
    concurrency: Annotated[int, Field(ge=1, le=MAX_DESTINATION_CONCURRENCY)] = 20
    # Pause between two deliveries to one destination, e.g. 12s for 300 an hour; deliveries
    # then go one at a time (concurrency no longer counts). 0s: no pause.
    rate_delay: Annotated[str, BeforeValidator(_rate_delay)] = "0s"


def _dnsbl_codes(value: Any) -> str:
    if not isinstance(value, str) or not _DNSBL_CODES.fullmatch(value):
        raise ValueError("must be an answer like 127.0.0.2, 127.0.0.[2..11] or 127.0.0.[2;3]")
    return value


class DnsList(_Strict):
    """One DNS blocklist (positive weight) or allowlist (negative) postscreen asks."""

    zone: Domain
    weight: Annotated[int, Field(ge=-100, le=100)]
    # Only these answers count (a list's error codes, e.g. Spamhaus's 127.255.255.x for
    # queries through a public resolver, must not block anybody).
    answers: Annotated[str, BeforeValidator(_dnsbl_codes)] | None = None


DEFAULT_DNS_LISTS = [
    # Spamhaus ZEN: SBL, XBL, PBL (free for small servers); only its listing codes.
    DnsList(zone="zen.spamhaus.org", weight=3, answers="127.0.0.[2..11]"),
    DnsList(zone="bl.spamcop.net", weight=2, answers="127.0.0.2"),
    # DNSWL: known good senders weigh against the lists (its 127.0.x.255 is an error code).
    DnsList(zone="list.dnswl.org", weight=-2, answers="127.0.[0..255].[0..3]"),
]


class Blocklists(_Strict):
    """postscreen in front of port 25: a client whose lists add up to threshold is refused
    (550) before it talks to the real SMTP server; allow lists addresses never checked."""

    threshold: Annotated[int, Field(ge=1, le=100)] = 3
    lists: list[DnsList] = DEFAULT_DNS_LISTS
    allow: list[Annotated[str, BeforeValidator(_network)]] = []


class Resolver(_Strict):
    """The host's own DNS resolver (unbound on 127.0.0.1), which Postfix and rspamd use.

    By default it resolves from the root servers and validates DNSSEC: the DNS blocklists
    refuse queries that come through the big public resolvers, so a mail server needs its
    own. forward_to sends every query to the resolvers listed instead (a resolver of your
    own network, or a test bed's). trust_anchors: keys of signed zones the root does not
    vouch for (a private or lab zone), validated below them, also with dnssec off."""

    forward_to: list[Annotated[str, BeforeValidator(_ip)]] = []
    # Validation from the root's key. Off only for an upstream that strips DNSSEC data
    # (validation would fail every name); then only the trust_anchors' zones are validated.
    dnssec: bool = True
    trust_anchors: list[Annotated[str, BeforeValidator(trust_anchor)]] = []


Score = Annotated[float, Field(ge=-1000, le=1000, allow_inf_nan=False)]


class Spam(_Strict):
    """The spam filter (rspamd): what a message's score leads to, greylisting, and how much
    one authenticated user may send."""

    # At or above: refused at SMTP time (5xx; the sender learns it was not delivered).
    reject_score: Score = 15
    # At or above: delivered into the recipient's Junk folder.
    junk_score: Score = 6
    # At or above (and below junk_score): greylisted, i.e. answered 4xx once; a real MTA
    # retries after greylist_delay and gets through. null: no greylisting.
    greylist_score: Score | None = 4
    greylist_delay: Duration = "5m"
    # Messages one authenticated user may send per hour (burst included); above it the
    # client gets 4xx. A stolen password must not get the server's address blocklisted.
    user_hourly_limit: Annotated[int, Field(ge=1, le=1_000_000)] = 200

    @model_validator(mode="after")
    def _scores_in_order(self) -> Spam:
        if self.junk_score >= self.reject_score:
            raise ValueError("junk_score must be below reject_score, or nothing goes to Junk")
        if self.greylist_score is not None and self.greylist_score >= self.junk_score:
            raise ValueError("greylist_score must be below junk_score (or null: no greylisting)")
        return self


LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
_ACME_URL = re.compile(r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%/-]*)?")


def _acme_url(value: Any) -> str:
    """An ACME directory: https only (the account key and every order travel over it); it
    lands in an argv on the host, so nothing but a plain URL passes."""
    if not isinstance(value, str) or not _ACME_URL.fullmatch(value):
        raise ValueError("must be an https:// URL of an ACME directory, like "
                         f"{LETS_ENCRYPT}")
    return value


class Tls(_Strict):
    """The certificate every service presents (SMTP, IMAP, the web names).

    acme: issued by an ACME CA (Let's Encrypt unless acme_directory says otherwise) for the
    host name and each domain's mta-sts., autoconfig. and autodiscover. names, renewed by a
    timer; until it is issued (DNS not there yet, the CA unreachable) a self-signed one is
    served and every deploy and the timer try again. self-signed: never trusted by clients
    (a sandbox, a test). files: your own certificate, imported with `mailstack tls import`.
    The key is the site's (secrets/site.yml): it stays across renewals, so the TLSA record
    `mailstack dns` prints stays valid.

    New sites get acme from `init`; a site without this block (made before it existed, when
    every certificate was self-signed) keeps self-signed rather than turning to a CA on the
    next deploy."""

    certificate: Literal["acme", "self-signed", "files"] = "self-signed"
    acme_directory: Annotated[str, BeforeValidator(_acme_url)] = LETS_ENCRYPT
    # The ACME account's contact (expiry notices); null: admin_email.
    acme_email: Address | None = None


# A TSIG key's name: a DNS name (one label is enough: BIND's `tsig-keygen mailstack`).
_KEY_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_TSIG_KEY_NAME = re.compile(rf"{_KEY_LABEL}(?:\.{_KEY_LABEL})*")
# The TSIG algorithms RFC 8945 recommends; hmac-md5 and hmac-sha1 are refused.
TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512")
# A name server: an IP address, a host name, either with :port; IPv6 with a port in [].
_DNS_SERVER = re.compile(r"(\[[0-9A-Fa-f:.]{2,45}\]|[0-9A-Za-z.-]{1,253})(?::([0-9]{1,5}))?")


def _tsig_key_name(value: Any) -> str:
    text = value.lower().removesuffix(".") if isinstance(value, str) else ""
    if len(text) > 253 or not _TSIG_KEY_NAME.fullmatch(text):
        raise ValueError("must be a TSIG key name like mailstack or update.example.org "
                         "(letters, digits, _ and -, labels joined by dots)")
    return text


def _tsig_algorithm(value: Any) -> str:
    text = value.lower() if isinstance(value, str) else ""
    if text not in TSIG_ALGORITHMS:
        raise ValueError(f"must be one of {', '.join(TSIG_ALGORITHMS)} (RFC 8945's "
                         "recommended ones; hmac-md5 and hmac-sha1 are not accepted)")
    return text


def dns_server_problem(text: str) -> str | None:
    """Why text is not IP, IP:PORT, [IPv6]:PORT, NAME or NAME:PORT (None: it is)."""
    host, port = split_server(text)
    if host is None:
        return "must be an address or host name, optionally with :port (192.0.2.53, " \
               "[2001:db8::53]:53, ns1.example.org)"
    if port is not None and not 1 <= port <= 65535:
        return f"has port {port}, not between 1 and 65535"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if problem := domain_problem(host.lower()):
        return f"is neither an IP address nor a host name: it {problem}"
    return None


def split_server(text: str) -> tuple[str | None, int | None]:
    """(host, port or None) of a name server's text; (None, None) if it has no such shape.
    A bare IPv6 address has no port (its colons are the address's)."""
    try:
        return str(ipaddress.ip_address(text)), None
    except ValueError:
        pass
    match = _DNS_SERVER.fullmatch(text)
    if not match:
        return None, None
    host, port = match.group(1), match.group(2)
    if host.startswith("["):
        try:
            return str(ipaddress.IPv6Address(host[1:-1])), int(port) if port else None
        except ValueError:
            return None, None
    return host, int(port) if port else None


def _dns_server(value: Any) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if problem := dns_server_problem(text):
        raise ValueError(problem)
    return text


class DnsUpdate(_Strict):
    """`mailstack dns push`: the records `mailstack dns` prints, sent as RFC 2136 dynamic
    updates (BIND, Knot, PowerDNS accept them) signed with a TSIG key. Its secret is in the
    vault (`mailstack dns key set NAME` reads it), never here."""

    key_name: Annotated[str, BeforeValidator(_tsig_key_name)]
    algorithm: Annotated[str, BeforeValidator(_tsig_algorithm)] = "hmac-sha256"
    # The server that takes the updates; null: each zone's primary (the SOA's MNAME), port 53.
    server: Annotated[str, BeforeValidator(_dns_server)] | None = None
    # The zones to update; empty: each name's zone, as DNS says. A record outside the
    # listed zones is not pushed (`dns push` lists it for you to publish).
    zones: list[Domain] = []


# Virus scanning: none, or ClamAV's clamd asked by rspamd for every message. Off by default:
# clamd with the full signature database holds about 1-1.3 GiB of RAM.
class DurationLevels(_Strict):
    """A duration past which `mailstack status` warns (exit 1), and past which it is critical
    (exit 2)."""

    warning: Duration
    critical: Duration

    @model_validator(mode="after")
    def _in_order(self) -> DurationLevels:
        if duration_seconds(self.warning) >= duration_seconds(self.critical):
            raise ValueError("warning must be shorter than critical")
        return self


class PercentLevels(_Strict):
    """A use in percent above which `mailstack status` warns, and above which it is critical."""

    warning: Annotated[int, Field(ge=1, le=100)]
    critical: Annotated[int, Field(ge=1, le=100)]

    @model_validator(mode="after")
    def _in_order(self) -> PercentLevels:
        if self.warning >= self.critical:
            raise ValueError("warning must be below critical")
        return self


class DaysLeft(_Strict):
    """Days left below which `mailstack status` warns, and below which it is critical."""

    warning: Annotated[int, Field(ge=1, le=3650)]
    critical: Annotated[int, Field(ge=0, le=3650)]

    @model_validator(mode="after")
    def _in_order(self) -> DaysLeft:
        if self.warning <= self.critical:
            raise ValueError("warning must be more days than critical")
        return self


class Monitoring(_Strict):
    """`mailstack status`: what it calls a warning (exit 1) or critical (exit 2). prometheus:
    the host also writes its status for Prometheus' node-exporter every minute (textfile
    collector; the exporter listens on loopback only)."""

    prometheus: bool = False
    certificate_days: DaysLeft = DaysLeft(warning=14, critical=3)
    # The oldest message in Postfix's queue.
    queue_age: DurationLevels = DurationLevels(warning="1h", critical="1d")
    # Space and inodes of the store's filesystem.
    disk_percent: PercentLevels = PercentLevels(warning=85, critical=95)
    # The last successful backup (only once one was recorded).
    backup_age: DurationLevels = DurationLevels(warning="26h", critical="3d")


Antivirus = Literal["none", "clamav"]


_SSH_TARGET = re.compile(r"([a-z_][a-z0-9_-]{0,31})@(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,253})"
                         r"(?::(\d{1,5}))?")
_REPO_PATH = re.compile(r"[A-Za-z0-9_~/][A-Za-z0-9._/-]{0,254}")
_WEEKDAYS = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
# systemd OnCalendar, conservatively: a keyword, or optional weekdays and a daily time.
_CALENDAR = re.compile(rf"(?:hourly|daily|weekly|monthly|(?:{_WEEKDAYS}(?:[,.]{{1,2}}{_WEEKDAYS})* )?"
                       r"\*-\*-\* (?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d)?)")


def split_ssh_target(target: str) -> tuple[str, str, int]:
    """(user, host, port) of a valid options.backup.target (port 22 unless given)."""
    match = _SSH_TARGET.fullmatch(target)
    assert match is not None, target
    return match.group(1), match.group(2).strip("[]"), int(match.group(3) or 22)


def _ssh_target(value: Any) -> str:
    text = value if isinstance(value, str) else ""
    match = _SSH_TARGET.fullmatch(text)
    if not match:
        raise ValueError("must be an SSH target like borg@backup.example.org or "
                         "borg@[2001:db8::1]:2222 (user@host[:port])")
    host = match.group(2)
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"has {host}, which is not an IPv6 address") from None
    else:
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            if problem := domain_problem(host.lower()):
                raise ValueError(f"has a host name that {problem}") from None
    if match.group(3) and not 1 <= int(match.group(3)) <= 65535:
        raise ValueError(f"port {match.group(3)} is not between 1 and 65535")
    return text


def _repo_path(value: Any) -> str:
    """The repository's path on the target: it reaches borg's argv and the authorized_keys
    line (--restrict-to-path), so a plain path only."""
    text = value if isinstance(value, str) else ""
    if not _REPO_PATH.fullmatch(text) or ".." in text.split("/") or text.startswith("~/.."):
        raise ValueError("must be a path like mailstack/mail.example.org (relative to the "
                         "target user's home) or /srv/borg/mail: letters, digits, . _ - / "
                         "only, no ..")
    return text.rstrip("/") or text


def _calendar(value: Any) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if not _CALENDAR.fullmatch(text):
        raise ValueError("must be a systemd calendar time like daily, *-*-* 02:40 or "
                         "Sun *-*-* 04:10 (weekdays, then a time of day)")
    return text


class Retention(_Strict):
    """Archives kept after each run (borg prune): the last of each day, week, month."""

    keep_daily: Annotated[int, Field(ge=1, le=3660)] = 7
    keep_weekly: Annotated[int, Field(ge=0, le=520)] = 4
    keep_monthly: Annotated[int, Field(ge=0, le=240)] = 6


class Backup(_Strict):
    """Encrypted backups with borgbackup over SSH (`mailstack backup init` makes the key and
    the passphrase, into the vault). What is on the host and cannot be made again from the
    site: the encrypted store (as ciphertext), the mail sealed while it is locked, rspamd's
    learned data."""

    # user@host[:port] of a machine with borg (a second server, a storage box).
    target: Annotated[str, BeforeValidator(_ssh_target)]
    # The repository on it: relative to the user's home, or absolute.
    path: Annotated[str, BeforeValidator(_repo_path)]
    retention: Retention = Retention()
    # When it runs (systemd OnCalendar; a random delay of up to 30 minutes is added).
    schedule: Annotated[str, BeforeValidator(_calendar)] = "*-*-* 02:40"
    # When `borg check` reads the repository back (its segments and archives; every chunk
    # decrypted and verified too: `mailstack backup check --verify-data`, by hand).
    check_schedule: Annotated[str, BeforeValidator(_calendar)] = "Sun *-*-* 04:10"

    @property
    def user(self) -> str:
        return split_ssh_target(self.target)[0]

    @property
    def host(self) -> str:
        return split_ssh_target(self.target)[1]

    @property
    def port(self) -> int:
        return split_ssh_target(self.target)[2]


class Options(_Strict):
    message_size_limit: MessageSize = 50 * 1024**2
    relay: Relay | None = None
    queue: Queue = Queue()
    storage: Storage = Storage()
    bans: Bans = Bans()
    limits: Limits = Limits()
    outbound: Outbound = Outbound()
    ssh: Ssh = Ssh()
    spam: Spam = Spam()
    blocklists: Blocklists = Blocklists()
    resolver: Resolver = Resolver()
    antivirus: Antivirus = "none"
    # POP3 for clients that download and delete: Dovecot's pop3 on 995, TLS only (no 110).
    pop3: bool = False
    # Webmail, calendars and contacts (CalDAV/CardDAV) and Exchange ActiveSync: SOGo behind
    # nginx, with the same accounts. Off by default (README: about 65 MiB more memory idle,
    # and its data is not on the encrypted store yet).
    groupware: bool = False
    tls: Tls = Tls()
    dns_update: DnsUpdate | None = None
    monitoring: Monitoring = Monitoring()
    backup: Backup | None = None


class User(_Strict):
    address: Address
    quota: Quota = 0


# The layout of mailstack.yml this version writes and reads; older ones are migrated
# (site/migrate.py). 1: every site before the field existed.
SITE_FORMAT = 2


def _format(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value > SITE_FORMAT:
        raise ValueError(f"format {value} is from a newer mailstack (this one reads up to "
                         f"{SITE_FORMAT}): upgrade mailstack (pip install -U mailstack)")
    return value


class SiteConfig(_Strict):
    format: Annotated[int, Field(ge=1, strict=True), AfterValidator(_format)] = 1
    hostname: Domain
    admin_email: Address
    domains: list[Domain] = Field(min_length=1)
    users: list[User] = []
    aliases: dict[Address, Destinations] = {}
    options: Options = Options()

    @property
    def primary_domain(self) -> str:
        return self.domains[0]

    def mailbox(self, address: str) -> User | None:
        return next((u for u in self.users if u.address == address), None)


# --- validation across fields ----------------------------------------------------------


def semantic_problems(cfg: SiteConfig) -> list[tuple[tuple[Any, ...], str]]:
    """Rules that span fields: duplicates, undeclared domains, dangling aliases, loops."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    domains = set(cfg.domains)
    seen: set[str] = set()
    for i, domain in enumerate(cfg.domains):
        if domain in seen:
            problems.append((("domains", i), f"{domain!r} is listed twice; remove one"))
        seen.add(domain)

    mailboxes: set[str] = set()
    for i, user in enumerate(cfg.users):
        path = ("users", i, "address")
        if user.address in mailboxes:
            problems.append((path, f"{user.address!r} is declared twice; remove one"))
        mailboxes.add(user.address)
        domain = user.address.split("@")[1]
        if domain not in domains:
            problems.append(
                (path, f"{user.address!r}: domain {domain!r} is not declared; add it to "
                       f"domains (mailstack domain add {domain})")
            )

    for i, user in enumerate(cfg.users):
        if user.address.split("@")[0] == RESERVED_LOCAL_PART:
            problems.append((("users", i, "address"),
                             f"{RESERVED_LOCAL_PART!r} is reserved for `mailstack verify`; "
                             "choose another name"))
    for source, destinations in cfg.aliases.items():
        path = ("aliases", source)
        if source.split("@")[0] == RESERVED_LOCAL_PART:
            problems.append((path, f"{RESERVED_LOCAL_PART!r} is reserved for `mailstack "
                                   "verify`; choose another name"))
        domain = source.split("@")[1]
        if domain not in domains:
            problems.append(
                (path, f"alias {source!r}: domain {domain!r} is not declared; add it to "
                       f"domains (mailstack domain add {domain})")
            )
        if source in mailboxes:
            problems.append(
                (path, f"alias {source!r} is also a mailbox; mail would never reach the "
                       "mailbox. Remove the alias or the user")
            )
        for dest in destinations:
            local = dest.split("@")[1] in domains
            if local and dest not in mailboxes and dest not in cfg.aliases:
                problems.append(
                    (path, f"alias {source!r} points to {dest!r}, which is neither a mailbox "
                           "nor an alias; add the user first (mailstack user add)")
                )
    problems.extend(_alias_loops(cfg.aliases))
    anchors: set[str] = set()
    for i, anchor in enumerate(cfg.options.resolver.trust_anchors):
        if anchor in anchors:
            problems.append((("options", "resolver", "trust_anchors", i),
                             f"{anchor!r} is listed twice; remove one"))
        anchors.add(anchor)
    return problems


def unreachable_role_addresses(cfg: SiteConfig) -> list[str]:
    """The addresses the server itself sends to or must accept (postmaster of every domain,
    admin_email when it is local) that are neither a mailbox nor an alias: mail to them
    would bounce. Checked before a deploy, not on every load, so a new site can be built up
    step by step."""
    wanted = [f"postmaster@{d}" for d in cfg.domains]
    if cfg.admin_email.split("@")[1] in cfg.domains:
        wanted.append(cfg.admin_email)
    missing = []
    for address in dict.fromkeys(wanted):
        if not cfg.mailbox(address) and address not in cfg.aliases:
            missing.append(f"{address}: add a user (a domain's first user becomes its "
                           f"postmaster) or `mailstack alias add {address} YOU@DOMAIN`")
    return missing


def _alias_loops(aliases: dict[str, list[str]]) -> list[tuple[tuple[Any, ...], str]]:
    """One problem per group of aliases that forward in a circle (a strongly connected
    component), shown as its shortest loop through the group's smallest member. Linear in the
    number of aliases: listing every distinct cycle instead is exponential (48 aliases took
    39 s)."""
    problems = []
    for group in _strongly_connected(aliases):
        start = min(group)
        if len(group) == 1 and start not in aliases.get(start, []):
            continue
        loop = " -> ".join(_shortest_loop(aliases, group, start))
        problems.append((("aliases", start), f"alias loop {loop}; mail would bounce forever. "
                                             "Remove one of these aliases"))
    return problems


def _strongly_connected(graph: dict[str, list[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative (no recursion limit on long alias chains)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(graph.get(root, [])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for dest in edges:
                if dest not in graph:
                    continue  # a mailbox or an outside address: not part of any loop
                if dest not in index:
                    index[dest] = low[dest] = len(index)
                    stack.append(dest)
                    on_stack.add(dest)
                    work.append((dest, iter(graph.get(dest, []))))
                    break
                if dest in on_stack:
                    low[node] = min(low[node], index[dest])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.add(member)
                        if member == node:
                            break
                    groups.append(group)
    return groups


def _shortest_loop(graph: dict[str, list[str]], group: set[str], start: str) -> list[str]:
    """start -> … -> start inside one group, by breadth-first search."""
    came_from: dict[str, str] = {}
    queue = [start]
    for node in queue:
        for dest in sorted(graph.get(node, [])):
            if dest == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if dest in group and dest not in came_from:
                came_from[dest] = node
                queue.append(dest)
    raise AssertionError("a strongly connected group always loops back")


# --- validation with field paths and line numbers -----------------------------------------


def validate(data: CommentedMap, path: Path, *, with_lines: bool = True) -> SiteConfig:
    lines = data if with_lines else CommentedMap()
    try:
        model = SiteConfig.model_validate(_plain(data))
    except ValidationError as exc:
        details = [_describe(err, lines) for err in exc.errors()]
        raise ConfigError(f"{path.name} is invalid ({len(details)} problem(s)):", details=details) from None
    problems = semantic_problems(model)
    if problems:
        details = [f"{_path_str(p)}{_line(lines, p)}: {msg}" for p, msg in problems]
        raise ConfigError(f"{path.name} is invalid ({len(details)} problem(s)):", details=details)
    return model


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _model_at(path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the mapping at ``path`` (to suggest the right key)."""
    model: Any = SiteConfig
    for part in path:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if model is None:
            # list[User] and friends
            for c in candidates:
                for inner in getattr(c, "__args__", ()):
                    if isinstance(inner, type) and issubclass(inner, BaseModel):
                        model = inner
    return model


def _describe(err: dict[str, Any], data: CommentedMap) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    kind = err["type"]
    where = _path_str(loc) + _line(data, loc)
    if kind == "extra_forbidden":
        key = loc[-1]
        owner = _model_at(loc[:-1])
        known = sorted(owner.model_fields) if owner else []
        hint = difflib.get_close_matches(str(key), known, n=1)
        fix = f"did you mean {hint[0]!r}?" if hint else f"known keys here: {', '.join(known)}"
        return f"{where}: unknown key {key!r}; {fix}"
    if kind == "missing":
        return f"{where}: is required; add it"
    message = err["msg"].removeprefix("Value error, ")
    if kind == "too_short" and loc and loc[-1] == "domains":
        message = "must list at least one domain"
    if kind == "literal_error":
        message = message.replace("Input should be", "must be")
    return f"{where}: {message} (got {err.get('input')!r})"


def _path_str(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "@" in str(part) or "." in str(part):
            out += f"[{part!r}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _line(data: CommentedMap, path: tuple[Any, ...]) -> str:
    """' (line N)' for the deepest part of ``path`` that the document has."""
    node: Any = data
    line = None
    for part in path:
        try:
            if isinstance(node, CommentedMap) and part in node:
                line = node.lc.key(part)[0]
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
                line = node.lc.item(part)[0]
                node = node[part]
            else:
                break
        except (KeyError, TypeError, AttributeError):
            break
    return f" (line {line + 1})" if line is not None else ""
