"""Config check: render a full site and let the real daemons judge it, inside a test-bed host.

Every template must pass the daemon's own checker (postconf/postfix check, doveconf,
opendkim -n); the SQL templates are loaded into MariaDB and the Postfix maps and Dovecot's
SQL auth are queried for real. A template the daemons reject fails CI.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import testbed
from typer.testing import CliRunner

from mailstack.cli import app
from mailstack.render.context import FTS

pytestmark = pytest.mark.testbed
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """A site with two domains, users, aliases (one fan-out, one external) and a relay."""
    root = tmp_path_factory.mktemp("cfg")
    site = root / "site"
    run = CliRunner().invoke
    steps = [
        ["init", str(site), "--domain", "example.org", "--hostname", "mail.example.org",
         "--host", "203.0.113.7"],
        ["--site", str(site), "domain", "add", "example.net"],
        ["--site", str(site), "user", "add", "alice@example.org", "--password-stdin"],
        ["--site", str(site), "user", "add", "bob@example.net", "--quota", "2G",
         "--password-stdin"],
        # postmaster@example.org -> alice: the domain's first user (automatic)
        ["--site", str(site), "alias", "add", "team@example.net", "alice@example.org",
         "bob@example.net", "friend@elsewhere.test"],
        ["--site", str(site), "relay", "set", "[smtp.relay.test]:587", "relayuser",
         "--password-stdin"],
    ]
    for args in steps:
        result = run(app, args, input=PASSWORD + "\n")
        assert result.exit_code == 0, (args, result.output)
    # A relay's quota (options.outbound): the limits Postfix's queue manager reads only when
    # it first delivers over SMTP (test_the_queue_manager_takes_the_outbound_limits).
    config = site / "mailstack.yml"
    text = config.read_text()
    assert "    concurrency: 20\n    rate_delay: 0s\n" in text
    config.write_text(text.replace("    concurrency: 20\n    rate_delay: 0s\n",
                                   "    concurrency: 5\n    rate_delay: 12s\n"))
    result = run(app, ["--site", str(site), "render", "--out", str(root / "build")])
    assert result.exit_code == 0, result.output
    return root / "build" / "mail.example.org"


@pytest.fixture(scope="module")
def host(rendered: Path):
    testbed.ensure_engine()
    name = f"mailstack-cfg-{uuid.uuid4().hex[:8]}"
    testbed.start_host(name, testbed.stack_image(), hostname="mail.example.org")
    try:
        sh = lambda script: testbed.exec_in(name, ["sh", "-ec", script])  # noqa: E731
        # resolv.conf is a mount point in a container (the resolver role writes it in place).
        (rendered / "etc" / "resolv.conf").unlink()
        subprocess.run(["docker", "cp", f"{rendered}/.", f"{name}:/"], check=True)
        # The rendered tree brings the site's key; the tls role makes a certificate for it.
        sh("openssl req -x509 -key /etc/mailstack/tls/privkey.pem -days 2 "
           "-subj /CN=mail.example.org -out /etc/mailstack/tls/fullchain.pem")
        sh("chown -R opendkim:opendkim /etc/opendkim/keys && chmod 0600 "
           "/etc/opendkim/keys/*/*.private && postmap /etc/postfix/sasl_passwd")
        yield name
    finally:
        testbed.remove_host(name)


def run(host: str, *cmd: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return testbed.exec_in(host, list(cmd), input=input, check=False)


def assert_clean(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stderr or proc.stdout
    # Diagnostics look like "postconf: warning: …" / "doveconf: Error: …" on either stream.
    diagnostic = re.compile(r"^\S+: (warning|error|fatal)\b", re.IGNORECASE)
    bad = [line for line in (proc.stdout + proc.stderr).splitlines() if diagnostic.match(line)]
    assert not bad, bad


def test_postfix_accepts_main_cf_and_master_cf(host):
    assert_clean(run(host, "postconf", "-n"))
    assert_clean(run(host, "postconf", "-M"))
    assert_clean(run(host, "postfix", "check"))


@pytest.mark.parametrize(("param", "expected"), [
    ("myhostname", "mail.example.org"),
    ("mydestination", "localhost"),
    ("disable_vrfy_command", "yes"),
    ("smtpd_tls_auth_only", "yes"),
    ("allow_percent_hack", "no"),
    ("swap_bangpath", "no"),
    ("delay_warning_time", "4h"),
    ("maximal_queue_lifetime", "5d"),
    ("bounce_queue_lifetime", "5d"),
    ("milter_default_action", "tempfail"),
    ("relayhost", "[smtp.relay.test]:587"),
    ("smtpd_etrn_restrictions", "reject"),
    ("smtp_destination_concurrency_limit", "5"),
    ("smtp_destination_rate_delay", "12s"),
    ("smtp_destination_concurrency_failed_cohort_limit", "10"),
    # Dovecot's LMTP deliveries keep Postfix's defaults.
    ("lmtp_destination_concurrency_limit", "20"),
    ("lmtp_destination_rate_delay", "0s"),
    # The quota policy: nobody answering is a 4xx, never a 5xx; a hung one is not waited for.
    ("smtpd_policy_service_default_action",
     "451 4.3.5 Mailbox quota cannot be checked; try again later"),
    ("smtpd_policy_service_timeout", "10s"),
    ("mailbox_quota", "check_policy_service unix:private/quota-status"),
])
def test_postfix_effective_values(host, param, expected):
    proc = run(host, "postconf", "-xh", param)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


def test_postfix_relay_restrictions_refuse_unauthenticated_relay(host):
    relay = run(host, "postconf", "-h", "smtpd_relay_restrictions").stdout
    assert "reject_unauth_destination" in relay
    master = run(host, "postconf", "-M").stdout
    for service in ("submission/inet", "submissions/inet"):
        line = next(line for line in master.splitlines() if line.startswith(service.split("/")[0]
                                                                                + " "))
        assert line, service
    params = run(host, "postconf", "-P").stdout
    assert "submission/inet/smtpd_tls_security_level = encrypt" in params
    assert "submissions/inet/smtpd_tls_wrappermode = yes" in params
    assert "submission/inet/smtpd_sasl_auth_enable = yes" in params
    # Submitted mail is cleaned of the Received header naming the user's computer.
    for service in ("submission/inet", "submissions/inet"):
        assert f"{service}/cleanup_service_name = subcleanup" in params
    assert ("subcleanup/unix/header_checks = regexp:{ {/^Received:/ IGNORE}, "
            "{/^X-Originating-IP:/ IGNORE}, {/^X-Forward:/ IGNORE} }") in params


def test_postfix_checker_catches_a_bad_parameter(host):
    """The check above can fail: an unknown parameter is reported."""
    proc = run(host, "sh", "-c", "cp -a /etc/postfix /tmp/pf && "
                                 "echo 'smtpd_tls_security_levle = may' >> /tmp/pf/main.cf && "
                                 "postconf -c /tmp/pf -n >/dev/null")
    assert "unused parameter: smtpd_tls_security_levle" in proc.stderr


def test_nginx_accepts_its_config(host):
    # Debian's example site is the other default server on port 80 (the web role removes it).
    run(host, "rm", "-f", "/etc/nginx/sites-enabled/default")
    assert_clean(run(host, "nginx", "-t", "-q"))


def test_dovecot_accepts_its_config(host):
    proc = run(host, "doveconf", "-n")
    assert_clean(proc)
    assert "ssl = required" in proc.stdout
    assert run(host, "doveconf", "-h", "disable_plaintext_auth").stdout.strip() == "yes"
    assert run(host, "doveconf", "-h", "ssl_min_protocol").stdout.strip() == "TLSv1.2"


def test_dovecot_accepts_its_config_with_pop3(rendered, host):
    """options.pop3 adds Dovecot's pop3 protocol (its package is in the stack image)."""
    from mailstack.render.renderer import render_site
    from mailstack.site.directory import Site

    site = Site(rendered.parent.parent / "site")
    config = site.root / "mailstack.yml"
    config.write_text(config.read_text().replace("  pop3: false\n", "  pop3: true\n"))
    try:
        [files] = render_site(site).values()
    finally:
        config.write_text(config.read_text().replace("  pop3: true\n", "  pop3: false\n"))
    [conf] = [f.content for f in files if str(f.path) == "etc/dovecot/dovecot.conf"]
    run(host, "sh", "-c", "cat > /tmp/dovecot-pop3.conf", input=conf)
    proc = run(host, "doveconf", "-n", "-c", "/tmp/dovecot-pop3.conf")
    assert_clean(proc)
    assert "protocols = imap pop3 lmtp sieve" in proc.stdout
    assert "port = 995" in proc.stdout


def test_the_quota_warning_script_parses(host):
    proc = run(host, "sh", "-n", "/etc/dovecot/quota-warning.sh")
    assert proc.returncode == 0, proc.stderr


def test_opendkim_accepts_its_config(host):
    assert_clean(run(host, "opendkim", "-n", "-x", "/etc/opendkim.conf"))


def test_rspamd_accepts_its_settings(host):
    proc = run(host, "rspamadm", "configtest")
    assert proc.returncode == 0 and "syntax OK" in proc.stdout, proc.stdout + proc.stderr
    # The milter scans by itself, on a unix socket in Postfix's queue directory; only this
    # host counts as local.
    dump = run(host, "rspamadm", "configdump", "worker").stdout
    assert "self_scan = true" in dump, dump
    assert 'bind_socket = "/var/spool/postfix/rspamd/milter.sock mode=0666 owner=_rspamd"' in dump, dump
    options = run(host, "rspamadm", "configdump", "options").stdout
    assert "172.16.0.0/12" not in options and "127.0.0.0/8" in options, options


def test_unbound_accepts_its_config(host):
    proc = run(host, "unbound-checkconf")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The root's anchor as Debian ships it: dpkg finds its conffile unchanged.
    verify = run(host, "dpkg", "--verify", "unbound")
    assert "root-auto-trust-anchor-file.conf" not in verify.stdout, verify.stdout


def test_unbound_accepts_trust_anchors_without_the_root(host):
    """The golden files of options.resolver.trust_anchors with dnssec false, as unbound
    reads them (it parses each anchor's record)."""
    golden = Path(__file__).parent.parent / "golden" / "trust-anchors" / "etc" / "unbound"
    conf = "".join((golden / "unbound.conf.d" / name).read_text()
                   for name in ("mailstack.conf", "root-auto-trust-anchor-file.conf"))
    testbed.exec_in(host, ["sh", "-c", "cat > /tmp/anchors.conf"], input=conf)
    proc = run(host, "unbound-checkconf", "/tmp/anchors.conf")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broken = conf.replace("DS 11804 13 2 AB", "DS 11804 13 2 ZZ")
    testbed.exec_in(host, ["sh", "-c", "cat > /tmp/broken.conf"], input=broken)
    assert run(host, "unbound-checkconf", "/tmp/broken.conf").returncode != 0


def test_the_sieve_scripts_compile(host):
    for name in ("spam-to-junk", "learn-spam", "learn-ham"):
        proc = run(host, "sievec", "-P", "sieve_imapsieve", "-P", "sieve_extprograms", "-x",
                   "+vnd.dovecot.pipe +vnd.dovecot.environment",
                   f"/etc/dovecot/sieve/{name}.sieve", f"/tmp/{name}.svbin")
        assert proc.returncode == 0, (name, proc.stderr)


def postfix_password(host: str) -> str:
    cf = run(host, "cat", "/etc/postfix/mysql/virtual_aliases.cf").stdout
    return next(line.split("=", 1)[1].strip() for line in cf.splitlines()
                if line.startswith("password"))


def load_sql(host: str) -> None:
    for name in ("schema.sql", "db-users.sql", "accounts.sql"):
        proc = run(host, "sh", "-c", f"mysql < /etc/mailstack/{name}")
        assert proc.returncode == 0, (name, proc.stderr)


def postmap(host: str, key: str, table: str) -> str:
    proc = run(host, "postmap", "-q", key, f"mysql:/etc/postfix/mysql/{table}.cf")
    assert proc.returncode in (0, 1), proc.stderr
    assert "warning" not in proc.stderr, proc.stderr
    return proc.stdout.strip()


def test_sql_schema_users_and_lookups(host):
    run(host, "systemctl", "restart", "mariadb")
    load_sql(host)
    load_sql(host)  # idempotent: a second load changes nothing and does not fail
    # The domains are listed in main.cf; the tables are asked about our domains only.
    assert run(host, "postconf", "-h", "virtual_mailbox_domains").stdout.strip() == (
        "example.net, example.org")
    assert run(host, "postconf", "-h", "virtual_alias_domains").stdout.strip() == ""
    assert postmap(host, "alice@example.org", "virtual_mailboxes")
    assert postmap(host, "ghost@example.org", "virtual_mailboxes") == ""
    assert postmap(host, "postmaster@example.org", "virtual_aliases") == "alice@example.org"
    team = set(postmap(host, "team@example.net", "virtual_aliases").split(","))
    assert team == {"alice@example.org", "bob@example.net", "friend@elsewhere.test"}
    # Sender ownership: alice owns her address and the aliases that deliver to her.
    assert "alice@example.org" in postmap(host, "alice@example.org", "sender_login")
    assert "alice@example.org" in postmap(host, "postmaster@example.org", "sender_login")
    assert "alice@example.org" not in postmap(host, "bob@example.net", "sender_login")
    # Only a mailbox with a quota is asked about at RCPT (its restriction class).
    assert postmap(host, "bob@example.net", "quota_mailboxes") == "mailbox_quota"
    for key in ("alice@example.org", "team@example.net", "postmaster@example.org"):
        assert postmap(host, key, "quota_mailboxes") == "", key


def test_lookups_outside_our_domains_never_reach_the_database(host):
    """The recipients of outgoing mail, @domain and bare-domain keys: not found, and not one
    query (the tables' `domain` filter); addresses at our domains are still asked."""
    load_sql(host)
    questions = lambda: int(run(host, "mysql", "-N", "-e",  # noqa: E731
                                "SHOW GLOBAL STATUS LIKE 'Questions'").stdout.split()[1])
    before = questions()
    own = questions() - before  # what asking costs by itself (the client's own statements)
    for table in ("virtual_aliases", "virtual_mailboxes", "sender_login", "quota_mailboxes"):
        for key in ("friend@elsewhere.test", "@example.org", "example.org", "alice"):
            assert postmap(host, key, table) == "", (table, key)
    after = questions()
    assert after - before == 2 * own
    assert postmap(host, "postmaster@example.org", "virtual_aliases") == "alice@example.org"
    assert questions() - after > own


def test_lookup_users_can_only_select(host):
    load_sql(host)
    grants = run(host, "mysql", "-N", "-e", "SHOW GRANTS FOR 'mailstack_postfix'@'127.0.0.1'")
    assert grants.returncode == 0, grants.stderr
    lines = grants.stdout.upper().splitlines()
    selects = [g for g in lines if g.startswith("GRANT SELECT ")]
    assert selects, lines
    for grant in lines:
        # USAGE (= connect only) or SELECT on mailstack tables, possibly column-restricted.
        assert re.match(r"^GRANT (USAGE ON \*\.\*|SELECT (\([`A-Z_, ]+\) )?ON `MAILSTACK`\.)",
                        grant), grant
    # Postfix never needs the password hashes.
    assert not any("PASSWORD_HASH" in g or "`MAILBOXES` " in g.split(" TO ")[0].split("ON")[0]
                   for g in selects)
    denied = run(host, "mysql", "-h", "127.0.0.1", "-u", "mailstack_postfix",
                 f"-p{postfix_password(host)}", "-e",
                 "SELECT password_hash FROM mailstack.mailboxes")
    assert denied.returncode != 0 and "denied" in denied.stderr
    anon = run(host, "mysql", "-N", "-e", "SELECT COUNT(*) FROM mysql.user WHERE user=''")
    assert anon.stdout.strip() == "0"


def test_dovecot_sql_auth_accepts_the_argon2id_hash(host):
    load_sql(host)
    run(host, "sh", "-c", "getent group vmail || groupadd -g 5000 vmail; getent passwd vmail "
                          "|| useradd -u 5000 -g vmail -d /var/mail/vhosts -s /usr/sbin/nologin "
                          "vmail; mkdir -p /var/mail/vhosts && chown vmail:vmail /var/mail/vhosts")
    # The attachments' decoder's user, which the dovecot role makes (Dovecot will not start
    # a service whose user does not exist).
    decoder = FTS["decoder"]["user"]
    run(host, "sh", "-c", f"getent passwd {decoder} || useradd --system -s /usr/sbin/nologin {decoder}")
    restart = run(host, "systemctl", "restart", "dovecot")
    assert restart.returncode == 0, run(host, "journalctl", "-u", "dovecot", "-n", "20").stdout
    good = run(host, "doveadm", "auth", "test", "alice@example.org", PASSWORD)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "auth succeeded" in good.stdout
    bad = run(host, "doveadm", "auth", "test", "alice@example.org", PASSWORD + "x")
    assert bad.returncode != 0 and "auth failed" in bad.stdout


def test_the_queue_manager_takes_the_outbound_limits(host):
    """`postfix check` does not read the smtp transport's limits: the queue manager parses
    them when it first has mail for that transport, and a value it cannot parse stops it
    then (`1.5s`: "fatal: parameter smtp_destination_rate_delay: bad time value or unit").
    So Postfix runs here with the rendered files and one message goes out through the relay
    (it fails to resolve and is deferred: this host resolves nothing). Only the milters are
    left out, whose daemons this host does not run with these files."""
    load_sql(host)
    run(host, "sh", "-c", "echo 'nameserver 127.0.0.1' > /etc/resolv.conf")
    # As the postfix role places them: proxymap reads the lookup tables as postfix.
    for command in ("chgrp postfix /etc/postfix/mysql/*.cf && chmod 0640 /etc/postfix/mysql/*.cf",
                    "newaliases", "postconf -e smtpd_milters= non_smtpd_milters=",
                    "systemctl restart postfix@-"):
        proc = run(host, "sh", "-c", command)
        assert proc.returncode == 0, (command, proc.stdout + proc.stderr)
    since = run(host, "date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    sent = run(host, "sendmail", "-f", "alice@example.org", "friend@elsewhere.test",
               input="Subject: outbound limits\n\nbody\n")
    assert sent.returncode == 0, sent.stderr
    deadline = time.monotonic() + 30
    log = ""
    while "status=deferred" not in log and time.monotonic() < deadline:
        time.sleep(0.5)
        log = run(host, "journalctl", "-u", "postfix@-", "--since", since, "--no-pager").stdout
    assert "to=<friend@elsewhere.test>, relay=none" in log and "status=deferred" in log, log
    assert not re.search(r"postfix/qmgr\[\d+\]: (fatal|warning)", log), log


# Last: it adds the virus scanner's files (options.antivirus: clamav) to the host.
ANTIVIRUS_GOLDEN = Path(__file__).parent.parent / "golden" / "antivirus"


def test_clamd_and_rspamd_accept_the_antivirus_settings(host):
    subprocess.run(["docker", "cp", f"{ANTIVIRUS_GOLDEN}/.", f"{host}:/"], check=True)
    clamconf = run(host, "clamconf", "-c", "/etc/clamav")
    # clamconf's exit status stays 0 on a bad line; it prints "ERROR: …".
    assert clamconf.returncode == 0 and "ERROR" not in clamconf.stdout + clamconf.stderr, (
        clamconf.stdout + clamconf.stderr)
    assert "StreamMaxLength = \"53477376\"" in clamconf.stdout or "53477376" in clamconf.stdout, (
        clamconf.stdout)
    proc = run(host, "rspamadm", "configtest")
    assert proc.returncode == 0 and "syntax OK" in proc.stdout, proc.stdout + proc.stderr
    antivirus = run(host, "rspamadm", "configdump", "antivirus").stdout
    assert 'servers = "/run/clamav/clamd.ctl"' in antivirus and 'action = "reject"' in antivirus, antivirus
    force = run(host, "rspamadm", "configdump", "force_actions").stdout
    assert 'action = "soft reject"' in force and 'expression = "CLAM_VIRUS_FAIL"' in force, force
    for unit in ("clamav-daemon.service", "clamav-daemon.socket"):
        run(host, "systemctl", "daemon-reload")
        verify = run(host, "systemd-analyze", "verify", unit)
        assert "mailstack.conf" not in verify.stdout + verify.stderr, verify.stdout + verify.stderr
