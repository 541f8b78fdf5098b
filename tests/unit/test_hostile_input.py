"""Values that reach a config file or an argv are checked whole: a newline, a control
character, a path separator or a leading "-" is refused with a message naming the field, exits
non-zero and changes nothing. (Python's `$` also matches before a trailing newline: every
pattern here must hold for the whole value.)"""

from __future__ import annotations

import pytest
from conftest import PASSWORD, all_site_bytes

from mailstack.errors import ConfigError
from mailstack.site.directory import InitOptions, init_site
from mailstack.site.inventory import inventory_file, load_hosts

CONTROL = ["\n", "\r", "\t", "\x00", "\x1b", "\x7f"]


def _snapshot(site):
    return all_site_bytes(site)


@pytest.mark.parametrize("bad", [
    "bob\n@example.org", "bob@example.org\n.x", "alice/x@example.org", "a$b@example.org",
    "bob\r@example.org", "-x@example.org\n", "bob@exam\nple.org",
])
def test_user_add_refuses_addresses_that_would_break_a_file(cli, bad):
    before = _snapshot(cli.site)
    result = cli("user", "add", bad, "--password-stdin", input=PASSWORD + "\n")
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert _snapshot(cli.site) == before


@pytest.mark.parametrize("field,bad", [
    ("source", "post\nmaster@example.org"), ("destination", "friend@else\nwhere.test"),
    ("destination", "friend/x@elsewhere.test"),
])
def test_alias_add_refuses_control_characters(cli, field, bad):
    cli("user", "add", "alice@example.org", "--password-stdin", input=PASSWORD + "\n")
    before = _snapshot(cli.site)
    args = [bad, "alice@example.org"] if field == "source" else ["team@example.org", bad]
    result = cli("alias", "add", *args)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert _snapshot(cli.site) == before


@pytest.mark.parametrize("domain", ["exa\nmple.org", "example.org\n.x", "-x.example.org",
                                    "example.org/x"])
def test_domain_add_refuses_bad_names(cli, domain):
    before = _snapshot(cli.site)
    result = cli("domain", "add", domain)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert _snapshot(cli.site) == before


@pytest.mark.parametrize("host,user,why", [
    ("[smtp.relay.test]:587", "user\nname", "relay.username"),
    ("[smtp.relay.test]:587", "user name", "relay.username"),
    ("[smtp.relay.test]:587", "user:name", "relay.username"),
    ("[smtp.relay.test]:99999", "user", "port 99999"),
    ("[smtp.relay.test]:587\nrelayhost = evil", "user", "relay.host"),
    ("[smtp.relay.test]:0", "user", "port 0"),
])
def test_relay_set_refuses_values_that_break_sasl_passwd(cli, host, user, why):
    before = _snapshot(cli.site)
    result = cli("relay", "set", host, user, "--password-stdin", input="s3cret-relay-pw\n")
    assert result.exit_code != 0, result.output
    assert why in result.output
    assert _snapshot(cli.site) == before


def test_relay_password_with_a_control_character_is_refused(cli):
    before = _snapshot(cli.site)
    result = cli("relay", "set", "[smtp.relay.test]:587", "user", "--password-stdin",
                 input="pass\tword\n")
    assert result.exit_code == 1 and "control character" in result.output
    assert _snapshot(cli.site) == before


@pytest.mark.parametrize("yaml_value,field", [
    ("hostname: mail.example.org\\n.x", "hostname"),
    ("admin_email: \"admin\\n@example.org\"", "admin_email"),
])
def test_hand_edited_config_with_newlines_is_refused(cli, yaml_value, field):
    path = cli.site / "mailstack.yml"
    text = path.read_text()
    key = yaml_value.split(":")[0]
    lines = [(f'{key}: "{yaml_value.split(": ", 1)[1].strip(chr(34))}"' if line.startswith(key + ":")
              else line) for line in text.splitlines()]
    path.write_text("\n".join(lines) + "\n")
    result = cli("render")
    assert result.exit_code == 2, result.output
    assert field in result.output


@pytest.mark.parametrize("quota,ok", [("0", True), ("2G", True), ("9223372036854775807", True),
                                      ("9223372036854775808", False), ("9999999999G", False)])
def test_quota_must_fit_dovecot_and_the_database(cli, quota, ok):
    result = cli("user", "add", "alice@example.org", "--quota", quota, "--password-stdin",
                 input=PASSWORD + "\n")
    assert (result.exit_code == 0) == ok, result.output


@pytest.mark.parametrize("size,ok", [("50M", True), ("64K", True), ("1G", True), ("0", False),
                                     ("100000000000000000000000", False), ("2G", False)])
def test_message_size_limit_is_range_checked(cli, size, ok):
    path = cli.site / "mailstack.yml"
    path.write_text(path.read_text().replace("message_size_limit: 50M",
                                             f"message_size_limit: {size}"))
    result = cli("user", "list")
    assert (result.exit_code == 0) == ok, result.output
    if not ok:
        assert "message_size_limit" in result.output


@pytest.mark.parametrize("flag,value", [
    ("--ssh-user", "-oProxyCommand=touch /tmp/pwned"), ("--ssh-user", "root\n"),
    ("--ssh-user", "ro ot"), ("--host", "-oProxyCommand=x"), ("--host", "1.2.3.4\n"),
    ("--hostname", "mail.example.org\n.x"), ("--domain", "example.org\nx"),
])
def test_init_refuses_values_that_reach_an_argv(runner, tmp_path, flag, value):
    from mailstack.cli import app

    args = {"--domain": "example.org", "--hostname": "mail.example.org",
            "--host": "192.0.2.1", "--ssh-user": "root"}
    args[flag] = value
    argv = ["init", str(tmp_path / "site")] + [x for kv in args.items() for x in kv]
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert flag in result.output
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize("setting,value,named", [
    ("ansible_user", "-oProxyCommand=x", "ansible_user"),
    ("ansible_user", "'root\\nx'", "ansible_user"),
    ("ansible_host", "-oProxyCommand=x", "ansible_host"),
    ("ansible_port", "99999", "ansible_port"),
    ("ansible_ssh_private_key_file", "-oProxyCommand=x", "ansible_ssh_private_key_file"),
])
def test_a_hand_edited_inventory_is_checked_before_any_ssh(tmp_path, setting, value, named):
    site = init_site(tmp_path / "site", InitOptions("example.org", "mail.example.org",
                                                    "192.0.2.1"))
    path = inventory_file(site)
    lines = [line for line in path.read_text().splitlines() if setting not in line]
    lines.append(f"          {setting}: {value}")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as info:
        load_hosts(site)
    assert named in str(info.value)


def test_rendered_files_never_carry_an_injected_line(cli, tmp_path):
    """Whatever was refused above, what is accepted renders line for line."""
    cli("user", "add", "o'brien+tag@example.org", "--password-stdin", input=PASSWORD + "\n")
    assert cli("render", "--out", str(tmp_path / "b")).exit_code == 0
    for f in (tmp_path / "b").rglob("*"):
        if f.is_file():
            assert "\r" not in f.read_text(errors="replace"), f


def test_a_leading_dash_is_refused_where_the_cli_parser_would_not_see_it(site_dir):
    from mailstack.errors import MailstackError
    from mailstack.site.accounts import add_user
    from mailstack.site.directory import Site

    with pytest.raises(MailstackError, match="not starting with -"):
        add_user(Site(site_dir), "-oProxyCommand=x@example.org", PASSWORD)


def test_ssh_argv_refuses_an_option_as_user_or_host():
    from mailstack.deploy.ssh import ssh_argv
    from mailstack.errors import MailstackError

    for user, host in (("-oProxyCommand=x", "192.0.2.1"), ("root", "-oProxyCommand=x")):
        with pytest.raises(MailstackError, match="option"):
            ssh_argv(user, host, known_hosts=None, remote=["true"])


@pytest.mark.parametrize("name,ok", [("mailstack-molecule-default", True), ("mail.example.org", True),
                                     ("../etc", False), ("-oProxyCommand=x", False),
                                     ("a/b", False)])
def test_inventory_host_names_are_names_not_paths(tmp_path, name, ok):
    site = init_site(tmp_path / "site", InitOptions("example.org", "mail.example.org",
                                                    "192.0.2.1"))
    path = inventory_file(site)
    path.write_text(path.read_text().replace("        mail.example.org:", f"        '{name}':"))
    if ok:
        assert load_hosts(site)[0].name == name
    else:
        with pytest.raises(ConfigError, match="inventory name"):
            load_hosts(site)
