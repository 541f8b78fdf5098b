#!/usr/bin/python3
# Managed by mailstack (mailstack/host/sealer.py): rendered and placed by `mailstack deploy`.
"""mailstack-sealer: mail at rest while the encrypted store is locked, sealed with the
store's public key (age, X25519), so that no message ever waits in clear text on disk.

  mailstack-sealer serve    one connection on stdin/stdout to a socket systemd holds in
                            Dovecot's place while Dovecot is stopped (locked store): on the
                            LMTP path an LMTP session (below), on the quota policy's path
                            Postfix's policy queries (policy, below)
  mailstack-sealer lmtp     one LMTP session: Postfix hands each arriving message here and
                            forgets it
  mailstack-sealer policy   Postfix's quota queries at RCPT, each answered DUNNO: the quota
                            is inside the locked store, so the message is accepted, sealed,
                            and checked against the quota at its delivery after the unlock
  mailstack-sealer queue    seal what waits in Postfix's queue (deferred and held mail), then
                            delete it from the queue: run at `lock`, at shutdown and at boot
  mailstack-sealer key      make the store's key pair if it has none (store mounted): the
                            private key stays inside the encrypted store, the public key is
                            written where the sealer reads it
  mailstack-sealer drain    open every sealed message (store mounted) and hand it back to
                            Postfix, which delivers it: run by `unlock`

A sealed file holds one JSON line (the envelope) and the message, both encrypted: even who
wrote to whom is not on disk. Files are written to a temporary name, fsynced, then renamed;
a message is deleted from Postfix's queue (or acknowledged to it) only after that. A message
sealed from the queue is named by its queue ID and arrival time, so sealing it twice (a crash
between the two steps) leaves one file. Exit codes: 0 ok, 1 error; JSON on stdout.
"""

import contextlib
import json
import os
import secrets
import smtplib
import socket
import subprocess
import sys
import time

CONF = "/etc/mailstack/storage.json"
PATH = "/usr/local/sbin/mailstack-sealer"
# The sealed messages: the sealer's StateDirectory (its user's own, 0700; root reads it).
SEALED_DIR = "/var/lib/mailstack-sealed"
# The public half of the store's key, the only key the sealer needs: root writes it here,
# where the sealer's own user can read it (/etc/mailstack is root's only).
RECIPIENT_FILE = SEALED_DIR + "/recipient.txt"
# The private half, inside the store (relative to its mountpoint): readable only unlocked.
IDENTITY = ".mailstack/sealing-identity.txt"
# Postfix's private smtpd for mail coming back from the seal (master.cf: no milters, no
# address rewriting a second time), relative to Postfix's queue directory.
REINJECT_SERVICE = "mailstack-reinject"
# Dovecot's quota-status service, which Postfix asks at RCPT (relative to Postfix's queue
# directory); the sealer answers on it while Dovecot is stopped.
QUOTA_POLICY_SOCKET = "private/quota-status"
MAX_LINE = 4096 * 4
MAX_MESSAGE = 256 * 1024 * 1024


def conf():
    with open(CONF, encoding="utf-8") as f:
        return json.load(f)


def seal(envelope, message, name):
    """Encrypt envelope + message to the store's public key into SEALED_DIR/name."""
    with open(RECIPIENT_FILE, encoding="ascii") as f:
        recipient = f.read().strip()
    if not recipient.startswith("age1"):
        raise OSError(f"{RECIPIENT_FILE} holds no age public key")
    plain = json.dumps(envelope).encode() + b"\n" + message
    final = os.path.join(SEALED_DIR, name)
    tmp = os.path.join(SEALED_DIR, "." + name + ".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        proc = subprocess.run(["age", "--encrypt", "--recipient", recipient], input=plain,
                              stdout=out, stderr=subprocess.PIPE, check=False)
        if proc.returncode != 0:
            os.unlink(tmp)
            raise OSError("age: " + proc.stderr.decode(errors="replace").strip())
        out.flush()
        os.fsync(out.fileno())
    os.rename(tmp, final)
    dir_fd = os.open(SEALED_DIR, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return final


def sealed_files():
    try:
        return sorted(n for n in os.listdir(SEALED_DIR) if n.endswith(".age"))
    except FileNotFoundError:
        return []


# --------------------------------------------------------------------------- LMTP


def address(arg, verb):
    """The address of `MAIL FROM:<a> params` / `RCPT TO:<a> params`, and its parameters."""
    if not arg.upper().startswith(verb):
        return None, []
    rest = arg[len(verb):].strip()
    if not rest.startswith("<") or ">" not in rest:
        return None, []
    addr, params = rest[1:].split(">", 1)
    return addr, params.split()


def lmtp(rfile, wfile, hostname):
    """One LMTP session (RFC 2033). Replies 4xx whenever sealing fails: Postfix keeps the
    message and tries again, nothing is lost."""
    def reply(*lines):
        wfile.write("".join(f"{line}\r\n" for line in lines).encode())
        wfile.flush()

    reply(f"220 {hostname} LMTP mailstack-sealer: the mail store is locked; mail is sealed")
    sender, recipients, smtputf8 = None, [], False
    while True:
        raw = rfile.readline(MAX_LINE)
        if not raw:
            return
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        verb = line[:4].upper()
        if verb == "LHLO":
            reply(f"250-{hostname}", "250-PIPELINING", "250-ENHANCEDSTATUSCODES",
                  "250-8BITMIME", "250 SMTPUTF8")
        elif verb == "MAIL":
            addr, params = address(line[5:], "FROM:")
            if addr is None:
                reply("501 5.5.4 Syntax: MAIL FROM:<address>")
                continue
            sender, recipients = addr, []
            smtputf8 = "SMTPUTF8" in (p.upper() for p in params)
            reply("250 2.1.0 Ok")
        elif verb == "RCPT":
            addr, _ = address(line[5:], "TO:")
            if sender is None or not addr:
                reply("503 5.5.1 Error: need MAIL and a recipient")
                continue
            recipients.append(addr)
            reply("250 2.1.5 Ok")
        elif verb == "DATA":
            if not recipients:
                reply("503 5.5.1 Error: need RCPT")
                continue
            reply("354 End data with <CR><LF>.<CR><LF>")
            message, too_big = read_data(rfile)
            if too_big:
                answer = "552 5.3.4 Message too big to seal"
            else:
                envelope = {"v": 1, "sender": sender, "recipients": recipients,
                            "smtputf8": smtputf8, "sealed_at": int(time.time()),
                            "from": "lmtp"}
                name = f"l-{time.time_ns()}-{secrets.token_hex(4)}.age"
                try:
                    seal(envelope, message, name)
                    answer = "250 2.0.0 Ok: sealed until the store is unlocked"
                except (OSError, ValueError) as exc:
                    print(f"cannot seal: {exc}", file=sys.stderr)
                    answer = "451 4.3.0 Cannot seal the message now; try again later"
            reply(*([answer] * len(recipients)))
            sender, recipients = None, []
        elif verb == "RSET":
            sender, recipients = None, []
            reply("250 2.0.0 Ok")
        elif verb == "NOOP":
            reply("250 2.0.0 Ok")
        elif verb == "QUIT":
            reply("221 2.0.0 Bye")
            return
        else:
            reply("502 5.5.2 Error: command not recognized")


def policy(rfile, wfile):
    """Postfix's policy delegation protocol: each request (name=value lines, then an empty
    line) is answered DUNNO, never a refusal: while the store is locked nothing here can
    know the mailbox's quota, and a 4xx would keep every sender's mail away until the
    unlock. The mailbox that turns out full at delivery makes Dovecot answer 4xx then: the
    message waits in Postfix's queue, nothing is lost."""
    while True:
        raw = rfile.readline(MAX_LINE)
        if not raw:
            return
        if not raw.strip():
            wfile.write(b"action=DUNNO\n\n")
            wfile.flush()


def stand_in(local_address):
    """Which of Dovecot's sockets a connection came in on (its local address): policy or lmtp."""
    if isinstance(local_address, str) and local_address.endswith("/" + QUOTA_POLICY_SOCKET):
        return "policy"
    return "lmtp"


def serve(stdin, stdout):
    """One connection handed over by systemd (Accept=yes) on stdin/stdout."""
    with socket.socket(fileno=os.dup(stdin.fileno())) as conn:
        local = conn.getsockname()
    if stand_in(local) == "policy":
        policy(stdin, stdout)
    else:
        lmtp(stdin, stdout, socket.getfqdn())


def read_data(rfile):
    """The message after DATA, dot-unstuffed, CRLF kept; (bytes, too_big)."""
    chunks, size, too_big = [], 0, False
    while True:
        raw = rfile.readline(MAX_LINE)
        if not raw or raw in (b".\r\n", b".\n"):
            return b"".join(chunks), too_big
        if raw.startswith(b"."):
            raw = raw[1:]
        size += len(raw)
        if size > MAX_MESSAGE:
            too_big = True
        elif not too_big:
            chunks.append(raw)


def mounted(path):
    with open("/proc/self/mounts", encoding="utf-8") as f:
        return any(line.split()[1] == path for line in f)


# --------------------------------------------------------------------------- the queue


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, check=False, **kw)


def queue_entries():
    listed = run(["postqueue", "-j"])
    if listed.returncode != 0:
        raise OSError("postqueue -j: " + listed.stderr.decode(errors="replace").strip())
    return [json.loads(line) for line in listed.stdout.decode().splitlines()]


def seal_queue():
    """Seal deferred and held mail, then delete it from Postfix's queue. (Mail in the
    incoming and active queues is being handled this very moment: it is delivered, handed
    to the LMTP sealer, or deferred and sealed by the next run.) Deferred mail is put on
    hold first, so that no delivery attempt starts while it is sealed; if sealing fails,
    what this run put on hold is released again (flushes and retries skip held mail)."""
    held_before = {e["queue_id"] for e in queue_entries() if e.get("queue_name") == "hold"}
    run(["postsuper", "-h", "ALL", "deferred"])
    held = [e for e in queue_entries() if e.get("queue_name") == "hold"]
    sealed = 0
    for i, entry in enumerate(held):
        qid = entry["queue_id"]
        recipients = [r["address"] for r in entry.get("recipients", [])]
        try:
            content = run(["postcat", "-bh", "-q", qid])
            if content.returncode != 0 or not recipients:
                continue  # delivered or removed meanwhile
            envelope = {"v": 1, "sender": entry.get("sender", ""), "recipients": recipients,
                        "smtputf8": False, "sealed_at": int(time.time()), "from": "queue",
                        "queue_id": qid, "arrival_time": entry.get("arrival_time")}
            seal(envelope, content.stdout, f"q-{entry.get('arrival_time', 0)}-{qid}.age")
        except OSError:
            for rest in held[i:]:
                if rest["queue_id"] not in held_before:
                    run(["postsuper", "-H", rest["queue_id"], "hold"])
            raise
        run(["postsuper", "-d", qid, "hold"])
        sealed += 1
    return sealed


# --------------------------------------------------------------------------- the key


def identity_path(c):
    return os.path.join(c["root"], IDENTITY)


def make_key(c):
    """The store's key pair: created once inside the mounted store; the public key is
    (re)written from it, so it always matches."""
    if not mounted(c["root"]):
        raise OSError("the store is locked: the key lives inside it")
    path = identity_path(c)
    created = False
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        proc = run(["age-keygen", "-o", path])
        if proc.returncode != 0:
            raise OSError("age-keygen: " + proc.stderr.decode(errors="replace").strip())
        created = True
    derived = run(["age-keygen", "-y", path])
    if derived.returncode != 0:
        raise OSError("age-keygen -y: " + derived.stderr.decode(errors="replace").strip())
    recipient = derived.stdout.decode().strip() + "\n"
    try:
        with open(RECIPIENT_FILE, encoding="ascii") as f:
            current = f.read()
    except FileNotFoundError:
        current = None
    if current != recipient:
        tmp = RECIPIENT_FILE + ".tmp"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(recipient)
        os.chmod(tmp, 0o644)
        os.rename(tmp, RECIPIENT_FILE)
        created = True
    return created


# --------------------------------------------------------------------------- unsealing


class Reinject:
    """SMTP to Postfix's private reinjection smtpd (a UNIX socket)."""

    def __init__(self, path):
        class Client(smtplib.SMTP):
            def connect(self, host="localhost", port=0, source_address=None):
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(60)
                self.sock.connect(host)
                self.file = None
                return self.getreply()

        self.client = Client()
        self.client.connect(path)
        self.client.ehlo("localhost")

    def send(self, envelope, message):
        # postcat writes LF line ends; SMTP wants CRLF (smtplib leaves bytes as they are).
        message = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        addresses = [envelope["sender"], *envelope["recipients"]]
        options = ["SMTPUTF8"] if envelope.get("smtputf8") or not all(
            a.isascii() for a in addresses) else []
        refused = self.client.sendmail(envelope["sender"], envelope["recipients"], message,
                                       mail_options=options)
        if refused:
            raise OSError(f"Postfix refused {sorted(refused)}")

    def close(self):
        with contextlib.suppress(OSError, smtplib.SMTPException):
            self.client.quit()


def drain(c):
    """Every sealed message back to Postfix; each file is deleted once Postfix took it."""
    names = sealed_files()
    if not names:
        return {"delivered": 0, "still_sealed": 0}
    identity = identity_path(c)
    if not os.path.exists(identity):
        raise OSError(f"no key at {identity}: is the store unlocked?")
    path = os.path.join(c["postfix_queue_dir"], "private", REINJECT_SERVICE)
    client, delivered, errors = None, 0, []
    try:
        client = Reinject(path)
        for name in names:
            full = os.path.join(SEALED_DIR, name)
            opened = run(["age", "--decrypt", "--identity", identity, full])
            if opened.returncode != 0:
                errors.append(f"{name}: " + opened.stderr.decode(errors="replace").strip())
                continue
            head, _, message = opened.stdout.partition(b"\n")
            envelope = json.loads(head)
            client.send(envelope, message)
            os.unlink(full)
            delivered += 1
    except (OSError, smtplib.SMTPException) as exc:
        errors.append(str(exc))
    finally:
        if client:
            client.close()
    return {"delivered": delivered, "still_sealed": len(sealed_files()), "errors": errors}


def main():
    verbs = ("serve", "lmtp", "policy", "queue", "key", "drain")
    if len(sys.argv) != 2 or sys.argv[1] not in verbs:
        print(__doc__)
        sys.exit(1)
    verb = sys.argv[1]
    # The sealer's own user: no settings needed, none readable.
    if verb == "serve":
        serve(sys.stdin.buffer, sys.stdout.buffer)
        return
    if verb == "lmtp":
        lmtp(sys.stdin.buffer, sys.stdout.buffer, socket.getfqdn())
        return
    if verb == "policy":
        policy(sys.stdin.buffer, sys.stdout.buffer)
        return
    try:
        c = conf()
        if verb == "queue":
            result = {"sealed": seal_queue()}
        elif verb == "key":
            result = {"changed": make_key(c)}
        else:
            result = drain(c)
    except (OSError, ValueError, KeyError) as exc:
        print(json.dumps({"ok": False, "error": str(exc)}))
        sys.exit(1)
    print(json.dumps({"ok": not result.get("errors"), **result}))
    sys.exit(1 if result.get("errors") else 0)


if __name__ == "__main__":
    main()
