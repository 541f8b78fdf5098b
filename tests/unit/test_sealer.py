"""mailstack-sealer's LMTP session and its sealed files, with the real `age` (as on the
hosts): what Postfix hands over while the store is locked is answered per recipient, kept
only encrypted, and opens again to the same envelope and bytes; the quota policy queries it
answers meanwhile. The host-side flows (lock, shutdown, unlock) are proven on real hosts in
tests/e2e/test_storage.py and tests/e2e/test_filters.py."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mailstack.host import sealer


@pytest.fixture
def sealed_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    assert shutil.which("age") and shutil.which("age-keygen"), "run scripts/bootstrap (installs age)"
    folder = tmp_path / "sealed"
    folder.mkdir()
    identity = tmp_path / "identity.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(identity)], check=True,
                               capture_output=True, text=True).stdout
    (folder / "recipient.txt").write_text(recipient)
    monkeypatch.setattr(sealer, "SEALED_DIR", str(folder))
    monkeypatch.setattr(sealer, "RECIPIENT_FILE", str(folder / "recipient.txt"))
    return folder


def session(*lines: bytes) -> list[str]:
    out = io.BytesIO()
    sealer.lmtp(io.BytesIO(b"".join(lines)), out, "mail.example.org")
    return out.getvalue().decode().split("\r\n")[:-1]


def opened(folder: Path, name: str) -> tuple[dict, bytes]:
    plain = subprocess.run(["age", "-d", "-i", str(folder.parent / "identity.txt"),
                            str(folder / name)], check=True, capture_output=True).stdout
    head, _, message = plain.partition(b"\n")
    return json.loads(head), message


TRANSACTION = (b"LHLO postfix\r\n", b"MAIL FROM:<b\xc3\xb6b@example.net> SMTPUTF8\r\n",
               b"RCPT TO:<alice@example.org>\r\n", b"RCPT TO:<carol@example.org>\r\n",
               b"DATA\r\n", b"Subject: locked\r\n", b"\r\n", b"..a line that began with a dot\r\n",
               b"secret words\r\n", b".\r\n")


def test_each_recipient_gets_its_answer_and_only_ciphertext_stays(sealed_dir: Path):
    replies = session(*TRANSACTION, b"QUIT\r\n")
    assert replies[0].startswith("220 ")
    assert "250 SMTPUTF8" in replies and "250 8BITMIME" in " ".join(replies).replace("-", " ")
    assert replies[-3:-1] == ["250 2.0.0 Ok: sealed until the store is unlocked"] * 2
    assert replies[-1].startswith("221")
    [name] = [p.name for p in sealed_dir.glob("*.age")]
    assert name.startswith("l-") and sorted(p.name for p in sealed_dir.iterdir()) == [
        name, "recipient.txt"]
    assert b"secret words" not in (sealed_dir / name).read_bytes()
    assert (sealed_dir / name).stat().st_mode & 0o777 == 0o600
    envelope, message = opened(sealed_dir, name)
    assert envelope["sender"] == "b\u00f6b@example.net" and envelope["smtputf8"] is True
    assert envelope["recipients"] == ["alice@example.org", "carol@example.org"]
    assert message == (b"Subject: locked\r\n\r\n.a line that began with a dot\r\n"
                       b"secret words\r\n")


def test_without_the_public_key_every_recipient_gets_4xx_and_nothing_is_kept(sealed_dir: Path):
    (sealed_dir / "recipient.txt").unlink()
    replies = session(*TRANSACTION, b"QUIT\r\n")
    assert replies[-3:-1] == ["451 4.3.0 Cannot seal the message now; try again later"] * 2
    assert list(sealed_dir.iterdir()) == []


def test_commands_out_of_order_or_malformed_are_refused(sealed_dir: Path):
    replies = session(b"LHLO x\r\n", b"RCPT TO:<a@example.org>\r\n", b"MAIL FROM:nobrackets\r\n",
                      b"MAIL FROM:<>\r\n", b"DATA\r\n", b"VRFY a\r\n", b"RSET\r\n", b"QUIT\r\n")
    codes = [r[:3] for r in replies if not r.startswith("250-")]
    assert codes == ["220", "250", "503", "501", "250", "503", "502", "250", "221"]
    assert list(sealed_dir.glob("*.age")) == []


def test_the_same_queue_message_sealed_twice_leaves_one_file(sealed_dir: Path):
    envelope = {"v": 1, "sender": "a@example.org", "recipients": ["b@example.net"]}
    for _ in range(2):
        sealer.seal(envelope, b"Subject: x\n\nbody\n", "q-1795503270-A5B512C45E6.age")
    assert sorted(p.name for p in sealed_dir.iterdir()) == ["q-1795503270-A5B512C45E6.age",
                                                           "recipient.txt"]
    assert opened(sealed_dir, "q-1795503270-A5B512C45E6.age") == (envelope, b"Subject: x\n\nbody\n")


POLICY_REQUEST = (b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
                  b"sender=someone@example.net\nrecipient=alice@example.org\nsize=123456\n\n")


def test_while_locked_every_quota_query_is_answered_dunno():
    """Postfix keeps its policy connection open and asks once per recipient."""
    out = io.BytesIO()
    sealer.policy(io.BytesIO(POLICY_REQUEST * 3), out)
    assert out.getvalue() == b"action=DUNNO\n\n" * 3


def serve_on(path: Path, request: bytes) -> bytes:
    """`mailstack-sealer serve` on one connection accepted from a unix socket at path, as
    systemd hands it over (Accept=yes: the connection on stdin and stdout)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
            conn, _ = listener.accept()
            with conn:
                proc = subprocess.Popen([sys.executable, sealer.__file__, "serve"], stdin=conn,
                                        stdout=conn)
            client.sendall(request)
            client.shutdown(socket.SHUT_WR)
            answer = b"".join(iter(lambda: client.recv(4096), b""))
            assert proc.wait(timeout=30) == 0
            return answer


def test_serve_answers_the_quota_policy_on_its_socket_and_lmtp_on_any_other(tmp_path: Path):
    policy = tmp_path / "spool" / sealer.QUOTA_POLICY_SOCKET
    assert serve_on(policy, POLICY_REQUEST) == b"action=DUNNO\n\n"
    lmtp = serve_on(tmp_path / "spool/private/dovecot-lmtp", b"LHLO postfix\r\nQUIT\r\n")
    assert lmtp.startswith(b"220 ") and b"LMTP mailstack-sealer" in lmtp
    assert lmtp.endswith(b"221 2.0.0 Bye\r\n")
