"""`mailstack status` on one real host, judged for monitoring (issue 13, section 4).

A stack-image host with NET_ADMIN (fail2ban and the firewall run, as on a KVM VPS) in the
internet in a box, which publishes the site's records (so the DNS comparison has something
to compare) and the box's blocklist (bl.test). options.monitoring.prometheus is on.

- After the deploy: exit 0, each line (store, queue, disk, certificate, blocklists, backup,
  DNS asked of the box's resolver) ok; `--json` is one document with a level per check.
- The last backup (the file the backup service writes): 30 hours old is a warning (exit 1),
  fresh is ok.
- A message to an MX in the box that refuses connections waits in the queue: its age is
  shown; with options.monitoring.queue_age.warning at 1s the same queue is a warning.
- The Prometheus textfile: written by the timer's service, parsable, its values the host's;
  node-exporter serves it on 127.0.0.1:9100 only.
- The store locked: exit 2 with the lock's line and the textfile saying so; unlocked, ok again.
- A second deploy changes nothing. Turned off, the exporter and the timer stop (and the
  deploy after that changes nothing either).

Tests run in file order and build on each other (one deployed host). `-s` shows the timings.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field

import pytest
import testbed
from testbed.internet import Record

from mailstack.render.context import BACKUP_STATE_FILE, PROMETHEUS

from .helpers import BoxedHost, edit_config, host_in_a_box, mailstack

pytestmark = pytest.mark.testbed
DOMAIN = "status.test"
ALICE = f"alice@{DOMAIN}"
DOWN = "down.test"  # its MX answers no SMTP: mail to it waits in the queue
# One Prometheus text-format sample: name, optional labels, value.
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (-?[0-9.e+]+|NaN)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass
class Bed(BoxedHost):
    timings: dict[str, float] = field(default_factory=dict)
    memory_mib: dict[str, float] = field(default_factory=dict)

    def run(self, *cmd: str, check: bool = True, input: str | None = None):
        return testbed.exec_in(self.name, list(cmd), check=check, input=input)

    def status(self, *args: str):
        return mailstack(self.site, "status", "--resolver", self.internet.resolver_ip, *args)


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus' text format, strictly: every line a comment or a sample."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample: {line!r}"
        labels = tuple(sorted(LABEL.findall(m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def publish(bed: BoxedHost) -> None:
    """The site's records, and down.test, whose MX is the box's name server (no SMTP there)."""
    records = mailstack(bed.site, "dns", "--format", "json")
    assert records.returncode == 0, records.stderr
    bed.internet.publish(testbed.site_records(records.stdout.replace("203.0.113.7", bed.ip)))
    bed.internet.publish([Record(DOWN, "MX", f"10 mx.{DOWN}."),
                          Record(f"mx.{DOWN}", "A", bed.internet.ns_ip)])


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    edits = (("    greylist_score: 4\n", "    greylist_score: null\n"),
             ("    threshold: 3\n", "    threshold: 3\n    lists: [{zone: bl.test, weight: 3, "
                                  "answers: 127.0.0.2}]\n"),
             ("    prometheus: false\n", "    prometheus: true\n"))
    started = time.monotonic()
    with host_in_a_box("status", tmp_path_factory.mktemp("status") / "site", DOMAIN, [ALICE],
                       edits=edits, cap_add=("NET_ADMIN",), before_deploy=publish) as host:
        bed = Bed(**vars(host))
        bed.timings["host, box and cold deploy"] = time.monotonic() - started
        yield bed
        bed.timings["module"] = time.monotonic() - started
        print("\n[status] " + ", ".join(f"{k} {v:.1f} s" for k, v in bed.timings.items())
              + "".join(f", {k} {v:.1f} MiB" for k, v in bed.memory_mib.items()))


def test_a_fresh_deploy_is_ok(bed):
    started = time.monotonic()
    result = bed.status()
    bed.timings["status"] = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    lines = out.splitlines()
    assert re.match(rf"^mail\.{DOMAIN}: storage gocryptfs unlocked; queue 0; sealed 0; "
                    r"postfix active, dovecot active, ", lines[0]), out
    for expected in ("  queue: empty", "  blocklist bl.test: lists its test entry",
                     f"  listed bl.test: not listed ({bed.ip})",
                     "  backup: none recorded (no backup configured)",
                     "status: ok"):
        assert expected in lines, out
    assert re.search(r"^  bans: .*postfix-sasl 0 banned", out, re.M), out
    assert re.search(r"^  disk /var/mail/vhosts: [0-9.]+ % used, [0-9.]+ GiB free", out, re.M), out
    assert re.search(r"^  disk /var/mail/vhosts\.crypt: ", out, re.M), out
    # The self-signed certificate the tls role made (825 days).
    assert re.search(r"^  certificate: 82[45] days left \(until \d{4}-\d\d-\d\d\)$", out, re.M), out
    assert re.search(rf"^dns: \d+ records as printed \(asked resolver "
                     rf"{re.escape(bed.internet.resolver_ip)}:53\)$",
                     out, re.M), out
    assert "[WARNING]" not in out and "[CRITICAL]" not in out


def test_json_is_one_document_with_a_level_per_check(bed):
    result = bed.status("--json")
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert (data["schema"], data["level"], data["exit_code"]) == (1, "ok", 0)
    [host] = data["hosts"]
    assert set(host) == {"host", "reachable", "error", "level", "checks", "status"}
    assert (host["host"], host["reachable"], host["level"]) == (f"mail.{DOMAIN}", True, "ok")
    checks = {c["check"]: c for c in host["checks"]}
    assert {"storage", "queue", "certificate", "backup", "bans", "spam filter", "resolver",
            "blocklist bl.test", "listed bl.test", "disk /var/mail/vhosts"} <= set(checks)
    assert checks["backup"]["level"] == "info"
    assert all(c["level"] in ("ok", "info") for c in host["checks"]), host["checks"]
    status = host["status"]
    assert status["queue"] == 0 and status["queue_oldest"] is None
    assert status["certificate"]["path"] == "/etc/mailstack/tls/fullchain.pem"
    assert status["backup"] == {"path": BACKUP_STATE_FILE, "recorded": False}
    assert data["dns"]["checked"] is True and data["dns"]["level"] == "ok"
    assert {r["status"] for r in data["dns"]["records"]} == {"ok"}


def test_the_last_backup_is_judged_by_its_age(bed):
    def record(age_seconds: int) -> None:
        state = json.dumps({"finished": int(time.time()) - age_seconds, "archive": "mail-1",
                            "ok": True})
        bed.run("bash", "-ec", f'install -d "$(dirname {BACKUP_STATE_FILE})" && '
                f"cat > {BACKUP_STATE_FILE}", input=state)
    try:
        record(30 * 3600)
        stale = bed.status("--no-dns")
        assert stale.returncode == 1, stale.stdout + stale.stderr
        assert re.search(r"^  backup: last success 1 d 6 h ago \(mail-1\)  \[WARNING\]$",
                         stale.stdout, re.M), stale.stdout
        assert stale.stdout.splitlines()[-1].startswith("status: WARNING (")
        record(60)
        fresh = bed.status("--no-dns")
        assert fresh.returncode == 0, fresh.stdout
        assert "  backup: last success 1 min ago (mail-1)" in fresh.stdout.splitlines()
    finally:
        bed.run("rm", "-f", BACKUP_STATE_FILE)


def test_a_message_waiting_for_a_down_mx_shows_its_age(bed):
    message = f"From: {ALICE}\nTo: someone@{DOWN}\nSubject: waits\n\nfor a server that is down\n"
    bed.run("/usr/sbin/sendmail", "-i", "-f", ALICE, f"someone@{DOWN}", input=message)
    deadline = time.monotonic() + 60
    while not any(json.loads(line)["queue_name"] == "deferred"
                  for line in bed.run("postqueue", "-j").stdout.splitlines()):
        assert time.monotonic() < deadline, bed.run("postqueue", "-p").stdout
        time.sleep(1)
    time.sleep(2)  # at least a second old
    try:
        waiting = bed.status("--no-dns")
        assert waiting.returncode == 0, waiting.stdout + waiting.stderr
        out = waiting.stdout
        assert re.search(r"^  queue: 1 message, the oldest \d+ (s|min) old$", out, re.M), out
        assert re.search(rf"^  deferred: 1 message waits: connect to mx\.{DOWN}\[.*Connection "
                         "refused", out, re.M), out
        # The same queue against a threshold of one second.
        edit_config(bed.site, ("    queue_age: {warning: 1h, critical: 1d}\n",
                               "    queue_age: {warning: 1s, critical: 1d}\n"))
        judged = bed.status("--no-dns", "--json")
        assert judged.returncode == 1, judged.stdout + judged.stderr
        [host] = json.loads(judged.stdout)["hosts"]
        queue = next(c for c in host["checks"] if c["check"] == "queue")
        assert queue["level"] == "warning" and host["status"]["queue_oldest"] >= 1, queue
    finally:
        edit_config(bed.site, ("    queue_age: {warning: 1s, critical: 1d}\n",
                               "    queue_age: {warning: 1h, critical: 1d}\n"))
        bed.run("postsuper", "-d", "ALL")


def metrics(bed) -> dict:
    bed.run("systemctl", "start", PROMETHEUS["metrics_service"])
    return parse_metrics(bed.run("cat", PROMETHEUS["textfile"]).stdout)


def test_the_prometheus_textfile_is_written_and_served_on_loopback_only(bed):
    assert bed.run("systemctl", "is-active", PROMETHEUS["metrics_timer"]).stdout.strip() == "active"
    assert bed.run("systemctl", "is-active", PROMETHEUS["service"]).stdout.strip() == "active"
    started = time.monotonic()
    found = metrics(bed)
    bed.timings["metrics service"] = time.monotonic() - started
    assert found[("mailstack_store_locked", ())] == 0
    assert found[("mailstack_service_up", (("unit", "postfix"),))] == 1
    assert found[("mailstack_queue_messages", ())] == 0
    assert found[("mailstack_queue_oldest_seconds", ())] == 0
    assert 824 * 86400 < found[("mailstack_cert_expiry_seconds", ())] <= 825 * 86400
    assert found[("mailstack_fail2ban_banned", (("jail", "postfix-sasl"),))] == 0
    assert ("mailstack_backup_last_success_timestamp", ()) not in found  # none recorded
    assert 0 < found[("mailstack_filesystem_used_ratio", (("path", "/var/mail/vhosts"),))] < 1
    # node-exporter serves the file (its textfile collector), on loopback.
    served = bed.run("python3", "-c", "import urllib.request; print(urllib.request.urlopen("
                     "'http://127.0.0.1:9100/metrics', timeout=10).read().decode())").stdout
    assert "\nmailstack_store_locked 0\n" in served
    assert "\nnode_textfile_scrape_error 0\n" in served
    listening = bed.run("ss", "-Htln", "sport = :9100").stdout.split()
    assert "127.0.0.1:9100" in listening and "*:9100" not in listening, listening
    pid = bed.run("systemctl", "show", "-P", "MainPID", PROMETHEUS["service"]).stdout.strip()
    rss = re.search(r"^VmRSS:\s+(\d+) kB$", bed.run("cat", f"/proc/{pid}/status").stdout, re.M)
    bed.memory_mib["node-exporter RSS"] = int(rss.group(1)) / 1024  # type: ignore[union-attr]


def test_a_locked_store_is_critical(bed):
    locked = mailstack(bed.site, "lock")
    assert locked.returncode == 0, locked.stdout + locked.stderr
    try:
        status = bed.status("--no-dns")
        assert status.returncode == 2, status.stdout + status.stderr
        first = status.stdout.splitlines()[0]
        assert "storage gocryptfs LOCKED (run `mailstack unlock`)" in first, first
        assert "dovecot inactive" in first and first.endswith("[CRITICAL]"), first
        assert status.stdout.splitlines()[-1].startswith(
            f"status: CRITICAL (mail.{DOMAIN}: storage locked: mail is accepted and sealed"), status.stdout
        assert "service dovecot" not in status.stdout  # the lock's finding, not one of its own
        assert metrics(bed)[("mailstack_store_locked", ())] == 1
    finally:
        unlocked = mailstack(bed.site, "unlock")
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    again = bed.status("--no-dns")
    assert again.returncode == 0, again.stdout
    assert metrics(bed)[("mailstack_store_locked", ())] == 0


def test_a_second_deploy_changes_nothing(bed):
    started = time.monotonic()
    again = mailstack(bed.site, "deploy")
    bed.timings["second deploy"] = time.monotonic() - started
    assert again.returncode == 0, again.stdout + again.stderr
    assert "no changes: the hosts already match the site" in again.stdout, again.stdout


def test_turned_off_the_exporter_and_the_timer_stop(bed):
    edit_config(bed.site, ("    prometheus: true\n", "    prometheus: false\n"))
    off = mailstack(bed.site, "deploy")
    assert off.returncode == 0, off.stdout + off.stderr
    assert "no changes" not in off.stdout, off.stdout
    for unit in (PROMETHEUS["service"], PROMETHEUS["metrics_timer"]):
        assert bed.run("systemctl", "is-active", unit, check=False).stdout.strip() == "inactive"
        assert bed.run("systemctl", "is-enabled", unit, check=False).stdout.strip() == "disabled"
    assert bed.run("ss", "-Htln", "sport = :9100").stdout.strip() == ""
    again = mailstack(bed.site, "deploy")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "no changes: the hosts already match the site" in again.stdout, again.stdout
