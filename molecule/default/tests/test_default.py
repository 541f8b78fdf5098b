"""What site.yml must leave behind, checked on the converged container with real clients.

Everything runs INSIDE the container (testinfra's docker backend = `docker exec`):
the daemons' own tools for the effective configuration, `ss` and `nft` for the network
side, `mariadb` for the grants, and for the mail path a real round trip: swaks submits
with STARTTLS/implicit TLS + AUTH, Postfix signs through OpenDKIM and hands over to
Dovecot via LMTP, Python's imaplib reads the message back over IMAPS (certificate and
host name verified), and dkimpy verifies the signature with the public half of the key.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest

HOSTNAME = "mail.example.org"
DOMAIN = "example.org"
USER = "alice@example.org"
PASSWORD = "correct horse battery staple"
PUBLIC_PORTS = (25, 80, 443, 465, 587, 993, 4190)


def sh(host, command: str, *args: str) -> str:
    """Run a command that must succeed; return its stdout."""
    result = host.run(command, *args)
    assert result.rc == 0, f"{command % args if args else command}: {result.stderr or result.stdout}"
    return result.stdout


def listeners(host) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket."""
    found = []
    for line in sh(host, "ss -Hltn").splitlines():
        local = line.split()[3]
        addr, _, port = local.rpartition(":")
        found.append((addr.strip("[]"), int(port)))
    return found


# --------------------------------------------------------------------------- services


@pytest.mark.parametrize(
    "unit", ["postfix@-", "dovecot", "opendkim", "mariadb", "nftables", "rspamd",
             "redis-server", "unbound", "nginx", "postfix-mta-sts-resolver",
             "mailstack-acme.timer"]
)
def test_service_running_and_enabled(host, unit):
    service = host.service(unit)
    assert service.is_running, sh(host, "systemctl status --no-pager %s || true", unit)
    assert service.is_enabled


def test_no_failed_units(host):
    assert sh(host, "systemctl --failed --no-legend --plain").strip() == ""


# --------------------------------------------------------------------------- network


@pytest.mark.parametrize("port", PUBLIC_PORTS)
def test_mail_port_listens_on_all_addresses(host, port):
    addrs = {a for a, p in listeners(host) if p == port}
    assert addrs & {"0.0.0.0", "*"}, f"port {port} listens on {addrs or 'nothing'}"


def test_no_plain_imap(host):
    assert not [a for a, p in listeners(host) if p == 143]


@pytest.mark.parametrize("port", [3306, 11334, 6379, 53, 8461])
def test_backend_port_on_loopback_only(host, port):
    addrs = {a for a, p in listeners(host) if p == port}
    assert addrs == {"127.0.0.1"}, f"port {port} listens on {addrs}"


@pytest.mark.parametrize(("directory", "socket", "owner", "group"), [
    ("/var/spool/postfix/rspamd", "milter.sock", "_rspamd", "postfix"),
    ("/var/spool/postfix/opendkim", "opendkim.sock", "opendkim", "opendkim"),
])
def test_milters_listen_on_sockets_only_postfix_reaches(host, directory, socket, owner, group):
    """Unix sockets in Postfix's queue directory, no TCP port: no other local process may
    have a message signed or scanned, and no milter reply waits for a delayed ACK."""
    d = host.file(directory)
    assert (d.user, d.group, d.mode) == (owner, group, 0o750)
    assert host.file(f"{directory}/{socket}").is_socket
    assert "opendkim" in sh(host, "id -nG postfix").split()
    assert not [p for _, p in listeners(host) if p in (8891, 11332)]


def test_firewall_opens_only_the_mail_web_and_ssh_ports(host):
    ruleset = json.loads(sh(host, "nft -j list table inet mailstack"))["nftables"]
    chains = [i["chain"] for i in ruleset if "chain" in i]
    (input_chain,) = [c for c in chains if c.get("hook") == "input"]
    assert input_chain["policy"] == "drop"
    ports: set[int] = set()
    for item in ruleset:
        rule = item.get("rule")
        if not rule:
            continue
        for expr in rule["expr"]:
            match = expr.get("match", {})
            left = match.get("left", {}).get("payload", {})
            if left.get("protocol") == "tcp" and left.get("field") == "dport":
                right = match["right"]
                values = right["set"] if isinstance(right, dict) else [right]
                ports.update(int(v) for v in values)
    assert ports == {22, 25, 80, 443, 465, 587, 993, 4190}


# --------------------------------------------------------------------------- host


def test_unattended_upgrades_install_security_updates_only(host):
    periodic = sh(host, "apt-config dump APT::Periodic")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in periodic
    assert 'APT::Periodic::Update-Package-Lists "1";' in periodic
    origins = re.findall(r'^Unattended-Upgrade::Origins-Pattern:: "(.*)";$',
                         sh(host, "apt-config dump Unattended-Upgrade::Origins-Pattern"), re.M)
    assert origins and all("label=Debian-Security" in o for o in origins), origins


def test_no_policy_rc_d_left_behind(host):
    # common holds services during its install with a policy-rc.d, then removes it.
    assert not host.file("/usr/sbin/policy-rc.d").exists


# --------------------------------------------------------------------------- config


def test_host_identity(host):
    assert host.file("/etc/mailname").content_string.strip() == HOSTNAME
    assert sh(host, "postconf -h myhostname").strip() == HOSTNAME


@pytest.mark.parametrize(
    "param, value",
    [
        ("smtpd_tls_auth_only", "yes"),
        ("smtpd_sasl_type", "dovecot"),
        ("virtual_transport", "lmtp:unix:private/dovecot-lmtp"),
        ("smtpd_milters", "unix:rspamd/milter.sock, unix:opendkim/opendkim.sock"),
        ("non_smtpd_milters", "unix:opendkim/opendkim.sock"),
        ("milter_default_action", "tempfail"),
        ("smtpd_tls_chain_files", "/etc/mailstack/tls/privkey.pem, /etc/mailstack/tls/fullchain.pem"),
    ],
)
def test_postfix_effective_config(host, param, value):
    assert sh(host, "postconf -h %s", param).strip() == value


@pytest.mark.parametrize(
    "setting, value",
    [
        ("ssl", "required"),
        ("disable_plaintext_auth", "yes"),
        ("protocols", "imap lmtp sieve"),
        ("mail_uid", "5000"),
    ],
)
def test_dovecot_effective_config(host, setting, value):
    assert sh(host, "doveconf -h %s", setting).strip() == value


def test_daemons_accept_their_config(host):
    check = host.run("postfix check")
    assert check.rc == 0 and not check.stderr, check.stderr
    sh(host, "doveconf -n")
    sh(host, "opendkim -n -x /etc/opendkim.conf")
    sh(host, "rspamadm configtest")
    sh(host, "unbound-checkconf")


def test_host_resolves_through_its_own_unbound(host):
    assert "nameserver 127.0.0.1" in host.file("/etc/resolv.conf").content_string
    assert "nameserver 127.0.0.1" in host.file("/var/spool/postfix/etc/resolv.conf").content_string


def test_rspamd_answers_and_refuses_gtube(host):
    """Through the controller's socket (root may); its port wants the web password."""
    gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
    out = sh(host, "printf 'Subject: t\\n\\n%%s\\n' %s | rspamc -h /run/rspamd/controller.sock",
             gtube)
    assert "Action: reject" in out, out
    refused = host.run("rspamc -h 127.0.0.1:11334 stat")
    assert "401" in refused.stdout + refused.stderr


def test_global_sieve_scripts_are_compiled(host):
    for name in ("spam-to-junk", "learn-spam", "learn-ham"):
        assert host.file(f"/etc/dovecot/sieve/{name}.svbin").exists, name


def test_postfix_chroot_has_resolver_files(host):
    for name in ("resolv.conf", "hosts", "services"):
        assert host.file(f"/var/spool/postfix/etc/{name}").exists, name


@pytest.mark.parametrize(
    "path, user, group, mode",
    [
        ("/etc/mailstack/tls/privkey.pem", "root", "root", 0o600),
        ("/etc/mailstack/tls/fullchain.pem", "root", "root", 0o644),
        ("/etc/postfix/mysql/virtual_mailboxes.cf", "root", "postfix", 0o640),
        ("/etc/dovecot/dovecot-sql.conf.ext", "root", "dovecot", 0o640),
        ("/etc/mailstack/accounts.sql", "root", "root", 0o600),
        ("/etc/opendkim/keys", "opendkim", "opendkim", 0o700),
        ("/var/mail/vhosts", "vmail", "vmail", 0o770),
    ],
)
def test_ownership_and_mode(host, path, user, group, mode):
    f = host.file(path)
    assert f.exists
    assert (f.user, f.group, f.mode) == (user, group, mode)


def test_dkim_keys_private_to_opendkim(host):
    keys = sh(host, "find /etc/opendkim/keys -type f -name '*.private'").split()
    assert keys
    for key in keys:
        f = host.file(key)
        assert (f.user, f.mode) == ("opendkim", 0o600)


def test_vmail_user(host):
    vmail = host.user("vmail")
    assert (vmail.uid, vmail.gid, vmail.home) == (5000, 5000, "/var/mail/vhosts")


def test_fuse_daemon_runs_as_its_own_user(host):
    """Not as vmail, whose processes could read its memory and so the store's key."""
    crypt = host.user("mailcrypt")
    assert (crypt.uid, crypt.gid, crypt.shell) == (5001, 5001, "/usr/sbin/nologin")
    daemons = host.process.filter(comm="gocryptfs")
    assert daemons and {(d.ruid, d.euid) for d in daemons} == {(5001, 5001)}
    assert host.file("/var/mail/vhosts.crypt/gocryptfs.conf").user == "mailcrypt"


# --------------------------------------------------------------------------- database


def test_database_is_locked_down(host):
    rows = sh(host, "mariadb -NB -e %s",
              "SELECT user, host FROM mysql.global_priv WHERE user IN ('', 'root')").split("\n")
    assert [r for r in rows if r] == ["root\tlocalhost"]
    assert "test" not in sh(host, "mariadb -NB -e 'SHOW DATABASES'").split()
    # root has no password login over TCP
    assert host.run("mariadb -h 127.0.0.1 -u root -e 'SELECT 1'").rc != 0


@pytest.mark.parametrize("account", ["mailstack_postfix", "mailstack_dovecot"])
def test_lookup_accounts_may_only_select(host, account):
    for where in ("127.0.0.1", "localhost"):
        grants = sh(host, "mariadb -NB -e %s", f"SHOW GRANTS FOR '{account}'@'{where}'")
        for grant in grants.strip().splitlines():
            assert re.match(r"GRANT (USAGE|SELECT( \([`a-z_, ]+\))?) ON ", grant), grant


def test_postfix_account_cannot_write(host):
    # Log in for real with the password Postfix uses (read inside the container).
    cmd = ("MYSQL_PWD=$(sed -n 's/^password = //p' /etc/postfix/mysql/virtual_aliases.cf) "
           "mariadb -h 127.0.0.1 -u mailstack_postfix mailstack -e %s")
    assert sh(host, cmd, "SELECT name FROM domains").split()[-1] == DOMAIN
    denied = host.run(cmd, "INSERT INTO domains (name) VALUES ('evil.example')")
    assert denied.rc != 0 and "denied" in denied.stderr


def test_postfix_lookups(host):
    q = "postmap -q %s proxy:mysql:/etc/postfix/mysql/%s.cf"
    assert sh(host, "postconf -h virtual_mailbox_domains").strip() == DOMAIN
    assert not host.file("/etc/postfix/mysql/virtual_domains.cf").exists
    assert sh(host, q, USER, "virtual_mailboxes").strip() == "example.org/alice/Maildir/"
    assert sh(host, q, "postmaster@example.org", "virtual_aliases").strip() == USER
    assert host.run(q, "nobody@example.org", "virtual_mailboxes").rc == 1


def test_dovecot_authenticates_from_sql(host):
    out = sh(host, "doveadm auth test %s %s", USER, PASSWORD)
    assert "auth succeeded" in out
    assert host.run("doveadm auth test %s %s", USER, "wrong password").rc != 0


# --------------------------------------------------------------------------- the mail path


def test_no_auth_without_tls(host):
    # Port 25 never offers AUTH; 587 only after STARTTLS.
    plain25 = host.run("swaks --server 127.0.0.1 --port 25 --quit-after EHLO")
    assert plain25.rc == 0 and "AUTH" not in plain25.stdout
    plain587 = host.run("swaks --server 127.0.0.1 --port 587 --quit-after EHLO")
    assert "AUTH" not in plain587.stdout
    tls587 = host.run("swaks --server 127.0.0.1 --port 587 --tls --quit-after AUTH "
                      "--auth-user %s --auth-password %s", USER, PASSWORD)
    assert tls587.rc == 0, tls587.stdout


ROUND_TRIP = r'''
import base64, email, imaplib, os, socket, ssl, subprocess, sys, time
import dkim


class IMAPS(imaplib.IMAP4_SSL):
    """IMAPS to 127.0.0.1, verifying the certificate for the server's host name."""

    def _create_socket(self, timeout):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


subject = os.environ["SUBJECT"]
user, password = os.environ["USER_ADDR"], os.environ["USER_PASSWORD"]
ctx = ssl.create_default_context(cafile="/etc/mailstack/tls/fullchain.pem")
deadline = time.monotonic() + 30
raw = None
while raw is None and time.monotonic() < deadline:
    with IMAPS(os.environ["HOSTNAME_FQDN"], 993, ssl_context=ctx, timeout=10) as imap:
        imap.login(user, password)
        imap.select("INBOX")
        typ, data = imap.search(None, "HEADER", "Subject", '"' + subject + '"')
        ids = data[0].split()
        if ids:
            typ, msg = imap.fetch(ids[-1], "(RFC822)")
            raw = msg[0][1]
            imap.store(ids[-1], "+FLAGS", "\\Deleted")
            imap.expunge()
    if raw is None:
        time.sleep(0.5)
if raw is None:
    sys.exit("message not delivered within 30 s: " + subject)

message = email.message_from_bytes(raw)
sig = message.get("DKIM-Signature")
if not sig:
    sys.exit("no DKIM-Signature header:\n" + raw.decode(errors="replace")[:2000])
tags = dict(t.strip().split("=", 1) for t in sig.replace("\r\n", "").split(";") if "=" in t)
domain, selector = tags["d"].strip(), tags["s"].strip()

# The public key a DNS TXT record would publish, derived from the private key.
key_file = f"/etc/opendkim/keys/{domain}/{selector}.private"
der = subprocess.run(["openssl", "pkey", "-in", key_file, "-pubout", "-outform", "DER"],
                     check=True, capture_output=True).stdout
txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
expected = f"{selector}._domainkey.{domain}.".encode()

def dnsfunc(name, timeout=5):
    return txt if name.rstrip(b".") + b"." == expected else None

ok = dkim.verify(raw, dnsfunc=dnsfunc)
print(f"d={domain} s={selector} verified={ok}")
sys.exit(0 if ok else 1)
'''


@pytest.mark.parametrize("port, tls_flag", [(587, "--tls"), (465, "--tls-on-connect")])
def test_round_trip_submission_lmtp_imaps_dkim(host, port, tls_flag):
    subject = f"molecule round trip {port} {uuid.uuid4()}"
    sent = host.run(
        "swaks --server 127.0.0.1 --port %s " + tls_flag + " --auth PLAIN "
        "--auth-user %s --auth-password %s --from %s --to %s "
        "--header %s --body %s",
        str(port), USER, PASSWORD, USER, USER, f"Subject: {subject}", "Hello from molecule.",
    )
    assert sent.rc == 0, sent.stdout + sent.stderr
    selector = sh(host, "awk '!/^#/ && NF {split($2, a, \":\"); print a[2]; exit}' "
                        "/etc/opendkim/KeyTable").strip()
    result = host.run(
        "SUBJECT=%s USER_ADDR=%s USER_PASSWORD=%s HOSTNAME_FQDN=%s python3 -c %s",
        subject, USER, PASSWORD, HOSTNAME, ROUND_TRIP,
    )
    log = host.run("journalctl -n 30 --no-pager -t postfix/lmtp -t opendkim -t dovecot").stdout
    assert result.rc == 0, f"{result.stdout}\n{result.stderr}\n--- log ---\n{log}"
    assert f"d={DOMAIN} s={selector} verified=True" in result.stdout
    # Delivered into alice's Maildir on disk, owned by vmail.
    maildir = host.file("/var/mail/vhosts/example.org/alice/Maildir")
    assert maildir.is_directory and maildir.user == "vmail"


def test_mail_store_is_encrypted_and_bound_to_dovecot(host):
    mounts = host.check_output("findmnt -n -o FSTYPE,SOURCE /var/mail/vhosts")
    assert mounts.split()[0] == "fuse.gocryptfs"
    assert host.file("/var/mail/vhosts.crypt/gocryptfs.conf").exists
    assert "var-mail-vhosts.mount" in host.check_output("systemctl show -p BindsTo dovecot")
    state = host.check_output("/usr/local/sbin/mailstack-storage state")
    assert '"locked": false' in state and '"mounted": true' in state
