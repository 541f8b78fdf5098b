"""A ManageSieve client (RFC 5804), as small as verify needs and the tests use: capabilities,
STARTTLS, AUTHENTICATE PLAIN, and any other command with its arguments as quoted strings or
literals (PUTSCRIPT's script). Bounded timeouts."""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import ssl
from dataclasses import dataclass

from mailstack.verify.clients import TIMEOUT

MAX_LINE = 65536
# A literal at the end of a line: {N} (the server's) or {N+} (non-synchronizing).
_LITERAL = re.compile(rb"\{(\d+)\+?\}\r?\n$")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


class ManageSieveError(Exception):
    """The server said something a ManageSieve server does not say."""


@dataclass(frozen=True)
class Response:
    """The server's answer: OK, NO or BYE, its text (response code included), and the data
    lines before it (literals inlined)."""

    status: str
    text: str
    lines: tuple[bytes, ...]

    @property
    def ok(self) -> bool:
        return self.status == "OK"


def quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def strings(line: bytes) -> list[str]:
    """The quoted strings of a line, unescaped: `"SASL" "PLAIN LOGIN"` -> [SASL, PLAIN LOGIN]."""
    return [re.sub(r"\\(.)", r"\1", s) for s in _QUOTED.findall(line.decode(errors="replace"))]


class ManageSieve:
    """One session: connects and reads the greeting's capabilities."""

    def __init__(self, address: str, port: int, timeout: float = TIMEOUT) -> None:
        self.sock: socket.socket = socket.create_connection((address, port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.capabilities = self._capabilities(self.response())

    def __enter__(self) -> ManageSieve:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def _line(self) -> bytes:
        """One logical line: a literal it ends with is read and inlined."""
        line = self.file.readline(MAX_LINE)
        if not line:
            raise ManageSieveError("the server closed the connection")
        match = _LITERAL.search(line)
        if match:
            data = self.file.read(int(match.group(1)))
            return line[: match.start()] + data + self._line()
        return line

    def response(self) -> Response:
        lines: list[bytes] = []
        while True:
            line = self._line()
            word = line.split(b" ", 1)[0].strip().upper()
            if word in (b"OK", b"NO", b"BYE"):
                text = line[len(word):].strip().decode(errors="replace")
                return Response(word.decode(), text, tuple(lines))
            lines.append(line)

    @staticmethod
    def _capabilities(response: Response) -> dict[str, str]:
        if not response.ok:
            raise ManageSieveError(f"greeting: {response.status} {response.text}")
        caps = {}
        for line in response.lines:
            words = strings(line)
            if words:
                caps[words[0].upper()] = words[1] if len(words) > 1 else ""
        return caps

    def command(self, name: str, *args: str | bytes) -> Response:
        """A command; str arguments are sent quoted, bytes as a literal ({N+})."""
        out = name.encode()
        for arg in args:
            if isinstance(arg, bytes):
                out += b" {%d+}\r\n" % len(arg) + arg
            else:
                out += b" " + quoted(arg).encode()
        self.sock.sendall(out + b"\r\n")
        return self.response()

    def starttls(self, context: ssl.SSLContext) -> Response:
        """STARTTLS; on OK the session continues in TLS and the capabilities are read again
        (the server re-issues them, RFC 5804 2.2)."""
        answer = self.command("STARTTLS")
        if answer.ok:
            self.sock = context.wrap_socket(self.sock)
            self.file = self.sock.makefile("rb")
            self.capabilities = self._capabilities(self.response())
        return answer

    @property
    def tls_version(self) -> str | None:
        return self.sock.version() if isinstance(self.sock, ssl.SSLSocket) else None

    def authenticate(self, user: str, password: str) -> Response:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return self.command("AUTHENTICATE", "PLAIN", token)

    def logout(self) -> None:
        with contextlib.suppress(OSError, ManageSieveError):
            self.command("LOGOUT")
        self.close()
