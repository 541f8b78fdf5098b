"""The virus scanner (options.antivirus: clamav) on a real host: clamd, rspamd's antivirus
module, Postfix, against a real outside sender and real DNS (the internet in a box).

Offline: freshclam reaches no mirror here, so the host gets a signature database the test
owns before the deploy, the way the box serves its own DNS blocklist: one line that knows
the EICAR test file by its MD5 (ClamAV reports it as Eicar-Test-Signature.UNOFFICIAL).
The deploy finds a database and downloads nothing; clamd loads it like any other.

Every message is counted: a virus is refused at DATA (5xx, nothing delivered), anything the
scanner could not scan is answered 4xx and delivered exactly once when the sender retries.
"""

from __future__ import annotations

import re
import secrets
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import pytest
import testbed
from testbed.internet import sender_domain, write_file

from .helpers import (
    PASSWORD,
    BoxedHost,
    edit_config,
    imap_subjects,
    mailstack,
    wait_for_subjects,
)

pytestmark = pytest.mark.testbed
DOMAIN = "av.test"
ALICE = f"alice@{DOMAIN}"
SENDER = "news@good.test"
# The EICAR test file: every virus scanner knows it, it harms nothing.
EICAR = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
# The test's own signature database: MD5:size:name of the EICAR file (ClamAV's .hdb form).
SIGNATURES = "/var/lib/clamav/mailstack-test.hdb"
SIGNATURE = "44d88612fea8a8f36de82e1278abb02f:68:Eicar-Test-Signature\n"
RSPAMD_AV_FILES = ("/etc/rspamd/local.d/antivirus.conf", "/etc/rspamd/local.d/force_actions.conf")
CLAMAV_UNITS = ("clamav-daemon.socket", "clamav-daemon.service", "clamav-freshclam.service")


def run(bed: BoxedHost, *cmd: str, check: bool = True):
    return bed.run(*cmd, check=check)


def mail(subject: str, attachment: bytes, filename: str) -> str:
    """A message from good.test with one attachment, as a real MTA would pass it on."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, ALICE, subject
    msg["Date"], msg["Message-ID"] = formatdate(), make_msgid(domain="good.test")
    msg.set_content(f"Please find {filename} attached.\n")
    msg.add_attachment(attachment, maintype="application", subtype="octet-stream",
                       filename=filename)
    return msg.as_string().replace("\n", "\r\n")


def send_outside(bed: BoxedHost, text: str):
    """swaks from the box's sender on port 25 with this exact message."""
    path = f"/tmp/msg-{secrets.token_hex(4)}.eml"
    write_file(bed.outside, path, text)
    return bed.internet.sender.swaks(bed.ip, to=ALICE, mail_from=SENDER, helo="mx.good.test",
                                     args=["--data", f"@{path}"])


def smtp_code(transcript: str) -> int:
    """The server's answer to the message's data, from swaks's transcript."""
    answers = re.findall(r"^<[-~*]{1,2} +(\d{3})[ -]", transcript, re.M)
    return int(answers[-2]) if len(answers) >= 2 else 0  # the last one answers QUIT


def prepare(bed: BoxedHost) -> None:
    """Before the deploy: the site's records and good.test in the box's DNS, and the test's
    signature database on the host."""
    records = mailstack(bed.site, "dns", "--format", "json")
    assert records.returncode == 0, records.stderr
    bed.internet.publish(testbed.site_records(records.stdout.replace("203.0.113.7", bed.ip)))
    bed.internet.publish(sender_domain("good.test", bed.internet.sender.host.ip))
    write_file(bed.name, SIGNATURES, SIGNATURE)
    run(bed, "chown", "clamav:clamav", SIGNATURES)


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    from .helpers import host_in_a_box

    edits = (("  antivirus: none\n", "  antivirus: clamav\n"),
             ("    greylist_score: 4\n", "    greylist_score: null\n"))
    with host_in_a_box("av", tmp_path_factory.mktemp("av") / "site", DOMAIN, [ALICE],
                       edits=edits, before_deploy=prepare) as host:
        yield host


def test_clamd_runs_with_the_sites_signatures_and_downloaded_nothing(bed) -> None:
    for unit in CLAMAV_UNITS:
        assert run(bed, "systemctl", "is-enabled", unit).stdout.strip() == "enabled", unit
    assert run(bed, "systemctl", "is-active", "clamav-daemon").stdout.strip() == "active"
    files = run(bed, "ls", "/var/lib/clamav").stdout.split()
    assert "mailstack-test.hdb" in files
    assert not [f for f in files if f.endswith((".cvd", ".cld"))], files
    for path in RSPAMD_AV_FILES:
        run(bed, "test", "-f", path)
    status = mailstack(bed.site, "status")
    assert "clamav-daemon active" in status.stdout, status.stdout + status.stderr


def test_a_virus_from_outside_is_refused_at_data_and_never_delivered(bed) -> None:
    subject = f"invoice {secrets.token_hex(4)}"
    sent = send_outside(bed, mail(subject, EICAR.encode(), "invoice.com"))
    assert smtp_code(sent.stdout) // 100 == 5, sent.stdout[-2000:]
    assert "infected: Eicar-Test-Signature" in sent.stdout, sent.stdout[-2000:]
    time.sleep(2)
    assert subject not in imap_subjects(bed.ip, ALICE)
    queue = run(bed, "postqueue", "-j").stdout
    assert subject not in queue and ALICE not in queue, queue


def test_a_clean_attachment_is_delivered_once(bed) -> None:
    subject = f"clean {secrets.token_hex(4)}"
    sent = send_outside(bed, mail(subject, b"nothing to see here\n" * 50, "notes.txt"))
    assert sent.returncode == 0, sent.stdout[-2000:]
    inbox = wait_for_subjects(bed.ip, ALICE, [subject])
    assert inbox.count(subject) == 1


def test_clamd_down_means_try_again_later_and_the_retry_is_delivered_once(bed) -> None:
    subject = f"while clamd was down {secrets.token_hex(4)}"
    text = mail(subject, b"quarterly figures\n" * 20, "figures.txt")
    # The socket too: systemd would start clamd again on rspamd's next connection.
    run(bed, "systemctl", "stop", "clamav-daemon.socket", "clamav-daemon.service")
    try:
        refused = send_outside(bed, text)
        assert smtp_code(refused.stdout) // 100 == 4, refused.stdout[-2000:]
        assert subject not in imap_subjects(bed.ip, ALICE)
    finally:
        run(bed, "systemctl", "start", "clamav-daemon.socket", "clamav-daemon.service")
    deadline = time.monotonic() + 60
    while (retry := send_outside(bed, text)).returncode != 0:  # what the sender's MTA does
        assert smtp_code(retry.stdout) // 100 == 4, retry.stdout[-2000:]
        assert time.monotonic() < deadline, retry.stdout[-2000:]  # clamd still loading
        time.sleep(2)
    inbox = wait_for_subjects(bed.ip, ALICE, [subject])
    assert inbox.count(subject) == 1


def test_a_second_deploy_changes_nothing(bed) -> None:
    again = mailstack(bed.site, "deploy")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "no changes" in again.stdout, again.stdout


def test_turning_it_off_removes_rspamds_settings_and_stops_clamd(bed) -> None:
    """Last: it redeploys without the scanner."""
    edit_config(bed.site, ("  antivirus: clamav\n", "  antivirus: none\n"))
    deployed = mailstack(bed.site, "deploy")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    for path in RSPAMD_AV_FILES:
        assert run(bed, "test", "-e", path, check=False).returncode == 1, path
    for unit in CLAMAV_UNITS:
        assert run(bed, "systemctl", "is-active", unit, check=False).stdout.strip() == "inactive", unit
        assert run(bed, "systemctl", "is-enabled", unit, check=False).stdout.strip() == "disabled", unit
    subject = f"no scanner {secrets.token_hex(4)}"
    sent = send_outside(bed, mail(subject, b"plain\n", "plain.txt"))
    assert sent.returncode == 0, sent.stdout[-2000:]
    assert wait_for_subjects(bed.ip, ALICE, [subject]).count(subject) == 1
    again = mailstack(bed.site, "deploy")
    assert again.returncode == 0 and "no changes" in again.stdout, again.stdout + again.stderr


def test_a_host_without_the_memory_is_refused_before_anything_is_installed(tmp_path) -> None:
    """A 1 GiB host (a container with that memory limit; /proc/meminfo inside it shows the
    whole machine's): the deploy stops at once, naming the option, the host and what it
    found."""
    from mailstack.sandbox import host as sandbox

    name = network = f"mailstack-e2e-avmem-{secrets.token_hex(3)}"
    key = sandbox.ensure_keypair(sandbox.default_state_dir())
    testbed.ensure_network(network)
    try:
        host = testbed.start_host(name, testbed.stack_image(), hostname=f"mail.{DOMAIN}",
                                  network=network, memory="1g",
                                  ssh_pubkey=key.with_suffix(".pub").read_text())
        site = tmp_path / "site"
        init = mailstack(None, "init", str(site), "--domain", DOMAIN, "--hostname",
                         f"mail.{DOMAIN}", "--host", host.ip, "--ssh-key", str(key))
        assert init.returncode == 0, init.stderr
        testbed.offline_site(site)
        edit_config(site, ("  antivirus: none\n", "  antivirus: clamav\n"))
        assert mailstack(site, "user", "add", ALICE, "--password-stdin",
                         input=PASSWORD + "\n").returncode == 0
        deployed = mailstack(site, "deploy")
        out = deployed.stdout + deployed.stderr
        assert deployed.returncode != 0, out
        assert f"options.antivirus is clamav, but mail.{DOMAIN} has only" in out, out
        assert "container/cgroup limit 1024 MiB" in out, out
        assert "Set options.antivirus: none" in out, out
        assert "Traceback" not in out, out
        # Stopped before anything: not even /etc/mailname was written.
        assert testbed.exec_in(name, ["test", "-e", "/etc/mailname"], check=False).returncode == 1
        assert testbed.exec_in(name, ["ls", "/etc/rspamd/local.d"]).stdout.strip() == ""
    finally:
        testbed.remove_host(name)
        testbed.remove_network(network)
