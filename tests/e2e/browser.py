"""Debian's Chromium, headless, driven through Debian's chromedriver (selenium), for the
tests that use the webmail as a person does.

It reaches one test host only, by its name, and trusts that host's self-signed certificate
the way a person would trust a certificate by hand: the certificate the host serves is
checked to carry the site's key (the one its TLSA record names), then added as a trusted
peer to an NSS database of the browser's own (Debian's certutil). Chromium then checks
everything else as for any site (the host name, the dates); nothing is ignored (no
--ignore-certificate-errors). Selenium Manager is never asked for anything (it would
download drivers): the binaries are given, and it is told to stay offline."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from .helpers import tls_context

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CERTUTIL = Path("/usr/bin/certutil")
WINDOW = "1400,1000"  # wide enough for SOGo's three panes (folders, list, message)


def served_certificate(ip: str, hostname: str, private_pem: str) -> str:
    """The certificate (PEM) the host serves for hostname on port 443, once it is known to
    carry the site's key."""
    with socket.create_connection((ip, 443), timeout=20) as raw, \
            tls_context().wrap_socket(raw, server_hostname=hostname) as conn:
        der = conn.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    assert (cert.public_key().public_bytes(serialization.Encoding.DER, spki)
            == key.public_key().public_bytes(serialization.Encoding.DER, spki)), \
        f"{hostname} at {ip} serves a certificate for another key than the site's"
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def trust(home: Path, certificate_pem: str) -> None:
    """A user NSS database in home (~/.pki/nssdb, where Chromium on Linux looks) that trusts
    this certificate as a peer ("P"): for its own names only, not as a CA."""
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    cert = home / "site.pem"
    cert.write_text(certificate_pem)
    for args in (["-N", "--empty-password"], ["-A", "-n", "site", "-t", "P,,", "-i", str(cert)]):
        subprocess.run([str(CERTUTIL), "-d", f"sql:{db}", *args], check=True,
                       capture_output=True, timeout=60)


def arguments(profile: Path, hostname: str, ip: str) -> list[str]:
    args = [
        "--headless=new",
        f"--window-size={WINDOW}",
        "--lang=en-US",
        f"--user-data-dir={profile}",
        # The host's name leads to the test host; every other name resolves to nothing, so
        # the browser reaches no network but the test bed's.
        f"--host-resolver-rules=MAP {hostname} {ip}, MAP * ~NOTFOUND",
        "--no-first-run",
        "--disable-background-networking",
    ]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to start as root with its sandbox
    return args


@contextmanager
def chromium(workdir: Path, hostname: str, ip: str, certificate_pem: str) -> Iterator[WebDriver]:
    """A headless Chromium for https://<hostname>/ on ip, trusting certificate_pem there. If
    the block fails, a screenshot and the page's HTML are left in workdir (with
    chromedriver's log) and named."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER, CERTUTIL) if not p.is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: the webmail test needs Debian's chromium, "
                    "chromium-driver and libnss3-tools (./scripts/bootstrap installs them)")
    home = workdir / "home"
    trust(home, certificate_pem)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in arguments(workdir / "profile", hostname, ip):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, on failure
    service = webdriver.ChromeService(executable_path=str(CHROMEDRIVER),
                                      log_output=str(workdir / "chromedriver.log"),
                                      env={**os.environ, "HOME": str(home)})
    with mock.patch.dict(os.environ, {"SE_OFFLINE": "true"}):
        driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    except BaseException:
        shot, page = workdir / "failure.png", workdir / "failure.html"
        try:
            driver.save_screenshot(str(shot))
            page.write_text(driver.page_source)
            print(f"browser at {driver.current_url}: screenshot {shot}, page {page}")
            # What the person would read: SOGo's notices (toasts) and open dialogs.
            for shown in driver.find_elements(By.CSS_SELECTOR, "md-toast, md-dialog"):
                print(f"shown ({shown.tag_name}): {shown.text[:800]!r}")
            for entry in driver.get_log("browser")[-20:]:
                print(f"console: {entry.get('level')} {entry.get('message', '')[:300]}")
        except WebDriverException as exc:  # the browser is gone: the first error tells more
            print(f"no screenshot: {exc.msg}")
        raise
    finally:
        driver.quit()
