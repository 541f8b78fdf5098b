#!/usr/bin/python3
# Managed by mailstack (mailstack/host/acme.py): installed as /usr/local/sbin/mailstack-acme.
"""The server's certificate from an ACME CA (options.tls.certificate: acme), with uacme.

    mailstack-acme issue [--force]   a certificate unless the one served is current
    mailstack-acme status            the served certificate, as JSON
    mailstack-acme begin|done|failed TYPE IDENT TOKEN AUTH   (uacme's challenge hook)

`issue` is what deploy and the timer (mailstack-acme.timer) run. The served certificate is
current when a CA issued it (not the self-signed stand-in), it covers every wanted name,
matches the site's key and has more than renew_days left: then nothing is asked of the
CA. Otherwise uacme orders one with the site's key (uacme reads it from its confdir, a
link to the served key, and never makes one: -n), answering HTTP-01 through nginx's
webroot; the chain is checked against the key, put in place atomically, and every running
service that presents it is reloaded, so a renewal is served without a human.

Wanted names: the host name, and each web name (mta-sts., autoconfig., autodiscover. of
each domain) whose DNS points at an address of the host name. A domain whose records are
not published yet must not cost the whole certificate: it joins at the next run.

Exit status: 0 issued or current (stdout says which), 1 failed (stderr says why; the
served certificate is untouched).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import socket
import subprocess
import sys
import tempfile

CONF = "/etc/mailstack/acme.json"
PATH = "/usr/local/sbin/mailstack-acme"
UACME = "/usr/bin/uacme"
UACME_TIMEOUT = 600
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
_AUTH = re.compile(r"[A-Za-z0-9_.-]{1,512}")


class Failed(Exception):
    pass


def load_conf() -> dict:
    with open(CONF, encoding="utf-8") as f:
        return json.load(f)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)


# --------------------------------------------------------------------------- certificates


def pubkey_of_key(key_file: str) -> str:
    proc = run(["openssl", "pkey", "-in", key_file, "-pubout"])
    if proc.returncode != 0:
        raise Failed(f"{key_file}: not a private key ({proc.stderr.strip()})")
    return proc.stdout


def cert_info(path: str) -> dict | None:
    """The first certificate of a PEM file: issuer, subject, names, expiry, public key."""
    proc = run(["openssl", "x509", "-in", path, "-noout", "-issuer", "-subject", "-enddate",
                "-ext", "subjectAltName", "-nameopt", "RFC2253"])
    if proc.returncode != 0:
        return None
    info: dict = {"names": []}
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("issuer="):
            info["issuer"] = line.removeprefix("issuer=")
        elif line.startswith("subject="):
            info["subject"] = line.removeprefix("subject=")
        elif line.startswith("notAfter="):
            end = _dt.datetime.strptime(line.removeprefix("notAfter="), "%b %d %H:%M:%S %Y %Z")
            info["not_after"] = end.replace(tzinfo=_dt.UTC).isoformat()
            now = _dt.datetime.now(_dt.UTC)
            info["days_left"] = (end.replace(tzinfo=_dt.UTC) - now).days
        elif "DNS:" in line:
            info["names"] = [n.strip().removeprefix("DNS:").lower() for n in line.split(",")
                             if n.strip().startswith("DNS:")]
    pub = run(["openssl", "x509", "-in", path, "-noout", "-pubkey"])
    info["pubkey"] = pub.stdout if pub.returncode == 0 else ""
    info["self_signed"] = info.get("issuer") == info.get("subject")
    return info


def addresses(name: str) -> set[str]:
    try:
        return {ai[4][0] for ai in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)}
    except (socket.gaierror, UnicodeError):
        return set()


def wanted_names(conf: dict) -> tuple[list[str], list[str]]:
    """(names to ask for, names left out because their DNS does not point here)."""
    own = addresses(conf["hostname"])
    if not own:
        raise Failed(f"{conf['hostname']} does not resolve: publish its A record "
                     "(`mailstack dns`) before a CA can check it")
    names, left_out = [conf["hostname"]], []
    for name in conf["names"]:
        (names if addresses(name) & own else left_out).append(name)
    return names, left_out


def current(conf: dict, names: list[str]) -> str | None:
    """Why the served certificate must be replaced (None: it is current)."""
    info = cert_info(conf["cert_file"])
    if info is None:
        return "no certificate is served"
    if info["self_signed"]:
        return "the served certificate is self-signed"
    if info["pubkey"] != pubkey_of_key(conf["key_file"]):
        return "the served certificate is not for the site's key"
    missing = sorted(set(names) - set(info["names"]))
    if missing:
        return f"the served certificate does not cover {', '.join(missing)}"
    if info["days_left"] <= conf["renew_days"]:
        return f"the served certificate expires in {info['days_left']} days"
    return None


# --------------------------------------------------------------------------- issue


def uacme(conf: dict, *args: str) -> subprocess.CompletedProcess:
    cmd = [UACME, "-v", "-c", conf["confdir"], "-a", conf["directory"], *args]
    try:
        return run(cmd, timeout=UACME_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise Failed(f"the ACME server {conf['directory']} did not answer within "
                     f"{UACME_TIMEOUT} s") from None
    except OSError as exc:
        raise Failed(f"cannot run {UACME}: {exc.strerror} (is Debian's uacme installed?)") from None


def last_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if "fail" in line.lower() or "error" in line.lower()]
    return (errors or lines or ["no output"])[-1].strip()


def ensure_account(conf: dict) -> None:
    """An account at this directory: made once, again when the directory changes (the same
    account key registers with the new CA)."""
    marker = os.path.join(conf["confdir"], "directory.txt")
    try:
        with open(marker, encoding="utf-8") as f:
            if f.read().strip() == conf["directory"]:
                return
    except FileNotFoundError:
        pass
    proc = uacme(conf, "-y", "new", conf["email"])
    if proc.returncode != 0:
        raise Failed(f"cannot open an account at {conf['directory']}: {last_error(proc)}")
    with open(marker, "w", encoding="utf-8") as f:
        f.write(conf["directory"] + "\n")


def link_key(conf: dict) -> None:
    """uacme takes the certificate key from confdir/private/HOST/key.pem: the site's key."""
    key_dir = os.path.join(conf["confdir"], "private", conf["hostname"])
    os.makedirs(key_dir, mode=0o700, exist_ok=True)
    os.makedirs(os.path.join(conf["confdir"], conf["hostname"]), mode=0o755, exist_ok=True)
    link = os.path.join(key_dir, "key.pem")
    if os.path.islink(link) and os.readlink(link) == conf["key_file"]:
        return
    tmp = link + ".new"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(conf["key_file"], tmp)
    os.replace(tmp, link)


def install(conf: dict, issued: str) -> None:
    """Serve the new chain (checked against the key first), then reload what presents it."""
    info = cert_info(issued)
    if info is None or info["pubkey"] != pubkey_of_key(conf["key_file"]):
        raise Failed(f"{issued} is not a certificate for {conf['key_file']}")
    with open(issued, encoding="ascii") as f:
        chain = f.read()
    directory = os.path.dirname(conf["cert_file"])
    fd, tmp = tempfile.mkstemp(prefix=".fullchain.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(chain)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, conf["cert_file"])
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    # Only running units: a locked store keeps Dovecot stopped, and it reads the new
    # certificate when unlock starts it.
    proc = run(["systemctl", "try-reload-or-restart", *conf["reload_units"]])
    if proc.returncode != 0:
        raise Failed(f"the certificate is in place but a reload failed: {proc.stderr.strip()}")


def issue(conf: dict, force: bool = False) -> str:
    names, left_out = wanted_names(conf)
    why = "forced" if force else current(conf, names)
    skipped = f"; not yet in DNS: {', '.join(left_out)}" if left_out else ""
    if why is None:
        return f"current: {', '.join(names)}{skipped}"
    try:
        ensure_account(conf)
        link_key(conf)
        os.makedirs(os.path.join(conf["webroot"], ".well-known", "acme-challenge"), mode=0o755,
                    exist_ok=True)
        # -f: this program decided a new certificate is due (uacme's own check knows nothing
        # of the self-signed stand-in); -n: never a key of uacme's own; -o: no OCSP.
        proc = uacme(conf, "-n", "-o", "-f", "-d", str(conf["renew_days"]), "-h", PATH,
                     "issue", *names)
        if proc.returncode != 0:
            raise Failed(f"{conf['directory']} did not issue a certificate for "
                         f"{', '.join(names)}: {last_error(proc)}")
    except Failed as exc:
        raise Failed(f"a certificate is due ({why}), but {exc}") from None
    install(conf, os.path.join(conf["confdir"], conf["hostname"], "cert.pem"))
    return f"issued: {', '.join(names)} ({why}){skipped}"


# --------------------------------------------------------------------------- hook


def hook(conf: dict, method: str, kind: str, token: str, auth: str) -> int:
    """uacme's challenge hook: HTTP-01 answers as files nginx serves (other kinds declined)."""
    if kind != "http-01" or not _TOKEN.fullmatch(token) or not _AUTH.fullmatch(auth):
        return 1
    path = os.path.join(conf["webroot"], ".well-known", "acme-challenge", token)
    if method == "begin":
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(auth)
        os.chmod(path, 0o644)
        return 0
    if os.path.exists(path):
        os.unlink(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        conf = load_conf()
        if len(args) == 5 and args[0] in ("begin", "done", "failed"):
            return hook(conf, args[0], args[1], args[3], args[4])
        if args[:1] == ["issue"] and args[1:] in ([], ["--force"]):
            print(issue(conf, force=args[1:] == ["--force"]))
            return 0
        if args == ["status"]:
            info = cert_info(conf["cert_file"]) or {}
            info.pop("pubkey", None)
            print(json.dumps(info, sort_keys=True))
            return 0
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    except Failed as exc:
        print(f"mailstack-acme: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
