"""Full-text search (Dovecot FTS with Xapian), on one deployed host shared by every test here:
a stack-image host reached over SSH, its store encrypted (gocryptfs, the default), mail
delivered through Postfix and LMTP as from the outside, searched with a real IMAP client.

- SEARCH BODY, TEXT, SUBJECT and FROM find non-ASCII words ("Größe", "café", "naïve") in
  the INBOX and in other folders, the text of a text attachment too, and nothing else;
- the words of PDF, Word and OpenDocument attachments are found (mailstack-fts-decoder,
  as its own user, which cannot read the mail); a message whose attachment is an entity
  bomb is indexed by its other words;
- the index is used, not a scan: a message rewritten on disk behind Dovecot's back is still
  found by its old word and not by its new one (a scan, Dovecot with FTS off, finds the new);
- a delivered message is in the index before anyone searches (indexed at delivery), and an
  expunged one leaves the results;
- Junk is not indexed at delivery, and a search there still answers: it indexes first;
- the index is on the store (below the mount, encrypted on disk), nowhere in clear text;
- `mailstack verify` finds its round-trip message by SEARCH BODY;
- the nightly optimise runs; a second deploy changes nothing.
"""

from __future__ import annotations

import email.policy
import email.utils
import imaplib
import json
import secrets
import smtplib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
import testbed
from documents import DOCX, ODT, docx, entity_bomb_docx, odt, pdf

from mailstack.render.context import FTS, VMAIL
from mailstack.sandbox import host as sandbox

from .helpers import PASSWORD, edit_config, imap_login, mailstack

pytestmark = pytest.mark.testbed

DOMAIN = "search.test"
ALICE = f"alice@{DOMAIN}"
HOME = f"{VMAIL['root']}/{DOMAIN}/alice"
INDEX = f"{HOME}/Maildir/{FTS['index_dir']}"
CIPHER = VMAIL["root"] + ".crypt"
# Words each message alone carries: a search must find exactly its message.
RUN = secrets.token_hex(3)


def word(label: str) -> str:
    """A word no other message (and no earlier run) contains."""
    return f"{label}{RUN}"


@dataclass
class Box:
    name: str
    ip: str
    site: Path

    def sh(self, script: str, check: bool = True) -> str:
        return testbed.exec_in(self.name, ["bash", "-ec", script], check=check).stdout


def mail(subject: str, body: str, *, sender: str = "Outside <someone@outside.test>",
         attachment: str | None = None, cte: str | None = None,
         files: tuple[tuple[bytes, str, str], ...] = ()) -> EmailMessage:
    """A message; `files` are binary attachments: (bytes, content type, file name)."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, ALICE, subject
    msg["Date"], msg["Message-ID"] = email.utils.formatdate(), email.utils.make_msgid()
    msg.set_content(body, cte=cte) if cte else msg.set_content(body)
    if attachment is not None:
        msg.add_attachment(attachment, subtype="plain", filename="notes.txt")
    for data, content_type, filename in files:
        maintype, subtype = content_type.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg


def deliver(ip: str, *messages: EmailMessage) -> None:
    """Over port 25 from the outside, as the helpers' send() does (null sender: this host
    resolves nothing, so no sender domain would be known)."""
    with smtplib.SMTP(ip, 25, timeout=20, local_hostname="client.test") as smtp:
        for msg in messages:
            smtp.sendmail("", [ALICE], msg.as_bytes(policy=email.policy.SMTP))


def search(imap: imaplib.IMAP4, mailbox: str, *criteria: str) -> list[str]:
    """SEARCH CHARSET UTF-8 in one mailbox: the Subject of each message found."""
    typ, _ = imap.select(f'"{mailbox}"')
    assert typ == "OK", mailbox
    query = " ".join(criteria).encode()
    # As bytes, the UTF-8 of the words goes out as it is, inside the quoted strings.
    typ, data = imap.search("UTF-8", query)
    assert typ == "OK", (typ, data)
    subjects = []
    for num in data[0].split():
        _, fetched = imap.fetch(num, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        header = email.message_from_bytes(fetched[0][1], policy=email.policy.default)
        subjects.append(str(header["Subject"]))
    return sorted(subjects)


def quoted(text: str) -> str:
    return '"' + text + '"'


def wait_in(ip: str, mailbox: str, subject: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    imap = imap_login(ip, ALICE)
    try:
        while True:
            imap.select(f'"{mailbox}"')
            if imap.search("UTF-8", f"SUBJECT {quoted(subject)}".encode())[1][0].split():
                return
            if time.monotonic() > deadline:
                pytest.fail(f"{subject!r} never arrived in {mailbox}")
            time.sleep(0.3)
    finally:
        imap.logout()


def fts_lookup(box: Box, mailbox: str, text: str) -> str:
    """What the index alone answers (doveadm fts lookup: no indexing, no scan)."""
    return box.sh(f"doveadm fts lookup -u {ALICE} mailbox {mailbox} body {text}").strip()


# Overwrites argv[2] with argv[3] (as long) in the file argv[1], in place: same inode.
REWRITE = ("import sys; f = open(sys.argv[1], 'r+b'); d = f.read(); f.seek(0); "
           "f.write(d.replace(sys.argv[2].encode(), sys.argv[3].encode()))")

# The messages, by subject; delivered once for the module.
GROESSE = "Die Größe zählt"
CAFE = "Un café pour Zoë"
ATTACHED = "Notes attached"
REWRITTEN = "Rewritten behind Dovecot's back"
ARCHIVED = "Archivé: naïve questions"
GOING = "This one will be expunged"
DOCUMENTS = "Documents attached"
HOSTILE = "A hostile attachment"


@pytest.fixture(scope="module")
def box(tmp_path_factory) -> Iterator[Box]:
    key = sandbox.ensure_keypair(sandbox.default_state_dir())
    name = f"mailstack-e2e-search-{RUN}"
    site = tmp_path_factory.mktemp("search") / "site"
    try:
        host = testbed.start_host(name, testbed.stack_image(), hostname=f"mail.{DOMAIN}",
                                  ssh_pubkey=key.with_suffix(".pub").read_text())
        init = mailstack(None, "init", str(site), "--domain", DOMAIN, "--hostname",
                         f"mail.{DOMAIN}", "--host", host.ip, "--ssh-key", str(key))
        assert init.returncode == 0, init.stderr
        testbed.offline_site(site)
        # From a client without DNS, a subject mixing ASCII and encoded words scores over
        # the default junk_score (R_MIXED_CHARSET, no rDNS): the INBOX is what is tested.
        edit_config(site, ("    junk_score: 6\n", "    junk_score: 14\n"))
        assert mailstack(site, "user", "add", ALICE, "--password-stdin",
                         input=PASSWORD + "\n").returncode == 0
        deployed = mailstack(site, "deploy")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        bed = Box(name, host.ip, site)
        deliver(bed.ip,
                # Quoted-printable: the file holds "Gr=C3=B6=C3=9Fe", the index the word.
                mail(GROESSE, f"Die Größe der Datei ist wichtig. {word('groesse')}",
                     sender="Jürgen Größmann <juergen@outside.test>", cte="quoted-printable"),
                mail(CAFE, f"Un café naïve au lait. {word('cafe')}",
                     sender="Zoë Müller <zoe@outside.test>"),
                mail(ATTACHED, "See the file.", attachment=f"the {word('wombat')} notes"),
                mail(REWRITTEN, f"The word {word('before')} is here."),
                mail(GOING, f"Soon gone: {word('going')} café"),
                mail(DOCUMENTS, "See the documents.", files=(
                    (pdf(f"The {word('pdf')} report"), "application/pdf", "report.pdf"),
                    (docx(["Die ", "Überweisung ", word("docx")]), DOCX, "letter.docx"),
                    (odt(f"<text:p>Un <text:span>pamplemousse</text:span> {word('odt')}</text:p>"),
                     ODT, "note.odt"))),
                mail(HOSTILE, f"Careful: {word('hostile')}",
                     files=((entity_bomb_docx(), DOCX, "bomb.docx"),)))
        for subject in (GROESSE, CAFE, ATTACHED, REWRITTEN, GOING, DOCUMENTS, HOSTILE):
            wait_in(bed.ip, "INBOX", subject)
        imap = imap_login(bed.ip, ALICE)
        try:
            assert imap.create('"Archiv"')[0] == "OK"
            for mailbox, msg in (("Archiv", mail(ARCHIVED, f"Des questions naïves, café. {word('archiv')}")),
                                 ("Junk", mail("Cheap café", f"Buy {word('junk')} now"))):
                typ, _ = imap.append(f'"{mailbox}"', None, None,
                                     msg.as_bytes(policy=email.policy.SMTP))
                assert typ == "OK", mailbox
        finally:
            imap.logout()
        yield bed
    finally:
        testbed.remove_host(name)


@pytest.fixture
def imap(box: Box) -> Iterator[imaplib.IMAP4]:
    client = imap_login(box.ip, ALICE)
    yield client
    client.logout()


def test_non_ascii_words_are_found_in_body_text_subject_and_from(box, imap):
    assert search(imap, "INBOX", "BODY", quoted("Größe")) == [GROESSE]
    assert search(imap, "INBOX", "TEXT", quoted("naïve")) == [CAFE]
    assert search(imap, "INBOX", "SUBJECT", quoted("Größe")) == [GROESSE]
    assert search(imap, "INBOX", "FROM", quoted("Zoë")) == [CAFE]
    assert search(imap, "INBOX", "FROM", quoted("Größmann")) == [GROESSE]
    assert search(imap, "INBOX", "BODY", quoted("café")) == sorted([CAFE, GOING])
    # Two words: both must be in the message.
    assert search(imap, "INBOX", "BODY", quoted("café"), "BODY", quoted(word("cafe"))) == [CAFE]
    assert search(imap, "INBOX", "BODY", quoted(word("nowhere"))) == []


def test_the_text_of_an_attachment_is_found(box, imap):
    assert search(imap, "INBOX", "BODY", quoted(word("wombat"))) == [ATTACHED]


def test_the_words_of_pdf_and_office_attachments_are_found(box, imap):
    for label in ("pdf", "docx", "odt"):
        assert search(imap, "INBOX", "BODY", quoted(word(label))) == [DOCUMENTS], label
    assert search(imap, "INBOX", "TEXT", quoted("Überweisung")) == [DOCUMENTS]
    assert search(imap, "INBOX", "BODY", quoted("pamplemousse")) == [DOCUMENTS]
    # The bomb gave no text, and its message is indexed by its own words.
    assert search(imap, "INBOX", "BODY", quoted(word("hostile"))) == [HOSTILE]
    # The decoder said why, in Dovecot's log.
    log = box.sh("journalctl -u dovecot --no-pager")
    assert "not read (a document type declaration)" in log, log[-3000:]
    # What parses a stranger's file cannot read the mail.
    denied = box.sh(f"runuser -u {FTS['decoder']['user']} -- ls {VMAIL['root']} 2>&1 || true")
    assert "Permission denied" in denied, denied


def test_other_folders_are_searched_too(box, imap):
    assert search(imap, "Archiv", "BODY", quoted("naïve")) == [ARCHIVED]
    assert search(imap, "Archiv", "TEXT", quoted(word("archiv"))) == [ARCHIVED]
    assert search(imap, "Archiv", "SUBJECT", quoted("Archivé")) == [ARCHIVED]
    # Each folder answers for itself.
    assert search(imap, "INBOX", "BODY", quoted(word("archiv"))) == []


def test_delivered_mail_is_indexed_before_anyone_searches(box):
    """Nobody has searched for this word: the index knows it from the delivery itself."""
    deliver(box.ip, mail("Fresh delivery", f"Arrived {word('fresh')} just now"))
    wait_in(box.ip, "INBOX", "Fresh delivery")
    deadline = time.monotonic() + 20
    while "no results" in (found := fts_lookup(box, "INBOX", word("fresh"))):
        assert time.monotonic() < deadline, "delivered mail never reached the index"
        time.sleep(0.5)
    assert found.startswith("INBOX: ") and found.split(": ")[1].isdigit(), found
    imap = imap_login(box.ip, ALICE)
    try:
        assert search(imap, "INBOX", "BODY", quoted(word("fresh"))) == ["Fresh delivery"]
    finally:
        imap.logout()


def test_searches_use_the_index_not_a_scan(box, imap):
    """Same length, same owner, same name: Dovecot cannot tell the file changed. The index
    still answers for the old word; reading the messages (Dovecot without its FTS plugins)
    would find the new one."""
    before, after = word("before"), word("afterx")
    assert len(before) == len(after)
    box.sh(f"f=$(grep -rl {before} {HOME}/Maildir/cur {HOME}/Maildir/new); "
           f'test $(echo "$f" | wc -l) = 1; python3 -c "{REWRITE}" "$f" {before} {after}')
    assert search(imap, "INBOX", "BODY", quoted(before)) == [REWRITTEN]
    assert search(imap, "INBOX", "BODY", quoted(after)) == []
    scan = box.sh(f"doveadm -o mail_plugins= search -u {ALICE} mailbox INBOX body {after}")
    assert len(scan.split()) == 2, scan  # "<mailbox guid> <uid>": the scan sees the new word


def test_an_expunged_message_leaves_the_results(box, imap):
    assert search(imap, "INBOX", "BODY", quoted(word("going"))) == [GOING]
    imap.select("INBOX")
    nums = imap.search(None, "SUBJECT", quoted(GOING))[1][0].split()
    assert len(nums) == 1
    imap.store(nums[0], "+FLAGS", "\\Deleted")
    assert imap.expunge()[0] == "OK"
    assert search(imap, "INBOX", "BODY", quoted(word("going"))) == []
    assert search(imap, "INBOX", "BODY", quoted("café")) == [CAFE]
    # The index itself may still hold its words (1.9.1 queues expunges in a database of
    # its own): `doveadm fts lookup` still named the UID after an optimise. Searches drop
    # UIDs that are gone, so no client ever sees it.


def test_junk_is_not_indexed_at_delivery_but_answers_a_search(box, imap):
    """fts_autoindex_exclude: spam costs no indexing as it arrives. A search in Junk is
    still answered (fts_enforced: from the index, which it brings up to date first)."""
    assert "no results" in fts_lookup(box, "Junk", word("junk"))
    assert search(imap, "Junk", "BODY", quoted(word("junk"))) == ["Cheap café"]
    assert search(imap, "Junk", "SUBJECT", quoted("café")) == ["Cheap café"]


def test_the_index_is_on_the_encrypted_store_only(box):
    assert box.sh(f"findmnt -no FSTYPE {VMAIL['root']}").strip() == "fuse.gocryptfs"
    assert box.sh(f"find {INDEX} -type f | wc -l").strip() != "0"
    # Nothing of the index, and none of its words, outside the mount: the cipher directory
    # holds them encrypted, and no other directory has any.
    elsewhere = box.sh("find / -xdev -iname '*xapian*' -not -path '/usr/*' -not -path '/var/lib/dpkg/*' "
                       "-not -path '/var/cache/*' -not -path '/proc/*'")
    assert elsewhere.strip() == "", elsewhere
    assert box.sh(f"grep -rl {word('groesse')} {CIPHER} /var/lib /var/tmp /tmp || true").strip() == ""


def test_the_nightly_optimise_runs(box, imap):
    timer, service = FTS["optimize_timer"], FTS["optimize_service"]
    assert box.sh(f"systemctl is-enabled {timer}; systemctl is-active {timer}").split() == [
        "enabled", "active"]
    box.sh(f"systemctl start {service}")
    assert box.sh(f"systemctl show -p Result --value {service}").strip() == "success"
    assert search(imap, "INBOX", "BODY", quoted("Größe")) == [GROESSE]


def test_verify_finds_its_round_trip_message_by_full_text_search(box):
    result = mailstack(box.site, "verify", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)}
    for port in (587, 465):
        check = checks[f"message from {port} found by full-text search"]
        assert check["passed"], check


def test_a_second_deploy_changes_nothing(box):
    again = mailstack(box.site, "deploy")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "no changes" in again.stdout
