"""The groupware (options.groupware: SOGo from Debian) on one deployed host shared by every
test here: a stack-image host reached over SSH, its store encrypted (gocryptfs, the
default), a message delivered through Postfix and LMTP as from the outside, then spoken to
over HTTPS on port 443 with real protocol clients (Python's HTTP client; WBXML for
ActiveSync, tests/e2e/wbxml.py):

- webmail: the JSON login SOGo's own pages use (/SOGo/connect) with the mailbox's password
  (the same {ARGON2ID} hash Dovecot checks) and the INBOX listed, the delivered message in
  it; a reply written there goes out through submission and arrives; a wrong password is
  refused; and the same as a person does it in a real browser (Debian's Chromium, headless:
  tests/e2e/browser.py): log in, read a message, reply, and the reply arrives;
- CalDAV: an event PUT into the personal calendar, read back by GET and by a REPORT
  calendar-query; /.well-known/caldav leads there;
- CardDAV: a contact PUT into the personal address book, read back by GET and as a
  contacts app syncs (PROPFIND of the etags, addressbook-multiget); /.well-known/carddav
  leads there;
- calendars and contacts are encrypted at rest: SOGo's database server keeps its data in
  the store (an event's text is there, and nowhere else on disk in clear text);
- Exchange ActiveSync: OPTIONS announces the protocol versions; FolderSync lists the INBOX,
  Sync brings the delivered message; a waiting Ping answers when new mail arrives (push),
  and the next Sync brings it;
- phones set themselves up from an address and a password: autodiscover's mobilesync
  answer names ActiveSync's URL (Outlook's still IMAP and SMTP), and `mailstack user
  profile` (ActiveSync; or IMAP with CalDAV and CardDAV) names what logs in;
- while the store is locked, webmail, DAV and ActiveSync answer 503 (never an empty
  mailbox), SOGo's database server is stopped, and after `mailstack unlock` the INBOX and
  the calendar are back;
- a second deploy changes nothing;
- an address that keeps failing the webmail login is banned from the web ports (fail2ban's
  sogo-auth jail) until `mailstack unban`;
- turned off again, SOGo, its database server and memcached are stopped and disabled, the
  web side no longer serves SOGo, and its data stays in the store.

Tests run in file order and build on each other (one deployed host). `-s` shows the timings.
"""

from __future__ import annotations

import email.policy
import email.utils
import html
import http.client
import json
import plistlib
import re
import secrets
import smtplib
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import EmailMessage
from pathlib import Path
from xml.etree import ElementTree

import pytest
import testbed

from mailstack.render.context import SOGO, VMAIL, WEB
from mailstack.sandbox import host as sandbox
from mailstack.site.directory import Site
from mailstack.site.tls import site_key

from . import wbxml
from .browser import chromium, served_certificate
from .helpers import PASSWORD, edit_config, fetch_matching, imap_subjects, mailstack, wait_for_subjects
from .sogo import EVENT, Pages, Response, Web, subjects_of

pytestmark = pytest.mark.testbed

DOMAIN = "groupware.test"
ALICE = f"alice@{DOMAIN}"
OUTSIDE = "someone@outside.test"
RUN = secrets.token_hex(3)
SUBJECT = f"Groupware hello {RUN}"
EAS_PATH = "/Microsoft-Server-ActiveSync"
MAX_FAILURES = 5  # options.bans.max_failures as `mailstack init` writes it


def eas(web: Web, command: str, body: wbxml.Node | None = None, *, device: str,
        timeout: float = 60) -> Response:
    query = f"Cmd={command}&User={ALICE}&DeviceId={device}&DeviceType=mailstacktest"
    return web.request("POST", f"{EAS_PATH}?{query}",
                       wbxml.encode(body) if body else None,
                       {"MS-ASProtocolVersion": "14.1",
                        "Content-Type": "application/vnd.ms-sync.wbxml",
                        "User-Agent": "mailstack-test/1"},
                       auth=(ALICE, PASSWORD), timeout=timeout)


def deliver(ip: str, subject: str, text: str = "Read me in the webmail.") -> str:
    """Over port 25 from the outside (null sender: this host resolves nothing); returns the
    Message-ID."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = f"Outside <{OUTSIDE}>", ALICE, subject
    msg["Date"], msg["Message-ID"] = email.utils.formatdate(), email.utils.make_msgid()
    msg.set_content(text)
    with smtplib.SMTP(ip, 25, timeout=20, local_hostname="client.test") as smtp:
        smtp.sendmail("", [ALICE], msg.as_bytes(policy=email.policy.SMTP))
    return msg["Message-ID"]


@dataclass
class Bed:
    name: str
    ip: str
    site: Path
    # The ActiveSync INBOX's ServerId and SyncKey, once a Sync has run.
    eas_state: tuple[str, str] = ("", "")

    @property
    def web(self) -> Web:
        return Web(self.ip, f"mail.{DOMAIN}")


def wait_for_login(web: Web, timeout: float = 60) -> Response:
    """sogod's workers take a moment after a (re)start."""
    deadline = time.monotonic() + timeout
    while True:
        answer = web.login(ALICE, PASSWORD)
        if answer.status == 200 or time.monotonic() > deadline:
            return answer
        time.sleep(1)


@pytest.fixture(scope="module")
def bed(tmp_path_factory) -> Iterator[Bed]:
    key = sandbox.ensure_keypair(sandbox.default_state_dir())
    name = f"mailstack-e2e-groupware-{RUN}"
    site = tmp_path_factory.mktemp("groupware") / "site"
    try:
        started = time.monotonic()
        # NET_ADMIN: fail2ban's bans need nftables rules of the host's own (a VPS has them).
        host = testbed.start_host(name, testbed.stack_image(), hostname=f"mail.{DOMAIN}",
                                  ssh_pubkey=key.with_suffix(".pub").read_text(),
                                  cap_add=("NET_ADMIN",))
        init = mailstack(None, "init", str(site), "--domain", DOMAIN, "--hostname",
                         f"mail.{DOMAIN}", "--host", host.ip, "--ssh-key", str(key))
        assert init.returncode == 0, init.stderr
        testbed.offline_site(site)
        edit_config(site, ("  groupware: false\n", "  groupware: true\n"))
        assert mailstack(site, "user", "add", ALICE, "--password-stdin",
                         input=PASSWORD + "\n").returncode == 0
        deployed = mailstack(site, "deploy")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        print(f"\ndeploy with the groupware: {time.monotonic() - started:.1f} s")
        deliver(host.ip, SUBJECT)
        yield Bed(name, host.ip, site)
    finally:
        testbed.remove_host(name)


def test_webmail_login_lists_the_inbox(bed):
    web = bed.web
    started = time.monotonic()
    login = wait_for_login(web)
    assert login.status == 200, (login.status, login.body[:500])
    assert "0xHIGHFLYxSOGo" in web.cookies  # the session
    print(f"login: {time.monotonic() - started:.1f} s")
    deadline = time.monotonic() + 30
    while True:
        listing = web.inbox(ALICE)
        assert listing.status == 200, (listing.status, listing.body[:500])
        found = subjects_of(listing.json())
        if SUBJECT in found or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert found.count(SUBJECT) == 1, found


def test_a_reply_from_the_webmail_arrives(bed):
    """A reply written in the webmail (SOGo's reply, then send of the draft, as its pages do)
    goes out through submission as the user and arrives, once, read back over IMAPS."""
    web = bed.web
    assert wait_for_login(web).status == 200
    listing = web.inbox(ALICE).json()
    columns, *rows = listing["headers"]
    uid = next(row[columns.index("uid")] for row in rows
               if row[columns.index("Subject")] == SUBJECT)
    xsrf = {"Content-Type": "application/json", "X-XSRF-TOKEN": web.cookies.get("XSRF-TOKEN", "")}
    draft = web.request("POST", f"/SOGo/so/{ALICE}/Mail/0/folderINBOX/{uid}/reply", b"{}", xsrf)
    assert draft.status == 201, (draft.status, draft.body[:300])
    where = draft.json()
    reply = f"Re: {SUBJECT}"
    sent = web.request(
        "POST", f"/SOGo/so/{ALICE}/Mail/{where['accountId']}/folder{where['mailboxPath']}/"
                f"{where['draftId']}/send",
        json.dumps({"from": ALICE, "to": [ALICE], "subject": reply, "isHTML": 0,
                    "text": "Written in the webmail."}).encode(), xsrf)
    assert sent.status == 200, (sent.status, sent.body[:300])
    # SOGo writes the subject as encoded words ("=?utf-8?q?Re=3A?= …"): compared decoded.
    deadline = time.monotonic() + 60
    while (found := [str(make_header(decode_header(s)))
                     for s in imap_subjects(bed.ip, ALICE)].count(reply)) == 0:
        assert time.monotonic() < deadline, f"never arrived: {reply}"
        time.sleep(0.5)
    assert found == 1


def replies_to(ip: str, message_id: str) -> list[EmailMessage]:
    """The messages in alice's INBOX whose In-Reply-To is message_id (read whole over IMAPS,
    compared here: no server-side search)."""
    inbox = [email.message_from_bytes(raw, policy=email.policy.default)
             for raw in fetch_matching(ip, ALICE, ("ALL",))]
    return [m for m in inbox if m["In-Reply-To"] == message_id]


def test_a_browser_reads_a_message_and_its_reply_arrives(bed, tmp_path):
    """A person in Debian's Chromium (headless, over HTTPS, the host's certificate trusted
    once it is known to carry the site's key): logs in on SOGo's login page, opens a
    message delivered from the outside, reads its text, replies, addressed to herself (this
    host reaches no outside MX) with a line typed into the editor, and sends; the reply
    arrives once, a reply to that message (In-Reply-To) carrying the typed line and the
    quoted text."""
    subject, text = f"Browser hello {RUN}", f"Written for the browser {RUN}."
    typed = f"Answered in Chromium {RUN}."
    message_id = deliver(bed.ip, subject, text)
    wait_for_subjects(bed.ip, ALICE, [subject])
    certificate = served_certificate(bed.ip, f"mail.{DOMAIN}", site_key(Site(bed.site).secrets))
    started = time.monotonic()
    with chromium(tmp_path, f"mail.{DOMAIN}", bed.ip, certificate) as driver:
        pages = Pages(driver)
        pages.log_in(f"https://mail.{DOMAIN}/SOGo/", ALICE, PASSWORD)
        shown = pages.open_message(subject)
        assert text in shown, shown
        pages.reply(ALICE, typed, quoted=text)
    print(f"browser: login, read, reply and send: {time.monotonic() - started:.1f} s")
    deadline = time.monotonic() + 60
    while not (found := replies_to(bed.ip, message_id)):
        assert time.monotonic() < deadline, f"no reply to {message_id} arrived"
        time.sleep(0.5)
    assert len(found) == 1, [str(answer["Subject"]) for answer in found]
    answer = found[0]
    assert answer["Subject"] == f"Re: {subject}"  # decoded (SOGo writes encoded words)
    assert [a.addr_spec for a in answer["To"].addresses] == [ALICE]
    assert answer["From"].addresses[0].addr_spec == ALICE
    # SOGo names the browser's address in X-Forward (its copy in Sent has it); submission's
    # cleanup drops it from what goes out, as it drops the Received header naming the
    # user's computer.
    sent = [email.message_from_bytes(raw, policy=email.policy.default)
            for raw in fetch_matching(bed.ip, ALICE, ("ALL",), folder="Sent")]
    copy = [m for m in sent if m["In-Reply-To"] == message_id]
    assert len(copy) == 1 and copy[0]["X-Forward"], [dict(m.items()) for m in copy]
    assert answer["X-Forward"] is None, answer["X-Forward"]
    # The editor writes HTML: entities (&nbsp;) and line breaks evened out.
    body = " ".join(html.unescape(" ".join(part.get_content() for part in answer.walk()
                                           if part.get_content_maintype() == "text")).split())
    assert typed in body and text in body, body


def test_a_wrong_password_is_refused(bed):
    web = bed.web
    answer = web.login(ALICE, PASSWORD + "x")
    assert answer.status == 403, (answer.status, answer.body[:300])
    assert "0xHIGHFLYxSOGo" not in web.cookies
    # Nor does an unknown user get in (the same answer).
    assert bed.web.login(f"nobody@{DOMAIN}", PASSWORD).status == 403


def test_the_webmail_is_https_only(bed):
    conn = http.client.HTTPConnection(bed.ip, 80, timeout=10)
    conn.request("GET", "/SOGo/", headers={"Host": f"mail.{DOMAIN}"})
    resp = conn.getresponse()
    assert resp.status == 301 and resp.getheader("Location", "").startswith("https://")


CALENDAR_QUERY = b"""<?xml version="1.0" encoding="utf-8"?>
<C:calendar-query xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav">
  <D:prop><D:getetag/><C:calendar-data/></D:prop>
  <C:filter><C:comp-filter name="VCALENDAR"><C:comp-filter name="VEVENT">
    <C:time-range start="20261201T000000Z" end="20270101T000000Z"/>
  </C:comp-filter></C:comp-filter></C:filter>
</C:calendar-query>
"""


def dav_put(web: Web, well_known: str, path: str, text: str, content_type: str) -> Response:
    """A new resource PUT as ALICE, after checking that /.well-known/<well_known> leads to
    SOGo's DAV root (RFC 6764); the GET of it."""
    auth = (ALICE, PASSWORD)
    found = web.request("PROPFIND", f"/.well-known/{well_known}", auth=auth)
    assert found.status == 301
    assert found.headers["Location"].endswith("/SOGo/dav/")
    web.put_new(path, text, content_type, auth)
    got = web.request("GET", path, auth=auth)
    assert got.status == 200
    return got


def dav_xml(web: Web, method: str, path: str, body: bytes, element: str) -> list[str]:
    """A PROPFIND or REPORT (Depth 1) as ALICE: the text of every `element` in the answer."""
    answer = web.request(method, path, body,
                         {"Content-Type": "application/xml; charset=utf-8", "Depth": "1"},
                         auth=(ALICE, PASSWORD))
    assert answer.status == 207, (answer.status, answer.body[:500])
    return [e.text or "" for e in ElementTree.fromstring(answer.body).iter(element)]


def test_caldav_stores_an_event_and_reads_it_back(bed):
    web = bed.web
    uid = str(uuid.uuid4())
    summary = f"Dinner 🎄 à Noël {RUN}"
    path = f"/SOGo/dav/{ALICE}/Calendar/personal/{uid}.ics"
    got = dav_put(web, "caldav", path, EVENT.format(uid=uid, summary=summary), "text/calendar")
    assert f"SUMMARY:{summary}" in got.body.decode() and f"UID:{uid}" in got.body.decode()
    found = dav_xml(web, "REPORT", f"/SOGo/dav/{ALICE}/Calendar/personal/", CALENDAR_QUERY,
                    "{urn:ietf:params:xml:ns:caldav}calendar-data")
    assert [text for text in found if f"UID:{uid}" in text and f"SUMMARY:{summary}" in text], found
    # Someone else's password does not read it.
    denied = web.request("GET", path, auth=(ALICE, PASSWORD + "x"))
    assert denied.status == 401


CONTACT = """BEGIN:VCARD\r
VERSION:3.0\r
UID:{uid}\r
FN:{name}\r
N:{last};Zoë;;;\r
EMAIL;TYPE=INTERNET:zoe.{run}@outside.test\r
END:VCARD\r
"""

LIST_BOOK = b"""<?xml version="1.0" encoding="utf-8"?>
<D:propfind xmlns:D="DAV:"><D:prop><D:getetag/></D:prop></D:propfind>
"""

MULTIGET = """<?xml version="1.0" encoding="utf-8"?>
<C:addressbook-multiget xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:carddav">
  <D:prop><D:getetag/><C:address-data/></D:prop>
  <D:href>{href}</D:href>
</C:addressbook-multiget>
"""


def test_carddav_stores_a_contact_and_syncs_it_as_clients_do(bed):
    web = bed.web
    uid = str(uuid.uuid4())
    last = f"Ångström{RUN}"
    name = f"Zoë {last}"
    book = f"/SOGo/dav/{ALICE}/Contacts/personal/"
    got = dav_put(web, "carddav", f"{book}{uid}.vcf",
                  CONTACT.format(uid=uid, name=name, last=last, run=RUN), "text/vcard")
    assert f"FN:{name}" in got.body.decode() and f"zoe.{RUN}@outside.test" in got.body.decode()
    # A contacts app's sync (DAVx5, iOS): list the book's etags, then fetch the new cards.
    [href] = [h for h in dav_xml(web, "PROPFIND", book, LIST_BOOK, "{DAV:}href")
              if h.endswith(f"/{uid}.vcf")]
    found = dav_xml(web, "REPORT", book, MULTIGET.format(href=href).encode(),
                    "{urn:ietf:params:xml:ns:carddav}address-data")
    assert [text for text in found if f"UID:{uid}" in text and f"FN:{name}" in text], found
    assert web.request("GET", f"{book}{uid}.vcf", auth=(ALICE, PASSWORD + "x")).status == 401


STORE = VMAIL["root"]  # the encrypted store's mount
GROUPWARE_DB = SOGO["db"]["service"]


def grep_host(bed, text: str, *paths: str) -> list[str]:
    """The files below paths (on the host's disk) that hold text, byte for byte."""
    found = testbed.exec_in(bed.name, ["grep", "-rlaF", "--", text, *paths], check=False)
    assert found.returncode in (0, 1), found.stderr
    return found.stdout.split()


def test_calendars_and_contacts_are_encrypted_at_rest(bed):
    """SOGo's data has a database server of its own whose data directory is inside the
    encrypted store: an event's text is in that directory as the mounted store shows it
    (InnoDB's redo log has it once the PUT is answered), and nowhere in clear text on the
    host's disk: not in the main MariaDB's files, not in the store's cipher directory. The
    main server has no SOGo database at all."""
    marker = f"Surprise party {secrets.token_hex(8)}"
    uid = str(uuid.uuid4())
    dav_put(bed.web, "caldav", f"/SOGo/dav/{ALICE}/Calendar/personal/{uid}.ics",
            EVENT.format(uid=uid, summary=marker), "text/calendar")
    datadir = SOGO["db"]["datadir"]
    assert grep_host(bed, marker, datadir), "the event is not in the groupware's database"
    mount = testbed.exec_in(bed.name, ["findmnt", "-n", "-o", "FSTYPE", "-T", datadir]).stdout
    assert mount.strip() == "fuse.gocryptfs", mount
    assert grep_host(bed, marker, "/var/lib/mysql", f"{STORE}.crypt", "/var/spool", "/var/log",
                     "/tmp", "/var/tmp") == []
    databases = testbed.exec_in(bed.name, ["mariadb", "-N", "-e", "SHOW DATABASES"]).stdout
    assert "sogo" not in databases.split(), databases
    # SOGo's account reaches it on its socket only: the server listens on no port.
    ports = testbed.exec_in(bed.name, ["ss", "-ltnpH"]).stdout
    assert "mariadbd" not in "".join(line for line in ports.splitlines()
                                     if ":3306" not in line), ports


def test_activesync_options_announce_the_protocol(bed):
    answer = bed.web.request("OPTIONS", EAS_PATH, auth=(ALICE, PASSWORD))
    assert answer.status == 200, (answer.status, answer.body[:300])
    versions = answer.headers["MS-ASProtocolVersions"].split(",")
    assert "14.1" in versions, versions
    assert "FolderSync" in answer.headers["MS-ASProtocolCommands"].split(",")
    unauthenticated = bed.web.request("OPTIONS", EAS_PATH)
    assert unauthenticated.status == 401


AUTODISCOVER_REQUEST = """<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/{kind}/requestschema/2006">
  <Request>
    <EMailAddress>{address}</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/{kind}/responseschema/{version}</AcceptableResponseSchema>
  </Request>
</Autodiscover>"""
AUTODISCOVER_NS = "{http://schemas.microsoft.com/exchange/autodiscover/%s/responseschema/%s}"


def autodiscover(bed, kind: str, address: str) -> ElementTree.Element:
    """The POST a client sends with the address it was given (iOS and Android's mail apps
    ask for the mobilesync schema, Outlook for its own)."""
    version = "2006" if kind == "mobilesync" else "2006a"
    web = Web(bed.ip, f"autodiscover.{DOMAIN}")
    answer = web.request("POST", "/autodiscover/autodiscover.xml",
                         AUTODISCOVER_REQUEST.format(kind=kind, address=address,
                                                     version=version).encode(),
                         {"Content-Type": "text/xml"})
    assert answer.status == 200, (answer.status, answer.body[:300])
    assert answer.headers["Content-Type"].split(";")[0] in ("application/xml", "text/xml")
    return ElementTree.fromstring(answer.body)


def test_phones_find_activesync_from_the_address_alone(bed):
    """Autodiscover: the phones' schema gets ActiveSync's URL and the address; that URL
    logs in; Outlook's schema still gets IMAP and SMTP."""
    ns = AUTODISCOVER_NS % ("mobilesync", "2006")
    phone = autodiscover(bed, "mobilesync", ALICE)
    assert phone.findtext(f".//{ns}User/{ns}EMailAddress") == ALICE
    (server,) = phone.iter(f"{ns}Server")
    assert server.findtext(f"{ns}Type") == "MobileSync"
    url = server.findtext(f"{ns}Url")
    assert url == f"https://mail.{DOMAIN}{EAS_PATH}", url
    answer = Web(bed.ip, f"mail.{DOMAIN}").request("OPTIONS", url.split(f"mail.{DOMAIN}", 1)[1],
                                                   auth=(ALICE, PASSWORD))
    assert answer.status == 200 and "14.1" in answer.headers["MS-ASProtocolVersions"]
    # What the request names goes into the answer only as an address: nothing else gets in.
    odd = autodiscover(bed, "mobilesync", '"/><Action><Error/></Action>&lt;x@y.test')
    assert odd.findtext(f".//{ns}User/{ns}EMailAddress") in ("", None)
    assert not list(odd.iter(f"{ns}Error"))
    ns = AUTODISCOVER_NS % ("outlook", "2006a")
    outlook = autodiscover(bed, "outlook", ALICE)
    assert {p.findtext(f"{ns}Type") for p in outlook.iter(f"{ns}Protocol")} == {"IMAP", "SMTP"}


def test_the_apple_profile_logs_in_to_activesync_and_dav(bed):
    """`mailstack user profile`: by default an ActiveSync account (push on iOS); with
    --protocol imap, IMAP with CalDAV and CardDAV accounts. What they name logs in."""
    made = mailstack(bed.site, "user", "profile", ALICE)
    assert made.returncode == 0, made.stderr
    (eas_account,) = plistlib.loads(made.stdout.encode())["PayloadContent"]
    assert eas_account["PayloadType"] == "com.apple.eas.account" and eas_account["SSL"]
    web = Web(bed.ip, eas_account["Host"])
    answer = web.request("OPTIONS", EAS_PATH, auth=(eas_account["UserName"], PASSWORD))
    assert answer.status == 200, (answer.status, answer.body[:300])
    made = mailstack(bed.site, "user", "profile", ALICE, "--protocol", "imap")
    assert made.returncode == 0, made.stderr
    accounts = {a["PayloadType"]: a for a in plistlib.loads(made.stdout.encode())["PayloadContent"]}
    assert set(accounts) == {"com.apple.mail.managed", "com.apple.caldav.account",
                             "com.apple.carddav.account"}
    for prefix in ("CalDAV", "CardDAV"):
        account = accounts[f"com.apple.{prefix.lower()}.account"]
        principal = account[f"{prefix}PrincipalURL"]
        assert principal.startswith(f"https://{account[f'{prefix}HostName']}/")
        path = "/" + principal.split("/", 3)[3]
        propfind = Web(bed.ip, account[f"{prefix}HostName"]).request(
            "PROPFIND", path, b'<propfind xmlns="DAV:"><prop><current-user-principal/></prop></propfind>',
            {"Content-Type": "application/xml", "Depth": "0"},
            auth=(account[f"{prefix}Username"], PASSWORD))
        assert propfind.status == 207, (prefix, propfind.status, propfind.body[:300])


DEVICE = f"mst{RUN}"


def inbox_id(bed) -> str:
    """FolderSync from scratch: the ServerId of the folder of type 2, the default Inbox
    ([MS-ASCMD] 2.2.3.186.3)."""
    answer = eas(bed.web, "FolderSync",
                 ("FolderHierarchy:FolderSync", [("FolderHierarchy:SyncKey", "0")]),
                 device=DEVICE)
    assert answer.status == 200, (answer.status, answer.body[:300])
    tree = wbxml.decode(answer.body)
    assert wbxml.text(tree, "FolderHierarchy:Status") == "1", tree
    assert wbxml.text(tree, "FolderHierarchy:SyncKey") not in (None, "0")
    inboxes = [wbxml.text(add, "FolderHierarchy:ServerId")
               for add in wbxml.find_all(tree, "FolderHierarchy:Add")
               if wbxml.text(add, "FolderHierarchy:Type") == "2"]
    assert len(inboxes) == 1, tree
    return inboxes[0]


def sync(bed, collection: str, key: str) -> tuple[str, list[str]]:
    """One Sync of a mail folder: the new SyncKey and the Subjects of the messages added."""
    body: list[wbxml.Node] = [("AirSync:SyncKey", key), ("AirSync:CollectionId", collection)]
    if key != "0":  # the first Sync only fetches a key
        body += [("AirSync:DeletesAsMoves", "1"), ("AirSync:GetChanges", "1"),
                 ("AirSync:WindowSize", "100"),
                 ("AirSync:Options", [("AirSync:FilterType", "0"),
                                      ("AirSyncBase:BodyPreference",
                                       [("AirSyncBase:Type", "1"),
                                        ("AirSyncBase:TruncationSize", "200")])])]
    answer = eas(bed.web, "Sync", ("AirSync:Sync", [("AirSync:Collections", [
        ("AirSync:Collection", body)])]), device=DEVICE)
    assert answer.status == 200, (answer.status, answer.body[:300])
    if not answer.body:  # [MS-ASCMD] 2.2.2.20: an empty answer, nothing changed
        return key, []
    tree = wbxml.decode(answer.body)
    assert wbxml.text(tree, "AirSync:Status") == "1", tree
    added = [wbxml.text(add, "Email:Subject") for add in wbxml.find_all(tree, "AirSync:Add")]
    return wbxml.text(tree, "AirSync:SyncKey") or "", added


def test_activesync_foldersync_and_sync_show_the_inbox(bed):
    collection = inbox_id(bed)
    key, _ = sync(bed, collection, "0")
    assert key not in ("", "0")
    key, subjects = sync(bed, collection, key)
    assert subjects.count(SUBJECT) == 1, subjects
    # The device confirms what it got by syncing with the new key: nothing more comes.
    key, subjects = sync(bed, collection, key)
    assert subjects == [], subjects
    bed.eas_state = (collection, key)


def test_activesync_ping_returns_when_mail_arrives(bed):
    """Push: a Ping waiting on the INBOX answers "changes" (Status 2) once a message is
    delivered, well before its heartbeat; a Sync then brings the message."""
    collection, key = bed.eas_state
    heartbeat = 480
    subject = f"Pushed {RUN}"
    ping = ("Ping:Ping", [("Ping:HeartbeatInterval", str(heartbeat)), ("Ping:Folders", [
        ("Ping:Folder", [("Ping:Id", collection), ("Ping:Class", "Email")])])])
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(eas, bed.web, "Ping", ping, device=DEVICE, timeout=heartbeat + 60)
        time.sleep(5)  # the Ping is in SOGo's hands
        assert not waiting.done(), waiting.result()
        sent = time.monotonic()
        deliver(bed.ip, subject)
        answer = waiting.result()
        latency = time.monotonic() - sent
    print(f"delivery -> Ping answered: {latency:.1f} s")
    assert answer.status == 200, (answer.status, answer.body[:300])
    tree = wbxml.decode(answer.body)
    assert wbxml.text(tree, "Ping:Status") == "2", tree
    assert wbxml.text(tree, "Ping:Folder") == collection, tree
    assert latency < heartbeat / 2
    _, subjects = sync(bed, collection, key)
    assert subjects == [subject], subjects


def test_verify_checks_the_webmail_activesync_and_push(bed):
    result = mailstack(bed.site, "verify", "--json", "--no-dns")
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    for name in ("webmail login over HTTPS", "ActiveSync answers OPTIONS",
                 "autodiscover tells phones of ActiveSync", "IMAP IDLE tells of new mail (push)"):
        assert checks[name]["passed"], checks[name]
    assert "14.1" in checks["ActiveSync answers OPTIONS"]["detail"]


def test_a_locked_store_refuses_instead_of_showing_an_empty_mailbox(bed):
    locked = mailstack(bed.site, "lock")
    assert locked.returncode == 0, locked.stdout + locked.stderr
    try:
        web = bed.web
        assert web.login(ALICE, PASSWORD).status == 503
        assert web.request("OPTIONS", EAS_PATH, auth=(ALICE, PASSWORD)).status == 503
        assert web.request("GET", f"/SOGo/dav/{ALICE}/Calendar/personal/",
                           auth=(ALICE, PASSWORD)).status == 503
        # Its database stopped with the store: calendars are not readable while locked.
        state = testbed.exec_in(bed.name, ["systemctl", "is-active", GROUPWARE_DB], check=False)
        assert state.stdout.strip() == "inactive", state.stdout
    finally:
        unlocked = mailstack(bed.site, "unlock")
        assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    web = bed.web
    assert wait_for_login(web).status == 200
    assert SUBJECT in subjects_of(web.inbox(ALICE).json())
    events = dav_xml(web, "REPORT", f"/SOGo/dav/{ALICE}/Calendar/personal/", CALENDAR_QUERY,
                     "{urn:ietf:params:xml:ns:caldav}calendar-data")
    assert [e for e in events if "SUMMARY:Surprise party " in e], events


def test_a_second_deploy_changes_nothing(bed):
    again = mailstack(bed.site, "deploy")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "no changes" in again.stdout, again.stdout


# It bans this machine from the web ports until `mailstack unban`.
def test_repeated_webmail_failures_ban_the_address(bed):
    """fail2ban's sogo-auth jail reads SOGo's log, where nginx's client address stands (not
    127.0.0.1): the address that keeps failing the login page is refused on 443 until
    `mailstack unban`; SSH (the deploys) stays open all along."""
    def jail() -> str:
        return testbed.exec_in(bed.name, ["fail2ban-client", "get", "sogo-auth", "banned"]).stdout

    web = bed.web
    assert jail().strip() in ("", "[]"), jail()
    refused = None
    for _ in range(MAX_FAILURES + 1):
        try:
            assert web.login(ALICE, "not the password").status != 200
        except OSError as exc:  # banned: nftables rejects the connection
            refused = exc
            break
        time.sleep(1)
    deadline = time.monotonic() + 30
    while not (banned := re.findall(r"\d+\.\d+\.\d+\.\d+", jail())) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert banned, f"no ban after {MAX_FAILURES + 1} failed logins: {jail()}"
    if refused is None:
        with pytest.raises(OSError):
            web.login(ALICE, PASSWORD)
    done = mailstack(bed.site, "unban", banned[0])
    assert done.returncode == 0, done.stdout + done.stderr
    assert wait_for_login(web).status == 200


def test_turning_the_groupware_off_stops_it_and_keeps_its_data(bed):
    """options.groupware back to false: a deploy stops and disables SOGo, its database
    server and memcached, nginx no longer proxies to SOGo nor sends phones to ActiveSync
    (the phones' autodiscover answer is removed), SOGo's account on the main
    server is gone; the calendars and contacts stay in the store (nothing thrown away)."""
    edit_config(bed.site, ("  groupware: true\n", "  groupware: false\n"))
    off = mailstack(bed.site, "deploy")
    assert off.returncode == 0, off.stdout + off.stderr
    for unit in ("sogo", GROUPWARE_DB, "memcached"):
        state = testbed.exec_in(bed.name, ["systemctl", "is-enabled", unit], check=False)
        assert state.stdout.strip() == "disabled", (unit, state.stdout)
        state = testbed.exec_in(bed.name, ["systemctl", "is-active", unit], check=False)
        assert state.stdout.strip() == "inactive", (unit, state.stdout)
    assert bed.web.login(ALICE, PASSWORD).status == 404
    # Phones are no longer sent to ActiveSync: autodiscover has Outlook's answer only.
    answer = autodiscover(bed, "mobilesync", ALICE)
    assert not list(answer.iter(f"{AUTODISCOVER_NS % ('mobilesync', '2006')}Server"))
    phones = f"{WEB['root']}/{WEB['mobilesync_document']}"
    assert testbed.exec_in(bed.name, ["test", "-e", phones], check=False).returncode == 1
    accounts = testbed.exec_in(bed.name, ["mariadb", "-N", "-e",
                                          "SELECT user FROM mysql.user WHERE user LIKE '%sogo%'"])
    assert accounts.stdout.strip() == "", accounts.stdout
    assert testbed.exec_in(bed.name, ["test", "-d", f"{SOGO['db']['datadir']}/sogo"],
                           check=False).returncode == 0
    again = mailstack(bed.site, "deploy")
    assert again.returncode == 0 and "no changes" in again.stdout, again.stdout + again.stderr
