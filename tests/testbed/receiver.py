"""A receiving MX in the internet in a box, for tests of what a mail host sends out.

It runs on the box's outside host (its Postfix is installed but off): Postfix with STARTTLS
and a certificate from a test CA (`testbed.ca`), taking mail for the given domains into one
Maildir, and a small HTTPS server there that serves MTA-STS policies (RFC 8461) by Host
name. One key for both; `tlsa()` is its DANE record (`3 1 1`, the SHA-256 of the key), so
the test decides per MX name whether DNS vouches for it, and per certificate name whether
the CA does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from testbed import Host, exec_in, wait_for_port
from testbed.ca import TestCA
from testbed.internet import write_file

CERT_FILE = "/etc/postfix/receiver-cert.pem"
KEY_FILE = "/etc/postfix/receiver-key.pem"
MAIL_ROOT = "/var/mail/receiver"
MAILBOX = "inbox/"  # below MAIL_ROOT; the trailing slash makes it a Maildir
MAIL_OWNER = 65534  # nobody: Postfix's virtual delivery needs a uid of at least 100
POLICY_DIR = "/etc/mta-sts-policies"
POLICY_UNIT = "mta-sts-policies"
HTTPS_PORT = 443
START_TIMEOUT = 20
# Serves {host name: policy text} from a JSON file at /.well-known/mta-sts.txt over HTTPS.
POLICY_SERVER = """\
import http.server, json, ssl, sys

policies = json.load(open(sys.argv[1]))


class Policy(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        text = policies.get(host) if self.path == "/.well-known/mta-sts.txt" else None
        if text is None:
            self.send_error(404)
            return
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[2], sys.argv[3])
server = http.server.ThreadingHTTPServer(("0.0.0.0", 443), Policy)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""


READ_SUBJECTS = """\
import email, glob, json, sys
files = glob.glob(sys.argv[1] + "new/*") + glob.glob(sys.argv[1] + "cur/*")
print(json.dumps([str(email.message_from_binary_file(open(f, "rb"))["Subject"]) for f in files]))
"""


def mta_sts_policy(mx: str, mode: str = "enforce", max_age: int = 86400) -> str:
    """An MTA-STS policy naming one MX host."""
    return f"version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: {max_age}\r\n"


@dataclass
class Receiver:
    """Postfix on `host` for `domains`, presenting a certificate from `ca` for `names`."""

    host: Host
    ca: TestCA
    names: Sequence[str]
    domains: Sequence[str]
    cert_pem: str = field(default="", init=False, repr=False)

    def start(self) -> Receiver:
        self.cert_pem, key = self.ca.issue(self.names)
        name = self.host.name
        write_file(name, KEY_FILE, key)
        exec_in(name, ["chmod", "0600", KEY_FILE])
        write_file(name, CERT_FILE, self.cert_pem + self.ca.pem)
        exec_in(name, ["install", "-d", "-o", str(MAIL_OWNER), "-g", str(MAIL_OWNER), MAIL_ROOT])
        write_file(name, "/etc/postfix/main.cf", "\n".join([
            "compatibility_level = 3.6", "inet_interfaces = all", "inet_protocols = ipv4",
            "mydestination =", "smtpd_tls_security_level = may", "smtpd_tls_loglevel = 1",
            f"smtpd_tls_chain_files = {KEY_FILE}, {CERT_FILE}",
            f"virtual_mailbox_domains = {', '.join(self.domains)}",
            f"virtual_mailbox_base = {MAIL_ROOT}", f"virtual_mailbox_maps = static:{MAILBOX}",
            f"virtual_uid_maps = static:{MAIL_OWNER}", f"virtual_gid_maps = static:{MAIL_OWNER}",
            ""]))
        exec_in(name, ["systemctl", "restart", "postfix"])
        wait_for_port(self.host.ip, 25, START_TIMEOUT)
        return self

    def tlsa(self) -> str:
        """The DANE-EE record of the key (`3 1 1` + SHA-256 of its SubjectPublicKeyInfo)."""
        cert = x509.load_pem_x509_certificate(self.cert_pem.encode())
        spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        return f"3 1 1 {hashlib.sha256(spki).hexdigest()}"

    def serve_policies(self, policies: Mapping[str, str]) -> None:
        """Serve MTA-STS policies over HTTPS with the same certificate: {host name (the
        mta-sts. name, which the certificate must carry): policy text}."""
        name = self.host.name
        exec_in(name, ["install", "-d", "-m", "0755", POLICY_DIR])
        write_file(name, f"{POLICY_DIR}/server.py", POLICY_SERVER)
        write_file(name, f"{POLICY_DIR}/policies.json", json.dumps(dict(policies)))
        exec_in(name, ["systemctl", "stop", POLICY_UNIT], check=False)
        exec_in(name, ["systemd-run", f"--unit={POLICY_UNIT}", "--collect", "python3",
                       f"{POLICY_DIR}/server.py", f"{POLICY_DIR}/policies.json", CERT_FILE,
                       KEY_FILE])
        wait_for_port(self.host.ip, HTTPS_PORT, START_TIMEOUT)

    def subjects(self) -> list[str]:
        """The Subject of every message delivered so far (duplicates kept), read on the host
        from each file of the Maildir."""
        proc = exec_in(self.host.name, ["python3", "-c", READ_SUBJECTS, f"{MAIL_ROOT}/{MAILBOX}"])
        return json.loads(proc.stdout)
