"""`mailstack status` for monitoring: the host tool's new facts (queue age, filesystems, the
certificate's end, the last backup, the Prometheus textfile), their judgement against
options.monitoring (mailstack/verify/health.py), the exit codes, the JSON document and an
unreachable host. The daemons themselves are the e2e module's (tests/e2e/test_status.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import GOLDEN_STORAGE_JSON
from typer.testing import CliRunner

from mailstack.cli.app import app
from mailstack.host import storage_tool as tool
from mailstack.site.config import Monitoring, Options
from mailstack.site.inventory import write_inventory
from mailstack.verify import health

NOW = 1_800_000_000
M = Monitoring()


def healthy(**changes) -> dict:
    """A host tool's status answer with everything in order."""
    data = {
        "ok": True, "time": NOW,
        "storage": {"encryption": "gocryptfs", "mounted": True, "locked": False},
        "services": {"postfix": "active", "dovecot": "active"},
        "queue": 0, "queue_oldest": None, "deferred": [],
        "filesystems": [{"path": "/var/mail/vhosts", "size_bytes": 10 * 1024**3,
                         "free_bytes": 8 * 1024**3, "used_percent": 20.0,
                         "inodes_used_percent": 1.5}],
        "certificate": {"path": "/etc/mailstack/tls/fullchain.pem", "not_after": NOW + 60 * 86400},
        "backup": {"path": "/var/lib/mailstack/backup/last.json", "recorded": False},
        "jails": {"postfix-sasl": 0}, "spam_filter": "ok", "resolver": "ok",
        "blocklists": {"bl.example": {"answers": ["127.0.0.2"]}},
        "listed": {"bl.example": {"192.0.2.1": {"error": "not listed"}}},
        "sealed": 0,
    }
    data.update(changes)
    return data


def judged(data: dict, m: Monitoring = M) -> dict[str, health.Finding]:
    status = health.judge_host("mail1", data, m, {"bl.example": "127.0.0.[2..11]"})
    return {f.check: f for f in status.findings}


def level(data: dict, m: Monitoring = M) -> str:
    return health.judge_host("mail1", data, m, {"bl.example": "127.0.0.[2..11]"}).level


# --- judgement and exit codes ---

def test_a_healthy_host_is_ok_and_exits_0():
    found = judged(healthy())
    assert {f.level for f in found.values()} == {"ok", "info"}
    assert found["backup"].level == "info"  # none recorded: said, not alarming
    assert found["certificate"].detail == "60 days left (until 2027-03-16)"
    assert health.exit_code(level(healthy())) == 0


def test_the_exit_codes_are_0_1_2_worst_over_everything():
    assert [health.exit_code(x) for x in ("ok", "info", "warning", "critical")] == [0, 0, 1, 2]
    hosts = [health.judge_host("a", healthy(), M), health.judge_host("b", healthy(queue=1,
             queue_oldest=7200), M)]
    dns = health.dns_skipped("DNS not checked (--no-dns)")
    assert health.overall(hosts, dns) == "warning"
    hosts.append(health.unreachable("c", "cannot reach root@192.0.2.9:22 over SSH"))
    assert health.overall(hosts, dns) == "critical"
    assert health.summary(hosts, dns) == (
        "status: CRITICAL (b: queue 1 message, the oldest 2 h 0 min old; c: not asked: "
        "cannot reach root@192.0.2.9:22 over SSH)")


def test_a_locked_store_is_critical_and_its_stopped_dovecot_no_extra_finding():
    data = healthy(storage={"encryption": "gocryptfs", "mounted": False, "locked": True},
                   services={"postfix": "active", "dovecot": "inactive"})
    found = judged(data)
    assert found["storage"].level == "critical" and "mailstack unlock" in found["storage"].detail
    assert "service dovecot" not in found
    assert level(data) == "critical"


def test_a_service_down_is_critical():
    found = judged(healthy(services={"postfix": "failed", "dovecot": "active"}))
    assert found["service postfix"] == health.Finding("service postfix", "critical",
                                                      "postfix is failed")


@pytest.mark.parametrize("oldest,expected", [(59 * 60, "ok"), (3600, "warning"),
                                             (86400, "critical")])
def test_the_queue_by_its_oldest_message(oldest, expected):
    assert judged(healthy(queue=3, queue_oldest=oldest))["queue"].level == expected


@pytest.mark.parametrize("used,inodes,expected", [(84.9, 10.0, "ok"), (85.0, None, "warning"),
                                                  (20.0, 96.0, "critical")])
def test_disk_and_inodes(used, inodes, expected):
    fs = {"path": "/var/mail/vhosts.crypt", "size_bytes": 1, "free_bytes": 1024**3,
          "used_percent": used, "inodes_used_percent": inodes}
    found = judged(healthy(filesystems=[fs]))["disk /var/mail/vhosts.crypt"]
    assert found.level == expected
    assert ("inodes" in found.detail) == (inodes is not None)


@pytest.mark.parametrize("days,expected", [(14, "ok"), (13.9, "warning"), (3, "warning"),
                                           (2.9, "critical"), (-1, "critical")])
def test_certificate_days_left(days, expected):
    cert = {"path": "/x.pem", "not_after": int(NOW + days * 86400)}
    found = judged(healthy(certificate=cert))["certificate"]
    assert found.level == expected
    assert found.detail.startswith("EXPIRED") == (days < 0)


@pytest.mark.parametrize("age,ok,expected", [(25 * 3600, True, "ok"), (26 * 3600, True, "warning"),
                                             (3 * 86400, True, "critical"),
                                             (3600, False, "warning")])
def test_the_last_backup_by_its_age(age, ok, expected):
    backup = {"path": "/b.json", "recorded": True, "finished": NOW - age, "ok": ok,
              "archive": "a"}
    assert judged(healthy(backup=backup))["backup"].level == expected


def test_no_backup_yet_warns_only_when_backups_are_configured():
    none = healthy(backup={"path": "/b.json", "recorded": False})
    assert judged(none)["backup"].level == "info"
    status = health.judge_host("mail1", none, M, backup_configured=True)
    backup = {f.check: f for f in status.findings}["backup"]
    assert backup.level == "warning" and "mailstack backup now" in backup.detail
    assert status.level == "warning"


def test_thresholds_come_from_options_monitoring():
    m = Options.model_validate({"monitoring": {"queue_age": {"warning": "1s", "critical": "1h"},
                                               "certificate_days": {"warning": 90,
                                                                    "critical": 30}}}).monitoring
    data = healthy(queue=1, queue_oldest=2)
    assert judged(data)["queue"].level == "ok"
    assert judged(data, m)["queue"].level == "warning"
    assert judged(data, m)["certificate"].level == "warning"  # 60 days < 90


@pytest.mark.parametrize("monitoring,message", [
    ({"queue_age": {"warning": "2d", "critical": "1d"}}, "warning must be shorter than critical"),
    ({"disk_percent": {"warning": 95, "critical": 90}}, "warning must be below critical"),
    ({"certificate_days": {"warning": 3, "critical": 14}}, "warning must be more days"),
    ({"disk_percent": {"warning": 85, "critical": 101}}, "less than or equal to 100"),
    ({"backup_age": {"warning": "1 day", "critical": "3d"}}, "must be a duration"),
])
def test_thresholds_out_of_order_are_refused(monitoring, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        Options.model_validate({"monitoring": monitoring})


def test_listed_on_a_blocklist_is_a_warning_and_a_refusing_list_too():
    found = judged(healthy(listed={"bl.example": {"192.0.2.1": {"answers": ["127.0.0.4"]}}}))
    assert found["listed bl.example"].level == "warning"
    assert "bl.example lists 192.0.2.1" in found["listed bl.example"].detail
    # An answer outside the filter ("you use a public resolver") is no listing...
    found = judged(healthy(listed={"bl.example": {"192.0.2.1": {"answers": ["127.255.255.254"]}}},
                           blocklists={"bl.example": {"answers": ["127.255.255.254"]}}))
    assert found["listed bl.example"].level == "ok"
    # ...and the list that answers so for its test entry does not work: a warning.
    assert found["blocklist bl.example"].level == "warning"


def test_a_host_tool_from_before_these_checks_invents_nothing():
    old = {"ok": True, "storage": {"encryption": "none", "mounted": True, "locked": False},
           "services": {"postfix": "active"}, "queue": 2}
    assert set(judged(old)) == {"storage"}


def test_the_spam_filter_or_the_resolver_not_answering_is_critical():
    found = judged(healthy(spam_filter="connection refused"))
    assert found["spam filter"].level == "critical"


# --- JSON ---

def test_json_has_stable_keys_and_a_level_per_check():
    hosts = [health.judge_host("mail1", healthy(), M), health.unreachable("mail2", "no SSH")]
    data = json.loads(health.as_json(hosts, health.dns_skipped("skipped")))
    assert list(data) == ["schema", "level", "exit_code", "hosts", "dns"]
    assert (data["schema"], data["level"], data["exit_code"]) == (1, "critical", 2)
    one, two = data["hosts"]
    assert list(one) == ["host", "reachable", "error", "level", "checks", "status"]
    assert one["level"] == "ok" and one["reachable"] and "ok" not in one["status"]
    assert all(set(c) == {"check", "level", "detail"} for c in one["checks"])
    assert (two["reachable"], two["error"], two["level"], two["status"]) == (
        False, "no SSH", "critical", {})
    assert data["dns"] == {"checked": False, "level": "info", "detail": "skipped", "records": []}


# --- the host tool ---

def test_queue_oldest():
    entries = [{"arrival_time": NOW - 30}, {"arrival_time": NOW - 7200}, {"queue_name": "x"}]
    assert tool.queue_oldest(entries, NOW) == 7200
    assert tool.queue_oldest([], NOW) is None


def test_filesystem_counts_like_df(tmp_path):
    fs = tool.filesystem(str(tmp_path))
    assert 0 <= fs["used_percent"] <= 100 and fs["free_bytes"] > 0
    df = subprocess.run(["df", "--output=pcent", str(tmp_path)], capture_output=True, text=True,
                        check=True).stdout.split()[-1]
    assert abs(fs["used_percent"] - int(df.rstrip("%"))) <= 1  # df rounds up
    assert tool.filesystem(str(tmp_path / "missing"))["error"]


def test_certificate_end_read_with_openssl(tmp_path):
    cert = tmp_path / "fullchain.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(tmp_path / "key.pem"), "-out", str(cert), "-days", "10", "-subj",
                    "/CN=mail.example.org"], capture_output=True, check=True)
    found = tool.certificate(str(cert))
    assert abs(found["not_after"] - (time.time() + 10 * 86400)) < 120
    assert "error" in tool.certificate(str(tmp_path / "missing.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert "error" in tool.certificate(str(tmp_path / "junk.pem"))


def test_last_backup_file(tmp_path):
    path = tmp_path / "last.json"
    assert tool.last_backup(str(path)) == {"path": str(path), "recorded": False}
    path.write_text(json.dumps({"finished": NOW, "archive": "mail-2026-11-24", "ok": True}))
    assert tool.last_backup(str(path)) == {"path": str(path), "recorded": True, "finished": NOW,
                                           "ok": True, "archive": "mail-2026-11-24"}
    for bad in ("{", '{"finished": "yesterday"}', "[]"):
        path.write_text(bad)
        assert "error" in tool.last_backup(str(path)), bad


def test_the_backup_state_path_is_one_constant():
    from mailstack.render.context import BACKUP_STATE_FILE

    assert BACKUP_STATE_FILE == "/var/lib/mailstack/backup/last.json"
    assert json.loads(GOLDEN_STORAGE_JSON.read_text())["backup_state"] == BACKUP_STATE_FILE


SAMPLE = re.compile(r'^[a-z_][a-z0-9_]*(\{([a-z_]+="([^"\\]|\\.)*",?)+\})? -?[0-9.]+$')


def test_metrics_are_prometheus_text_with_escaped_labels():
    data = healthy(services={"postfix": "active", 'we"ird\\unit\n': "failed"},
                   jails={"postfix-sasl": 2, "dovecot": None},
                   backup={"recorded": True, "finished": NOW - 60, "ok": True})
    text = tool.metrics(data)
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert all(SAMPLE.match(line) for line in lines), lines
    assert "mailstack_store_locked 0" in lines
    assert 'mailstack_service_up{unit="we\\"ird\\\\unit\\n"} 0' in lines
    assert 'mailstack_fail2ban_banned{jail="postfix-sasl"} 2' in lines
    assert f"mailstack_cert_expiry_seconds {60 * 86400}" in lines
    assert f"mailstack_backup_last_success_timestamp {NOW - 60}" in lines
    assert "mailstack_queue_oldest_seconds 0" in lines
    # Each metric has its HELP and TYPE once.
    names = {line.split("{")[0].split()[0] for line in lines}
    for name in names:
        assert text.count(f"# TYPE {name} gauge\n") == 1, name


@pytest.fixture
def fake_host(tmp_path):
    """A PATH with systemctl, postqueue and fail2ban-client that answer as a host would (the
    real ones need a booted host: the e2e module has them); openssl and the rest are real."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scripts = {
        "systemctl": '[ "$1" = is-active ] && [ "$2" != --quiet ] && { echo active; exit 0; }; exit 3',
        "postqueue": f"""echo '{{"queue_name": "deferred", "arrival_time": {int(time.time()) - 90}, \
"recipients": [{{"address": "a@b.example", "delay_reason": "connect to b.example: refused"}}]}}'""",
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def test_the_metrics_verb_writes_the_file_atomically(storage_conf, tmp_path, fake_host):
    conf = storage_conf("none")
    Path(conf["root"]).mkdir()
    conf.update(services=["postfix"], spam_controller="", hostname="", blocklists=[],
                tls_cert=str(tmp_path / "missing.pem"), backup_state=str(tmp_path / "b.json"),
                prometheus_file=str(tmp_path / "textfile" / "mailstack.prom"))
    (tmp_path / "textfile").mkdir()
    conf_file = tmp_path / "storage.json"
    conf_file.write_text(json.dumps(conf))
    from conftest import RUN_TOOL

    env = {**os.environ, "PATH": f"{fake_host}:{os.environ['PATH']}"}
    proc = subprocess.run(["python3", "-I", "-c", RUN_TOOL, tool.__file__, str(conf_file),
                           "metrics"], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["written"] == conf["prometheus_file"]
    text = Path(conf["prometheus_file"]).read_text()
    assert "mailstack_queue_messages 1\n" in text
    oldest = int(re.search(r"^mailstack_queue_oldest_seconds (\d+)$", text, re.M).group(1))
    assert 85 <= oldest <= 200
    assert os.listdir(tmp_path / "textfile") == ["mailstack.prom"]  # no temporary file left
    assert oct(os.stat(conf["prometheus_file"]).st_mode & 0o777) == "0o644"
    # status answers the same facts as JSON
    proc = subprocess.run(["python3", "-I", "-c", RUN_TOOL, tool.__file__, str(conf_file),
                           "status"], capture_output=True, text=True, env=env, check=False)
    data = json.loads(proc.stdout)
    assert data["queue"] == 1 and 85 <= data["queue_oldest"] <= 200
    assert data["backup"]["recorded"] is False and "error" in data["certificate"]
    assert [f["path"] for f in data["filesystems"]] == [conf["root"]]
    # A directory it cannot write to: a JSON error, exit 1, no traceback.
    conf["prometheus_file"] = str(tmp_path / "missing-dir" / "mailstack.prom")
    conf_file.write_text(json.dumps(conf))
    proc = subprocess.run(["python3", "-I", "-c", RUN_TOOL, tool.__file__, str(conf_file),
                           "metrics"], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["error"].startswith("cannot write ")


# --- render ---

def test_prometheus_files_only_when_on_and_the_exporter_on_loopback(site_dir):
    from mailstack.render.renderer import render_host
    from mailstack.site.directory import Site
    from mailstack.site.inventory import select_hosts

    site = Site(site_dir)
    [inv_host] = select_hosts(site.root, site.inventory, None)
    off = {str(f.path) for f in render_host(site.config, site.secrets, inv_host)}
    assert not any("prometheus" in p or "mailstack-metrics" in p for p in off)
    cfg = site.config.model_copy(update={"options": site.config.options.model_copy(
        update={"monitoring": Monitoring(prometheus=True)})})
    on = {str(f.path): f.content for f in render_host(cfg, site.secrets, inv_host)}
    args = on["etc/default/prometheus-node-exporter"]
    assert '--web.listen-address=127.0.0.1:9100 ' in args
    assert "--collector.textfile.directory=/var/lib/prometheus/node-exporter\"" in args
    assert "ExecStart=/usr/local/sbin/mailstack-storage metrics\n" in on[
        "etc/systemd/system/mailstack-metrics.service"]
    assert "OnUnitActiveSec=1min\n" in on["etc/systemd/system/mailstack-metrics.timer"]
    assert json.loads(on["etc/mailstack/storage.json"])["prometheus_file"] == (
        "/var/lib/prometheus/node-exporter/mailstack.prom")


# --- the command ---

def test_an_unreachable_host_is_critical_with_a_message_and_no_traceback(site_dir, tmp_path):
    import socket

    with socket.socket() as s:  # bound, not listening: refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        write_inventory(site_dir, "mail1", "127.0.0.1", "root", port, None)
        result = CliRunner().invoke(app, ["--site", str(site_dir), "status", "--no-dns"])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"mail1: UNREACHABLE: cannot reach root@127.0.0.1:{port} over SSH" in result.output
    assert "Traceback" not in result.output
    assert "dns: DNS not checked (--no-dns)" in result.output
    assert result.output.splitlines()[-1].startswith("status: CRITICAL (mail1: not asked: ")
    as_json = CliRunner().invoke(app, ["--site", str(site_dir), "status", "--no-dns", "--json"])
    assert as_json.exit_code == 2
    data = json.loads(as_json.output)
    assert data["hosts"][0]["reachable"] is False and data["exit_code"] == 2


def test_special_use_names_skip_dns_with_a_note():
    """The site of site_dir is example.org (public DNS); a .test site is skipped unless a
    resolver is named, as `mailstack verify` does."""
    from types import SimpleNamespace

    from mailstack.verify.published import why_skipped

    site = SimpleNamespace(config=SimpleNamespace(hostname="mail.status.test",
                                                  domains={"status.test": None}))
    assert "special-use names" in why_skipped(site, None)
    assert health.dns_skipped(why_skipped(site, None)).finding.level == "info"


def test_own_addresses_are_the_routes_source_and_never_loopback():
    import ipaddress

    found = tool.own_addresses("localhost")  # localhost itself only adds loopback: dropped
    assert all(not ipaddress.ip_address(a).is_loopback for a in found), found
    assert found == sorted(set(found))


def test_status_that_cannot_even_ask_is_critical_not_a_warning(site_dir):
    """Exit 1 is a warning to a monitoring system: a mistake before any host is asked (here a
    resolver that is no address) exits 2, with the message."""
    result = CliRunner().invoke(app, ["--site", str(site_dir), "status", "--resolver", "-x"])
    assert result.exit_code == 2, result.output
    assert "--resolver '-x': must be an IP address" in result.output


def test_an_unknown_host_is_critical_too(site_dir):
    result = CliRunner().invoke(app, ["--site", str(site_dir), "status", "--host", "nosuch",
                                      "--no-dns"])
    assert result.exit_code == 2, result.output
    assert "nosuch" in result.output and "Traceback" not in result.output
