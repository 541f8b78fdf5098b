"""What mail clients set themselves up from: Thunderbird's autoconfig and Outlook's
autodiscover documents (served by nginx for every domain) and the Apple profile of
`mailstack user profile`, parsed as the clients parse them."""

from __future__ import annotations

import plistlib
import xml.etree.ElementTree as ET

from conftest import PASSWORD

from mailstack.render.renderer import render_site
from mailstack.site.directory import Site

ALICE = "alice@example.org"
AUTODISCOVER_NS = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"


def _rendered(site) -> dict[str, str]:
    (files,) = render_site(Site(site)).values()
    return {str(f.path): f.content for f in files}


def _with_second_domain(cli) -> None:
    assert cli("domain", "add", "example.net").exit_code == 0


def test_thunderbird_gets_imap_and_submission_over_tls_for_every_domain(cli):
    _with_second_domain(cli)
    root = ET.fromstring(_rendered(cli.site)["var/www/mailstack/autoconfig/mail/config-v1.1.xml"])
    provider = root.find("emailProvider")
    assert [d.text for d in provider.findall("domain")] == ["example.net", "example.org"]
    incoming = provider.find("incomingServer")
    assert incoming.get("type") == "imap"
    assert (incoming.findtext("hostname"), incoming.findtext("port"),
            incoming.findtext("socketType"), incoming.findtext("username")) == \
        ("mail.example.org", "993", "SSL", "%EMAILADDRESS%")
    outgoing = [(o.findtext("port"), o.findtext("socketType"))
                for o in provider.findall("outgoingServer")]
    assert outgoing == [("465", "SSL"), ("587", "STARTTLS")]


def test_outlook_gets_imap_and_smtp_over_tls(cli):
    root = ET.fromstring(_rendered(cli.site)["var/www/mailstack/autodiscover/autodiscover.xml"])
    protocols = {p.findtext(f"{AUTODISCOVER_NS}Type"): p
                 for p in root.iter(f"{AUTODISCOVER_NS}Protocol")}
    assert set(protocols) == {"IMAP", "SMTP"}
    for kind, port in (("IMAP", "993"), ("SMTP", "465")):
        p = protocols[kind]
        assert p.findtext(f"{AUTODISCOVER_NS}Server") == "mail.example.org"
        assert p.findtext(f"{AUTODISCOVER_NS}Port") == port
        assert p.findtext(f"{AUTODISCOVER_NS}SSL") == "on"


def _user(cli) -> None:
    assert cli("user", "add", ALICE, "--password-stdin", input=PASSWORD + "\n").exit_code == 0


def test_the_apple_profile_has_no_password_unless_asked(cli):
    _user(cli)
    first = cli("user", "profile", ALICE.upper())
    assert first.exit_code == 0, first.output
    profile = plistlib.loads(first.stdout_bytes)
    (account,) = profile["PayloadContent"]
    assert account["EmailAddress"] == ALICE
    assert account["IncomingMailServerHostName"] == "mail.example.org"
    assert account["IncomingMailServerPortNumber"] == 993 and account["IncomingMailServerUseSSL"]
    assert account["OutgoingMailServerPortNumber"] == 465 and account["OutgoingMailServerUseSSL"]
    assert "IncomingPassword" not in account and PASSWORD not in first.output
    # The same identifiers every time: a newer profile replaces the installed one.
    assert cli("user", "profile", ALICE).stdout_bytes == first.stdout_bytes


def test_the_apple_profile_takes_only_the_mailbox_s_own_password(cli):
    _user(cli)
    made = cli("user", "profile", ALICE, "--password-stdin", input=PASSWORD + "\n")
    assert made.exit_code == 0, made.output
    (account,) = plistlib.loads(made.stdout_bytes)["PayloadContent"]
    assert account["IncomingPassword"] == PASSWORD
    wrong = cli("user", "profile", ALICE, "--password-stdin", input="not the password\n")
    assert wrong.exit_code != 0 and "not the password of alice@example.org" in wrong.output
    assert b"<plist" not in wrong.stdout_bytes


def test_a_profile_for_an_unknown_mailbox_is_refused(cli):
    result = cli("user", "profile", "nobody@example.org")
    assert result.exit_code != 0 and "not a mailbox of this site" in result.output


def _groupware(cli) -> None:
    config = cli.site / "mailstack.yml"
    text = config.read_text()
    assert "  groupware: false\n" in text
    config.write_text(text.replace("  groupware: false\n", "  groupware: true\n"))


def test_with_the_groupware_the_apple_profile_is_activesync_or_imap_with_dav(cli):
    _user(cli)
    _groupware(cli)
    made = cli("user", "profile", ALICE, "--password-stdin", input=PASSWORD + "\n")
    assert made.exit_code == 0, made.output
    (account,) = plistlib.loads(made.stdout_bytes)["PayloadContent"]
    assert account["PayloadType"] == "com.apple.eas.account"
    assert (account["Host"], account["UserName"], account["EmailAddress"], account["SSL"],
            account["Password"]) == ("mail.example.org", ALICE, ALICE, True, PASSWORD)
    imap = cli("user", "profile", ALICE, "--protocol", "imap")
    assert imap.exit_code == 0, imap.output
    accounts = {a["PayloadType"]: a for a in plistlib.loads(imap.stdout_bytes)["PayloadContent"]}
    assert set(accounts) == {"com.apple.mail.managed", "com.apple.caldav.account",
                             "com.apple.carddav.account"}
    caldav = accounts["com.apple.caldav.account"]
    assert caldav["CalDAVPrincipalURL"] == f"https://mail.example.org/SOGo/dav/{ALICE}/"
    assert caldav["CalDAVPort"] == 443 and caldav["CalDAVUseSSL"]
    assert "CalDAVPassword" not in caldav
    # Distinct identifiers: installing one payload never replaces another.
    assert len({a["PayloadUUID"] for a in accounts.values()}) == 3


def test_an_activesync_profile_without_the_groupware_is_refused_before_any_prompt(cli):
    _user(cli)
    result = cli("user", "profile", ALICE, "--protocol", "activesync", "--with-password")
    assert result.exit_code == 1 and "options.groupware: true" in result.output
    assert "assword" not in result.output.split("needs")[0]
    odd = cli("user", "profile", ALICE, "--protocol", "pop3")
    assert odd.exit_code == 1 and "one of activesync, imap" in odd.output
