"""CLI behaviour: version, help everywhere, clean errors, tracebacks only with --debug."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mailstack import __version__
from mailstack.cli import app

COMMANDS = [[], ["init"], ["render"], ["user"], ["user", "add"], ["user", "remove"],
            ["user", "list"], ["user", "passwd"], ["alias"], ["alias", "add"],
            ["alias", "remove"], ["alias", "list"], ["domain"], ["domain", "add"],
            ["domain", "remove"], ["domain", "list"], ["relay", "set"], ["relay", "clear"],
            ["spam"], ["spam", "password"],
            ["sandbox", "up"], ["sandbox", "down"], ["deploy"], ["verify"], ["dns"],
            ["dns", "check"], ["dns", "push"], ["dns", "key"], ["dns", "key", "set"],
            ["dns", "key", "clear"], ["unban"]]


def test_version(runner):
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"mailstack {__version__}"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "mailstack")
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_on_every_command(runner, command, flag):
    result = runner.invoke(app, [*command, flag])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_module_entry_point_runs_as_a_real_process():
    result = subprocess.run([sys.executable, "-m", "mailstack", "--help"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "init" in result.stdout and "render" in result.stdout


def test_outside_a_site_is_a_clean_error(runner, tmp_path):
    result = runner.invoke(app, ["--site", str(tmp_path), "user", "list"])
    assert result.exit_code == 1
    assert "is not a mailstack site" in result.output
    assert "mailstack init DIR" in result.output
    assert "Traceback" not in result.output


def test_invalid_config_exits_2_with_every_problem(runner, site_dir):
    path = site_dir / "mailstack.yml"
    path.write_text(path.read_text().replace("hostname:", "hostnme:").replace(
        "message_size_limit: 50M", "message_size_limit: huge"))
    result = runner.invoke(app, ["--site", str(site_dir), "render"])
    assert result.exit_code == 2
    assert "mailstack.yml is invalid (3 problem(s))" in result.output
    assert "unknown key 'hostnme'; did you mean 'hostname'?" in result.output
    assert "hostname: is required" in result.output
    assert "options.message_size_limit (line" in result.output
    assert "Traceback" not in result.output


def test_wrong_vault_password_is_a_clean_error(runner, site_dir, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("not the password\n")
    result = runner.invoke(app, ["--site", str(site_dir), "--vault-password-file", str(wrong),
                                 "domain", "list"])
    assert result.exit_code == 1
    assert "cannot decrypt" in result.output and "wrong password" in result.output
    (site_dir / ".vault-password").unlink()
    result = runner.invoke(app, ["--site", str(site_dir), "domain", "list"])
    assert result.exit_code == 1
    assert ".vault-password not found" in result.output


def test_debug_shows_the_traceback(site_dir):
    (site_dir / ".vault-password").unlink()
    plain = subprocess.run([sys.executable, "-m", "mailstack", "--site", str(site_dir),
                            "domain", "list"], capture_output=True, text=True, check=False)
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    debug = subprocess.run([sys.executable, "-m", "mailstack", "--debug", "--site",
                            str(site_dir), "domain", "list"], capture_output=True, text=True,
                           check=False)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.parametrize("command", [["verify", "--host"], ["render", "--host"], ["unlock"]])
def test_unknown_host_is_named_without_a_traceback(runner, site_dir, command):
    result = runner.invoke(app, ["--site", str(site_dir), *command, "other.example.org"])
    assert result.exit_code == 2, result.output
    assert "host 'other.example.org' is not in the inventory's mail group" in result.output
    assert "(hosts: mail.example.org)" in result.output


@pytest.mark.parametrize("args,message", [
    ([], "give one IP address to unban, or --all"),
    (["192.0.2.1", "--all"], "give one IP address to unban, or --all"),
    (["-oProxyCommand=x"], "No such option"),
    (["--", "-oProxyCommand=x"], "not an IP address"),
    (["192.0.2.1\nx"], "not an IP address"),
])
def test_unban_refuses_anything_but_one_address(cli, args, message):
    result = cli("unban", *args)
    assert result.exit_code != 0
    assert message in result.output
