"""A relay host (smarthost) in the internet in a box: Postfix playing SES or SendGrid.

It takes mail on port 587 only after STARTTLS and a SASL login (Cyrus SASL, its users in a
sasldb), presents a certificate for relay.test from a CA of its own (`ca_pem`: what a mail
host that relays through it must trust, as hosts trust a real relay's CA), and delivers
onward through the box's DNS like any MTA. Its SPF record lives at spf.relay.test, for the
sites' `options.relay.spf_include`. Postfix logs to the journal (`log()`): every accepted
login there names its sasl_username.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field

from testbed import Host, SandboxError, exec_in, remove_host, start_host
from testbed.ca import TestCA, trust_ca
from testbed.internet import Internet, Record, internet_image, use_resolver, write_file

NAME = "relay.test"
PORT = 587
SPF_NAME = f"spf.{NAME}"
CHAIN = "/etc/postfix/relay.pem"
SASLDB = "/etc/postfix/sasldb2"
SASL_DIR = "/etc/postfix/sasl"
MAIN_CF = f"""\
compatibility_level = 3.6
myhostname = {NAME}
mydestination =
alias_maps =
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_tls_chain_files = {CHAIN}
smtpd_tls_security_level = may
smtpd_tls_loglevel = 1
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = {SASL_DIR}
# The realm logins are looked up in (saslpasswd2 -u).
smtpd_sasl_local_domain = {NAME}
smtpd_sasl_security_options = noanonymous
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, reject
smtp_tls_security_level = may
smtp_tls_loglevel = 1
"""
# Cyrus SASL's smtpd application: users and passwords from the sasldb.
SMTPD_CONF = f"""\
pwcheck_method: auxprop
auxprop_plugin: sasldb
mech_list: PLAIN LOGIN
sasldb_path: {SASLDB}
"""
# Submission: STARTTLS, then AUTH, then anything may be relayed. No chroot: smtpd reads the
# sasldb from /etc.
MASTER_EDITS = (
    ["postconf", "-F", "*/*/chroot = n"],
    ["postconf", "-M", "submission/inet=submission inet n - n - - smtpd"],
    ["postconf", "-P", "submission/inet/syslog_name=postfix/submission",
     "submission/inet/smtpd_tls_security_level=encrypt",
     "submission/inet/smtpd_sasl_auth_enable=yes",
     "submission/inet/smtpd_relay_restrictions=permit_sasl_authenticated,reject"],
)


@dataclass
class Smarthost:
    """The relay, with one login (`username`, `password`): start(), then stop()."""

    internet: Internet
    username: str = "mailstack-relay-user"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    ca_pem: str = field(default="", init=False)
    host: Host | None = field(default=None, init=False)

    @property
    def name(self) -> str:
        return f"{self.internet.prefix}-relay"

    @property
    def address(self) -> str:
        """What `mailstack relay set` is given."""
        return f"[{NAME}]:{PORT}"

    def start(self) -> Smarthost:
        """Start the container, publish relay.test (A, PTR, SPF), run Postfix."""
        try:
            self.host = start_host(self.name, internet_image(), hostname=NAME,
                                   network=self.internet.network)
            self.internet.publish([
                Record(NAME, "A", self.host.ip),
                Record(ipaddress.ip_address(self.host.ip).reverse_pointer, "PTR", f"{NAME}."),
                Record(SPF_NAME, "TXT", f"v=spf1 ip4:{self.host.ip} -all")])
            use_resolver(self.name, self.internet.resolver_ip)
            ca = TestCA("mailstack test bed relay CA")
            self.ca_pem = ca.pem
            cert, key = ca.issue([NAME])
            exec_in(self.name, ["sh", "-c", f"umask 077 && cat > {CHAIN}"], input=key + cert)
            write_file(self.name, "/etc/postfix/main.cf", MAIN_CF)
            exec_in(self.name, ["install", "-d", "-m", "0755", SASL_DIR])
            write_file(self.name, f"{SASL_DIR}/smtpd.conf", SMTPD_CONF)
            for edit in MASTER_EDITS:
                exec_in(self.name, edit)
            exec_in(self.name, ["saslpasswd2", "-p", "-c", "-f", SASLDB, "-u", NAME, self.username],
                    input=self.password)
            exec_in(self.name, ["sh", "-c", f"chgrp postfix {SASLDB} && chmod 0640 {SASLDB}"])
            exec_in(self.name, ["systemctl", "enable", "--now", "--quiet", "postfix"])
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        remove_host(self.name)
        self.host = None

    def __enter__(self) -> Smarthost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def trust_on(self, host: str) -> None:
        """Make a host trust the relay's certificate, as hosts trust a real relay's CA."""
        trust_ca(host, "mailstack-testbed-relay", self.ca_pem)

    def log(self) -> str:
        """Postfix's log lines so far."""
        if self.host is None:
            raise SandboxError("the relay is not started")
        return exec_in(self.name, ["journalctl", "-u", "postfix@-", "--no-pager", "-o", "cat"]).stdout
