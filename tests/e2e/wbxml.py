"""Just enough WBXML (the binary XML of Exchange ActiveSync, [MS-ASWBXML]) for the tests:
the code pages and tokens of the commands they send, an encoder for element trees without
attributes, and a decoder back to (tag, children-or-text) tuples.

A tree is ("Page:Tag", [children]) or ("Page:Tag", "text"); tokens are [MS-ASWBXML] 2.1.2.1.
"""

from __future__ import annotations

Node = tuple[str, "str | list[Node]"]

# WBXML 1.3, public identifier 1 (unknown), UTF-8 (IANA MIBenum 106), no string table.
HEADER = bytes([0x03, 0x01, 0x6A, 0x00])
SWITCH_PAGE, END, STR_I, OPAQUE = 0x00, 0x01, 0x03, 0xC3
HAS_CONTENT = 0x40

PAGES: dict[int, tuple[str, dict[int, str]]] = {
    0: ("AirSync", {0x05: "Sync", 0x06: "Responses", 0x07: "Add", 0x08: "Change",
                    0x09: "Delete", 0x0A: "Fetch", 0x0B: "SyncKey", 0x0C: "ClientId",
                    0x0D: "ServerId", 0x0E: "Status", 0x0F: "Collection", 0x10: "Class",
                    0x12: "CollectionId", 0x13: "GetChanges", 0x14: "MoreAvailable",
                    0x15: "WindowSize", 0x16: "Commands", 0x17: "Options", 0x18: "FilterType",
                    0x1B: "Conflict", 0x1C: "Collections", 0x1D: "ApplicationData",
                    0x1E: "DeletesAsMoves", 0x20: "Supported", 0x21: "SoftDelete",
                    0x22: "MIMESupport", 0x23: "MIMETruncation", 0x24: "Wait", 0x25: "Limit",
                    0x26: "Partial"}),
    2: ("Email", {0x0F: "DateReceived", 0x11: "DisplayTo", 0x12: "Importance",
                  0x13: "MessageClass", 0x14: "Subject", 0x15: "Read", 0x16: "To",
                  0x17: "Cc", 0x18: "From", 0x19: "ReplyTo", 0x39: "ThreadTopic"}),
    7: ("FolderHierarchy", {0x07: "DisplayName", 0x08: "ServerId", 0x09: "ParentId",
                            0x0A: "Type", 0x0C: "Status", 0x0E: "Changes", 0x0F: "Add",
                            0x10: "Delete", 0x11: "Update", 0x12: "SyncKey",
                            0x13: "FolderCreate", 0x14: "FolderDelete", 0x15: "FolderUpdate",
                            0x16: "FolderSync", 0x17: "Count"}),
    13: ("Ping", {0x05: "Ping", 0x06: "AutdState", 0x07: "Status", 0x08: "HeartbeatInterval",
                  0x09: "Folders", 0x0A: "Folder", 0x0B: "Id", 0x0C: "Class",
                  0x0D: "MaxFolders"}),
    17: ("AirSyncBase", {0x05: "BodyPreference", 0x06: "Type", 0x07: "TruncationSize",
                         0x08: "AllOrNone", 0x0A: "Body", 0x0B: "Data",
                         0x0C: "EstimatedDataSize", 0x0D: "Truncated", 0x0E: "Attachments",
                         0x16: "NativeBodyType"}),
}
TOKENS = {f"{page}:{tag}": (number, token)
          for number, (page, tags) in PAGES.items() for token, tag in tags.items()}


def encode(root: Node) -> bytes:
    out = bytearray(HEADER)
    page = [None]

    def node(tag: str, content: str | list[Node]) -> None:
        number, token = TOKENS[tag]
        if number != page[0]:
            out.extend((SWITCH_PAGE, number))
            page[0] = number
        if isinstance(content, list) and not content:
            out.append(token)  # an empty element
            return
        out.append(token | HAS_CONTENT)
        if isinstance(content, str):
            out.append(STR_I)
            out.extend(content.encode() + b"\0")
        else:
            for child in content:
                node(*child)
        out.append(END)

    node(*root)
    return bytes(out)


def decode(data: bytes) -> Node:
    if data[:4] != HEADER:
        raise ValueError(f"not WBXML 1.3 UTF-8 without a string table: {data[:8]!r}")
    pos, page = 4, 0

    def element() -> Node:
        nonlocal pos, page
        while data[pos] == SWITCH_PAGE:
            page, pos = data[pos + 1], pos + 2
        byte = data[pos]
        pos += 1
        name, tags = PAGES.get(page, (f"page{page}", {}))
        tag = f"{name}:{tags.get(byte & 0x3F, hex(byte & 0x3F))}"
        if not byte & HAS_CONTENT:
            return (tag, [])
        children: list[Node] = []
        text = None
        while True:
            b = data[pos]
            if b == END:
                pos += 1
                return (tag, text if text is not None and not children else children)
            if b == STR_I:
                end = data.index(0, pos + 1)
                text, pos = (text or "") + data[pos + 1:end].decode(), end + 1
            elif b == OPAQUE:
                length, pos = _mb_uint(pos + 1)
                text, pos = (text or "") + data[pos:pos + length].decode(errors="replace"), pos + length
            else:
                children.append(element())

    def _mb_uint(at: int) -> tuple[int, int]:
        value = 0
        while True:
            b = data[at]
            value, at = (value << 7) | (b & 0x7F), at + 1
            if not b & 0x80:
                return value, at

    return element()


def find_all(node: Node, tag: str) -> list[Node]:
    """Every element named tag below (and including) node, in document order."""
    found = [node] if node[0] == tag else []
    if isinstance(node[1], list):
        for child in node[1]:
            found += find_all(child, tag)
    return found


def text(node: Node, tag: str) -> str | None:
    """The text of the first element named tag below node."""
    for n in find_all(node, tag):
        if isinstance(n[1], str):
            return n[1]
    return None
