#!/usr/bin/env python3
"""Render every template with the fixture context and check the result with the daemons' own tools.

Why: a template that renders is not a config the daemon accepts. This script renders
`templates/` with `tests/fixtures/context.yml` (Jinja2 options of docs/render-context.md)
into a temporary directory, then, for each tool installed on this machine:

* Postfix:  `postconf -n` and `postconf -M` on the rendered main.cf/master.cf (no warning allowed);
* Dovecot:  `doveconf -n` on the rendered dovecot.conf, then a real Dovecot (private base_dir,
            loopback only) authenticates the fixture users against the SQL passdb;
* OpenDKIM: `opendkim -n` on the rendered opendkim.conf, with the rendered tables and keys;
* MariaDB:  a throwaway server (own datadir, socket and port, started with the rendered
            90-mailstack.cnf) loads schema.sql, db-users.sql and accounts.sql (twice, which must
            change nothing), every Postfix map is queried with `postmap -q` and compared with what
            the context says, the database users are checked to be read-only, and removing a
            mailbox from the context removes its row.

Paths that only exist on a real host (TLS certificate, DKIM keys, the DB port) are rewritten in
a copy of the context to files made here. Every daemon started here is stopped again.
Exit status: 0 when every check passed, 1 otherwise (each failure is printed).

Usage: python3 scripts/check-templates-local.py [--keep]   (--keep: leave the temp dir)
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import jinja2
import yaml

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "templates"
FIXTURE = REPO / "tests" / "fixtures" / "context.yml"

# Rendered only when the context has a relay host (render.py skips them otherwise).
RELAY_ONLY = {"etc/postfix/sasl_passwd"}


def sql_literal(value: object) -> str:
    """The `sql` filter, as mailstack/render.py defines it (a MariaDB string literal)."""
    s = str(value)
    return "'" + s.replace("\\", "\\\\").replace("'", "''").replace("\0", "\\0") + "'"


class Checker:
    """Collects results; every check prints one line."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.passed = 0
        self.skipped: list[str] = []

    def ok(self, name: str) -> None:
        self.passed += 1
        print(f"  ok    {name}")

    def fail(self, name: str, detail: str = "") -> None:
        self.failures.append(name)
        print(f"  FAIL  {name}")
        for line in detail.rstrip().splitlines():
            print(f"        {line}")

    def check(self, condition: bool, name: str, detail: str = "") -> bool:
        if condition:
            self.ok(name)
        else:
            self.fail(name, detail)
        return condition

    def skip(self, name: str, why: str) -> None:
        self.skipped.append(name)
        print(f"  skip  {name}: {why}")


def run(cmd: Sequence[str], *, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), input=stdin, capture_output=True, text=True, timeout=timeout)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, timeout: float, interval: float = 0.2) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


# --- rendering -------------------------------------------------------------------------


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["sql"] = sql_literal
    return env


def template_names() -> list[str]:
    return sorted(str(p.relative_to(TEMPLATES)) for p in TEMPLATES.rglob("*.j2"))


def render_all(context: dict, dest: Path, chk: Checker, label: str) -> list[str]:
    """Render every template into dest (target layout); returns the rendered relative paths."""
    env = environment()
    rendered: list[str] = []
    for name in template_names():
        target = name[: -len(".j2")]
        if target in RELAY_ONLY and not context["mail"]["relay"]:
            continue
        try:
            text = env.get_template(name).render(context)
        except jinja2.TemplateError as exc:
            chk.fail(f"render {name} ({label})", f"{type(exc).__name__}: {exc}")
            continue
        out = dest / target
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        rendered.append(target)
        problems = []
        if context["managed_header"] not in text.split("\n", 1)[0]:
            problems.append("first line is not the managed header")
        if not text.endswith("\n"):
            problems.append("no final newline")
        if re.search(r"[ \t]+$", text, re.MULTILINE):
            problems.append("trailing whitespace")
        chk.check(not problems, f"render {target} ({label})", "; ".join(problems))
    return rendered


def render_one(context: dict, template: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(environment().get_template(template).render(context))


# --- the local context: real files in place of the host's paths --------------------------


def local_context(fixture: dict, tmp: Path, chk: Checker) -> dict:
    ctx = copy.deepcopy(fixture)
    files = tmp / "files"
    files.mkdir()
    cert, key = files / "fullchain.pem", files / "privkey.pem"
    r = run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", f"/CN={ctx['host']['hostname']}", "-keyout", str(key), "-out", str(cert)])
    chk.check(r.returncode == 0, "make throwaway TLS certificate", r.stderr)
    ctx["tls"]["cert_file"], ctx["tls"]["key_file"] = str(cert), str(key)
    for k in ctx["dkim"]["signing_keys"]:
        path = files / "dkim" / k["domain"] / f"{k['selector']}.private"
        path.parent.mkdir(parents=True, exist_ok=True)
        r = run(["openssl", "genrsa", "-out", str(path), "2048"])
        chk.check(r.returncode == 0, f"make throwaway DKIM key {k['domain']}", r.stderr)
        path.chmod(0o600)
        k["key_file"] = str(path)
    ctx["db"]["port"] = free_port()
    return ctx


# --- Postfix -------------------------------------------------------------------------------


def check_postfix(out: Path, tmp: Path, chk: Checker, label: str) -> None:
    if not have("postconf"):
        chk.skip("postfix", "postconf not installed")
        return
    # postconf opens the mysql:/... tables to check their settings: point main.cf at the
    # rendered copies.
    confdir = tmp / f"postfix-{label}"
    shutil.copytree(out / "etc/postfix", confdir)
    main_cf = confdir / "main.cf"
    main_cf.write_text(main_cf.read_text().replace("/etc/postfix/mysql/", f"{confdir}/mysql/"))
    for flag in ("-n", "-M"):
        r = run(["postconf", "-c", str(confdir), flag])
        noise = [line for line in r.stderr.splitlines() if line.strip()]
        noise += [line for line in r.stdout.splitlines() if "warning:" in line]
        chk.check(r.returncode == 0 and not noise, f"postconf {flag} ({label}): no warning",
                  "\n".join(noise))
    # The values we rely on, as Postfix itself reads them.
    expect = {
        "mydestination": "localhost",
        "smtpd_sasl_auth_enable": "no",
        "smtpd_tls_auth_only": "yes",
        "milter_default_action": "tempfail",
        "virtual_transport": "lmtp:unix:private/dovecot-lmtp",
    }
    r = run(["postconf", "-c", str(confdir), "-h", *expect])
    got = dict(zip(expect, r.stdout.splitlines()))
    chk.check(got == expect, f"postconf ({label}): key settings", f"got {got}")
    r = run(["postconf", "-c", str(confdir), "-P"])
    for service in ("submission/inet", "submissions/inet"):
        want = [f"{service}/smtpd_sasl_auth_enable = yes",
                f"{service}/smtpd_sender_restrictions = reject_sender_login_mismatch",
                f"{service}/milter_macro_daemon_name = ORIGINATING"]
        missing = [w for w in want if w not in r.stdout.splitlines()]
        chk.check(not missing, f"postconf -P ({label}): {service} overrides", "missing: " + ", ".join(missing))


# --- Dovecot -------------------------------------------------------------------------------


def check_doveconf(out: Path, chk: Checker) -> None:
    if not have("doveconf"):
        chk.skip("doveconf", "dovecot not installed")
        return
    conf = out / "etc/dovecot/dovecot.conf"
    r = run(["doveconf", "-n", "-c", str(conf)])
    noise = [line for line in r.stderr.splitlines() if line.strip()]
    chk.check(r.returncode == 0 and not noise, "doveconf -n: no error or warning", "\n".join(noise))
    r = run(["doveconf", "-c", str(conf), "-h", "ssl", "disable_plaintext_auth"])
    chk.check(r.stdout.split() == ["required", "yes"], "doveconf: ssl = required, no plaintext auth", r.stdout)


def check_dovecot_auth(out: Path, ctx: dict, tmp: Path, chk: Checker) -> None:
    """A real Dovecot (own base_dir, loopback, no fixed listener paths) authenticates via SQL."""
    if not (have("dovecot") and have("doveadm")):
        chk.skip("dovecot auth", "dovecot not installed")
        return
    base = tmp / "dovecot-run"
    base.mkdir()
    base.chmod(0o755)
    conf = tmp / "dovecot-local.conf"
    text = (out / "etc/dovecot/dovecot.conf").read_text()
    text = text.replace("/etc/dovecot/dovecot-sql.conf.ext", str(out / "etc/dovecot/dovecot-sql.conf.ext"))
    text = text.replace("/var/spool/postfix/private/", f"{base}/")
    # The listeners' owners must exist on this machine; imaps on a free loopback port.
    text = text.replace("user = postfix", "user = root").replace("group = postfix", "group = root")
    text = re.sub(r"(user|group) = " + re.escape(ctx["mail"]["vmail"]["user"]) + r"\n", r"\1 = root\n", text)
    text = text.replace("port = 993", f"port = {free_port()}")
    log = base / "dovecot.log"
    text = text.replace("log_path = syslog", f"log_path = {log}")
    text += f"\nbase_dir = {base}\nstate_dir = {base}/state\nlisten = 127.0.0.1\n"
    (base / "state").mkdir()
    conf.write_text(text)
    # The master daemonizes: its output must not hold our pipes open.
    r = subprocess.run(["dovecot", "-c", str(conf)], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=60)
    if not chk.check(r.returncode == 0, "dovecot starts with the rendered config", r.stderr):
        return
    try:
        wait_for(lambda: (base / "auth-userdb").exists(), 10)
        alice = ctx["accounts"]["mailboxes"][0]
        password = FIXTURE_PASSWORDS.get(alice["address"])
        if password:
            r = run(["doveadm", "-c", str(conf), "auth", "test", alice["address"].upper(), password])
            chk.check(r.returncode == 0 and f"user={alice['address']}" in r.stdout,
                      f"dovecot: {alice['address']} logs in (any case) with the right password",
                      r.stdout + r.stderr)
            r = run(["doveadm", "-c", str(conf), "auth", "test", alice["address"], password + "x"])
            chk.check(r.returncode != 0, "dovecot: wrong password refused", r.stdout + r.stderr)
        for mb in ctx["accounts"]["mailboxes"]:
            r = run(["doveadm", "-c", str(conf), "user", "-f", "home", mb["address"]])
            home = f"{ctx['mail']['vmail']['root']}/{mb['domain']}/{mb['local_part']}"
            chk.check(r.stdout.strip() == home, f"dovecot: home of {mb['address']} is {home}",
                      r.stdout + r.stderr)
            r = run(["doveadm", "-c", str(conf), "user", "-f", "quota_rule", mb["address"]])
            want = f"*:bytes={mb['quota_bytes']}" if mb["quota_bytes"] else ""
            chk.check(r.returncode == 0 and r.stdout.strip() == want,
                      f"dovecot: quota of {mb['address']} = {mb['quota_bytes'] or 'unlimited'}",
                      r.stdout + r.stderr)
        r = run(["doveadm", "-c", str(conf), "user", "nobody@" + ctx["mail"]["primary_domain"]])
        chk.check(r.returncode == 67, "dovecot: unknown user does not exist (exit 67)", r.stdout + r.stderr)
        r = run(["doveadm", "-c", str(conf), "user", "-u", "*"])
        users = sorted(r.stdout.split())
        want_users = sorted(mb["address"] for mb in ctx["accounts"]["mailboxes"])
        chk.check(users == want_users, "dovecot: iterate_query lists every mailbox", r.stdout + r.stderr)
    finally:
        pidfile = base / "master.pid"
        pid = int(pidfile.read_text()) if pidfile.exists() else None
        run(["doveadm", "-c", str(conf), "stop"])
        if not wait_for(lambda: not pidfile.exists(), 15) and pid:
            os.kill(pid, signal.SIGTERM)
        chk.check(wait_for(lambda: not pidfile.exists(), 15), "dovecot stopped",
                  log.read_text() if log.exists() else "")


# --- OpenDKIM ------------------------------------------------------------------------------


def check_opendkim(out: Path, chk: Checker) -> None:
    if not have("opendkim"):
        chk.skip("opendkim", "opendkim not installed")
        return
    conf = out / "etc/opendkim.conf"
    local = out.parent / "opendkim-local.conf"
    # The tables are named by their host paths; point them at the rendered copies.
    local.write_text(conf.read_text().replace("/etc/opendkim/", f"{out}/etc/opendkim/"))
    r = run(["opendkim", "-n", "-x", str(local)])
    chk.check(r.returncode == 0 and not (r.stdout + r.stderr).strip(),
              "opendkim -n: config and tables load, no error", r.stdout + r.stderr)
    if have("opendkim-testkey"):
        # Reads KeyTable and each key (the DNS half fails here: no network; only the key matters).
        r = run(["opendkim-testkey", "-x", str(local), "-vvv"], timeout=60)
        loaded = r.stdout + r.stderr
        bad = [line for line in loaded.splitlines() if re.search(r"can't load key|no such file|syntax", line, re.I)]
        chk.check(not bad and "checking key" in loaded, "opendkim-testkey: KeyTable and keys load", loaded)


# --- MariaDB -------------------------------------------------------------------------------


class MariaDB:
    """A throwaway server: own datadir, socket, pid file and port; started with our cnf."""

    def __init__(self, base: Path, cnf: Path, port: int) -> None:
        self.base, self.cnf, self.port = base, cnf, port
        self.datadir = base / "data"
        self.socket = base / "mysqld.sock"
        self.pidfile = base / "mysqld.pid"
        self.proc: subprocess.Popen[str] | None = None
        self.log = base / "mysqld.log"

    def start(self) -> str:
        self.base.mkdir(parents=True)
        shutil.chown(self.base, "mysql", "mysql")
        r = run(["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}", "--user=mysql",
                 "--auth-root-authentication-method=socket", "--skip-test-db"], timeout=300)
        if r.returncode != 0:
            return "mariadb-install-db failed:\n" + r.stdout + r.stderr
        server = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        self.proc = subprocess.Popen(
            [server, f"--defaults-file={self.cnf}", "--user=mysql", f"--datadir={self.datadir}",
             f"--socket={self.socket}", f"--pid-file={self.pidfile}", f"--port={self.port}",
             f"--log-error={self.log}", "--skip-log-bin"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        if not wait_for(lambda: self.root("SELECT 1").returncode == 0 or self.proc.poll() is not None, 60):
            return "server did not answer within 60 s"
        if self.proc.poll() is not None:
            return "server exited:\n" + (self.log.read_text() if self.log.exists() else "")
        return ""

    def stop(self) -> bool:
        if self.proc is None:
            return True
        if self.proc.poll() is None:
            run(["mariadb-admin", "--no-defaults", f"--socket={self.socket}", "-uroot", "shutdown"])
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                self.proc.wait(timeout=30)
        return self.proc.poll() is not None

    def root(self, sql: str) -> subprocess.CompletedProcess[str]:
        return run(["mariadb", "--no-defaults", f"--socket={self.socket}", "-uroot",
                    "--batch", "--skip-column-names"], stdin=sql)

    def load(self, path: Path) -> subprocess.CompletedProcess[str]:
        return run(["mariadb", "--no-defaults", f"--socket={self.socket}", "-uroot"], stdin=path.read_text())

    def as_user(self, user: str, password: str, db: str, sql: str) -> subprocess.CompletedProcess[str]:
        """Over TCP to 127.0.0.1, as the daemons connect. Password via MYSQL_PWD, not argv."""
        env = dict(os.environ, MYSQL_PWD=password)
        return subprocess.run(
            ["mariadb", "--no-defaults", "--protocol=TCP", "-h", "127.0.0.1", f"-P{self.port}",
             f"-u{user}", db, "--batch", "--skip-column-names"],
            input=sql, capture_output=True, text=True, env=env, timeout=60)

    def dump(self, db: str) -> str:
        return self.root(
            f"USE `{db}`; SELECT * FROM domains ORDER BY name; SELECT * FROM mailboxes ORDER BY address;"
            " SELECT * FROM aliases ORDER BY source, destination;").stdout


def expected_maps(ctx: dict) -> dict[str, dict[str, set[str] | None]]:
    """What each Postfix map must answer for the context's accounts (None: not found)."""
    acc = ctx["accounts"]
    domains = {d: {d} for d in acc["domains"]}
    domains["unknown.invalid"] = None
    mailboxes: dict[str, set[str] | None] = {
        m["address"]: {f"{m['domain']}/{m['local_part']}/Maildir/"} for m in acc["mailboxes"]}
    aliases: dict[str, set[str] | None] = {}
    for a in acc["aliases"]:
        aliases.setdefault(a["source"], set()).add(a["destination"])  # type: ignore[union-attr]
    logins: dict[str, set[str] | None] = {m["address"]: {m["address"]} for m in acc["mailboxes"]}
    for a in acc["aliases"]:
        logins.setdefault(a["source"], set()).add(a["destination"])  # type: ignore[union-attr]
    primary = ctx["mail"]["primary_domain"]
    for table in (mailboxes, aliases, logins):
        table[f"nobody@{primary}"] = None
    for m in acc["mailboxes"]:
        aliases.setdefault(m["address"], None)
    return {"virtual_domains": domains, "virtual_mailboxes": mailboxes,
            "virtual_aliases": aliases, "sender_login": logins}


def check_maps(out: Path, ctx: dict, chk: Checker, label: str) -> None:
    postfix_dir = out / "etc/postfix"
    for table, cases in expected_maps(ctx).items():
        cf = postfix_dir / "mysql" / f"{table}.cf"
        for key, want in cases.items():
            r = run(["postmap", "-c", str(postfix_dir), "-q", key, f"mysql:{cf}"])
            got = {v.strip() for v in r.stdout.strip().split(",")} if r.returncode == 0 else None
            ok = got == want and "warning" not in r.stderr.lower()
            chk.check(ok, f"postmap {table} {key} -> {', '.join(sorted(want)) if want else 'not found'} ({label})",
                      f"exit {r.returncode}, got {got}\n{r.stderr}")


def check_mariadb(fixture: dict, ctx: dict, out: Path, tmp: Path, chk: Checker) -> None:
    if not (have("mariadb-install-db") and have("mariadb")):
        chk.skip("mariadb", "mariadb-server not installed")
        return
    db = MariaDB(tmp / "mariadb", out / "etc/mysql/mariadb.conf.d/90-mailstack.cnf", ctx["db"]["port"])
    error = db.start()
    try:
        if not chk.check(not error, "mariadb starts with the rendered 90-mailstack.cnf", error):
            return
        r = db.root("SELECT @@bind_address, @@skip_name_resolve, @@local_infile, @@character_set_server;")
        chk.check(r.stdout.split() == ["127.0.0.1", "1", "0", "utf8mb4"],
                  "mariadb: 90-mailstack.cnf settings in effect", r.stdout + r.stderr)
        # Something for db-users.sql to clean up, as an old install might have.
        db.root("CREATE USER ''@'localhost'; CREATE USER 'root'@'%' IDENTIFIED BY 'x'; CREATE DATABASE test;")
        mailstack = out / "etc/mailstack"
        for name in ("schema.sql", "schema.sql", "db-users.sql", "db-users.sql", "accounts.sql"):
            r = db.load(mailstack / name)
            chk.check(r.returncode == 0 and not r.stderr.strip(), f"load {name} as root", r.stdout + r.stderr)
        first = db.dump(ctx["db"]["name"])
        r = db.load(mailstack / "accounts.sql")
        chk.check(r.returncode == 0 and db.dump(ctx["db"]["name"]) == first,
                  "load accounts.sql again: nothing changes", r.stderr)
        acc = ctx["accounts"]
        counts = db.root(f"USE `{ctx['db']['name']}`; SELECT (SELECT COUNT(*) FROM domains),"
                         " (SELECT COUNT(*) FROM mailboxes), (SELECT COUNT(*) FROM aliases);").stdout.split()
        want = [str(len(acc["domains"])), str(len(acc["mailboxes"])), str(len(acc["aliases"]))]
        chk.check(counts == want, f"tables hold the declared rows {want}", f"got {counts}")
        r = db.root("SELECT COUNT(*) FROM mysql.global_priv WHERE User = ''"
                    " OR (User = 'root' AND Host NOT IN ('localhost', '127.0.0.1', '::1'));"
                    " SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = 'test';")
        chk.check(r.stdout.split() == ["0", "0"], "no anonymous user, no remote root, no test database",
                  r.stdout + r.stderr)

        check_maps(out, ctx, chk, "fixture")
        check_privileges(db, ctx, chk)
        check_dovecot_queries(db, ctx, out, chk)
        check_dovecot_auth(out, ctx, tmp, chk)

        # Remove a mailbox (and the aliases pointing at it) from the desired state.
        gone = ctx["accounts"]["mailboxes"][-1]
        smaller = copy.deepcopy(ctx)
        smaller["accounts"]["mailboxes"] = [m for m in acc["mailboxes"] if m != gone]
        smaller["accounts"]["aliases"] = [a for a in acc["aliases"] if a["destination"] != gone["address"]]
        smaller_out = tmp / "smaller"
        render_one(smaller, "etc/mailstack/accounts.sql.j2", smaller_out / "etc/mailstack/accounts.sql")
        r = db.load(smaller_out / "etc/mailstack/accounts.sql")
        chk.check(r.returncode == 0, f"load accounts.sql without {gone['address']}", r.stderr)
        left = db.root(f"USE `{ctx['db']['name']}`; SELECT COUNT(*) FROM mailboxes WHERE address = {sql_literal(gone['address'])};")
        chk.check(left.stdout.strip() == "0", f"row of {gone['address']} is gone", left.stdout + left.stderr)
        check_maps(out, smaller, chk, f"without {gone['address']}")
        # And back: the full state again.
        r = db.load(mailstack / "accounts.sql")
        chk.check(r.returncode == 0 and db.dump(ctx["db"]["name"]) == first,
                  f"load accounts.sql with {gone['address']} again: same rows as before", r.stderr)
    finally:
        chk.check(db.stop(), "mariadb stopped")


def check_privileges(db: MariaDB, ctx: dict, chk: Checker) -> None:
    name = ctx["db"]["name"]
    pf, dc = ctx["db"]["postfix"], ctx["db"]["dovecot"]
    some = ctx["accounts"]["mailboxes"][0]["address"]
    allowed = {
        "postfix": (pf, ["SELECT name FROM domains", "SELECT source, destination FROM aliases",
                         "SELECT address, domain, local_part, enabled FROM mailboxes"]),
        "dovecot": (dc, ["SELECT address, password_hash, quota_bytes, enabled FROM mailboxes"]),
    }
    refused = {
        "postfix": (pf, ["SELECT password_hash FROM mailboxes",
                         "INSERT INTO domains (name) VALUES ('evil.example')",
                         f"UPDATE mailboxes SET enabled = 0 WHERE address = {sql_literal(some)}",
                         "DELETE FROM aliases", "CREATE TABLE t (i INT)", "SELECT User FROM mysql.user"]),
        "dovecot": (dc, ["SELECT * FROM aliases", "SELECT * FROM domains",
                         f"UPDATE mailboxes SET password_hash = 'x' WHERE address = {sql_literal(some)}",
                         "DELETE FROM mailboxes", "SELECT User FROM mysql.user"]),
    }
    for who, (cred, statements) in allowed.items():
        for stmt in statements:
            r = db.as_user(cred["user"], cred["password"], name, stmt + ";")
            chk.check(r.returncode == 0, f"{who} user may: {stmt}", r.stderr)
    for who, (cred, statements) in refused.items():
        for stmt in statements:
            r = db.as_user(cred["user"], cred["password"], name, stmt + ";")
            chk.check(r.returncode != 0 and "denied" in r.stderr, f"{who} user may not: {stmt}",
                      f"exit {r.returncode}: {r.stdout}{r.stderr}")


def check_dovecot_queries(db: MariaDB, ctx: dict, out: Path, chk: Checker) -> None:
    """Run dovecot-sql.conf.ext's queries as the dovecot user, %u filled in as Dovecot would."""
    conf = (out / "etc/dovecot/dovecot-sql.conf.ext").read_text()
    queries = dict(re.findall(r"^(password_query|user_query|iterate_query) = (.+)$", conf, re.MULTILINE))
    cred = ctx["db"]["dovecot"]
    for mb in ctx["accounts"]["mailboxes"]:
        q = queries["password_query"].replace("%u", mb["address"])
        r = db.as_user(cred["user"], cred["password"], ctx["db"]["name"], q + ";")
        chk.check(r.stdout.split("\t") == [mb["address"], mb["password_hash"] + "\n"],
                  f"dovecot password_query for {mb['address']}", r.stdout + r.stderr)
        q = queries["user_query"].replace("%u", mb["address"])
        r = db.as_user(cred["user"], cred["password"], ctx["db"]["name"], q + ";")
        want = f"*:bytes={mb['quota_bytes']}" if mb["quota_bytes"] else "NULL"
        chk.check(r.stdout.strip() == want, f"dovecot user_query for {mb['address']}: quota_rule {want}",
                  r.stdout + r.stderr)


# --- main ----------------------------------------------------------------------------------

# Clear-text passwords of the fixture's hashes (only for the Dovecot login test).
FIXTURE_PASSWORDS = {"alice@example.org": "alice-secret", "bob@example.net": "bob-secret"}


def main(argv: list[str]) -> int:
    keep = "--keep" in argv
    chk = Checker()
    fixture = yaml.safe_load(FIXTURE.read_text())
    tmp = Path(tempfile.mkdtemp(prefix="mailstack-check-"))
    tmp.chmod(0o755)  # the mysql user must reach its datadir below
    try:
        print(f"== render ({len(template_names())} templates) into {tmp}")
        render_all(fixture, tmp / "fixture", chk, "fixture")
        no_relay = copy.deepcopy(fixture)
        no_relay["mail"]["relay"] = None
        render_all(no_relay, tmp / "no-relay", chk, "relay: null")
        ctx = local_context(fixture, tmp, chk)
        out = tmp / "local"
        render_all(ctx, out, chk, "local paths")

        print("== postfix")
        check_postfix(tmp / "fixture", tmp, chk, "relay")
        check_postfix(tmp / "no-relay", tmp, chk, "no relay")
        print("== dovecot")
        check_doveconf(out, chk)
        print("== opendkim")
        check_opendkim(out, chk)
        print("== mariadb, postfix maps, dovecot queries")
        check_mariadb(fixture, ctx, out, tmp, chk)
    finally:
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    if chk.skipped:
        print(f"skipped (tool not installed): {', '.join(chk.skipped)}")
    print(f"{chk.passed} passed, {len(chk.failures)} failed")
    for name in chk.failures:
        print(f"  failed: {name}")
    # In a container that installed the daemons, a missing tool is itself a failure.
    if chk.skipped and os.environ.get("MAILSTACK_REQUIRE_TOOLS"):
        print("MAILSTACK_REQUIRE_TOOLS is set: skipped checks count as failures")
        return 1
    return 1 if chk.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
