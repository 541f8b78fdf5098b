"""An ACME CA in the internet in a box: pebble (Let's Encrypt's test server, from Debian).

It runs in the box's DNS container under the name acme.test and validates HTTP-01
challenges on port 80 of the names it is asked for, resolved through the box's resolver, as
Let's Encrypt would on the internet. Its API is HTTPS with a certificate from a test CA made
here (`https_ca_pem`: what a host must trust to talk to it, as hosts trust Let's Encrypt's
API through the system store); the certificates it issues chain to a root it makes at each
start (`issuing_root()`).
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from dataclasses import dataclass, field

from testbed import SandboxError, exec_in
from testbed.ca import TestCA, trust_ca
from testbed.internet import Internet, Record, write_file

NAME = "acme.test"
API_PORT = 14000
MANAGEMENT_PORT = 15000
UNIT = "pebble"
CONF_DIR = "/etc/pebble"
# Trusted by a host with update-ca-certificates (testbed.ca.LOCAL_CA_DIR/<this>.crt).
HOST_TRUST_NAME = "mailstack-testbed-acme"
START_TIMEOUT = 20.0


@dataclass
class AcmeCA:
    """pebble in the box: `start()` once, then `stop()`/`resume()` to play an outage."""

    internet: Internet
    https_ca_pem: str = field(default="", init=False)
    _api_ca: TestCA | None = field(default=None, init=False, repr=False)

    @property
    def directory(self) -> str:
        """The ACME directory URL a site puts in options.tls.acme_directory."""
        return f"https://{NAME}:{API_PORT}/dir"

    @property
    def _host(self) -> str:
        if self.internet.dns is None:
            raise SandboxError("the internet in a box is not started")
        return self.internet.dns.name

    def start(self, *, running: bool = True) -> AcmeCA:
        """Publish acme.test, write pebble's configuration; run it unless running=False."""
        self._api_ca = TestCA("mailstack test bed ACME API CA")
        self.https_ca_pem = self._api_ca.pem
        cert, key = self._api_ca.issue([NAME])
        exec_in(self._host, ["install", "-d", "-m", "0755", CONF_DIR])
        write_file(self._host, f"{CONF_DIR}/cert.pem", cert)
        write_file(self._host, f"{CONF_DIR}/key.pem", key)
        write_file(self._host, f"{CONF_DIR}/pebble.json", json.dumps({"pebble": {
            "listenAddress": f"0.0.0.0:{API_PORT}",
            "managementListenAddress": f"0.0.0.0:{MANAGEMENT_PORT}",
            "certificate": f"{CONF_DIR}/cert.pem", "privateKey": f"{CONF_DIR}/key.pem",
            "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "",
            "externalAccountBindingRequired": False}}))
        self.internet.publish([Record(NAME, "A", self.internet.resolver_ip)])
        if running:
            self.resume()
        return self

    def resume(self) -> None:
        """Start pebble (a new issuing root each time), wait until its API answers."""
        exec_in(self._host, [
            "systemd-run", f"--unit={UNIT}", "--collect",
            # No sleep before validating, no nonce rejected at random, every order validated
            # again (a renewal proves the challenge again, as a CA's cached one may not).
            "-E", "PEBBLE_VA_NOSLEEP=1", "-E", "PEBBLE_WFE_NONCEREJECT=0", "-E", "PEBBLE_AUTHZREUSE=0",
            "/usr/bin/pebble", "-config", f"{CONF_DIR}/pebble.json",
            "-dnsserver", f"{self.internet.resolver_ip}:53"])
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self._get(f"https://{self.internet.resolver_ip}:{API_PORT}/dir")
                return
            except OSError as exc:
                if time.monotonic() > deadline:
                    log = exec_in(self._host, ["journalctl", "-u", UNIT, "-n", "20", "--no-pager"],
                                  check=False).stdout
                    raise SandboxError(f"pebble does not answer: {exc}\n{log}") from exc
                time.sleep(0.2)

    def stop(self) -> None:
        """The CA is down (connections to it are refused)."""
        exec_in(self._host, ["systemctl", "stop", UNIT], check=False)

    def issuing_root(self) -> str:
        """The root (PEM) pebble's certificates chain to (made at pebble's start)."""
        return self._get(f"https://{self.internet.resolver_ip}:{MANAGEMENT_PORT}/roots/0").decode()

    def trust_on(self, host: str) -> None:
        """Make a host trust pebble's API, as hosts trust a real CA's API."""
        if self._api_ca is None:
            raise SandboxError("start() the ACME CA first")
        self._api_ca.trust_on(host, HOST_TRUST_NAME)

    def trust_issued_on(self, host: str) -> None:
        """Make a host trust the certificates pebble issues, as hosts trust Let's Encrypt's
        root: a mail host then verifies another's (MTA-STS policies, SMTP). Before its
        daemons start: they read the store once."""
        trust_ca(host, "mailstack-testbed-acme-issued", self.issuing_root())

    def _get(self, url: str) -> bytes:
        ctx = ssl.create_default_context(cadata=self.https_ca_pem)
        ctx.check_hostname = False  # reached by address from the controller; the CA is checked
        with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
            return resp.read()
