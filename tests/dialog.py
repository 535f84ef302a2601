"""Scripted SMTP dialogs: one file per case, run against the state machine and the daemon.

A dialog file is a list of lines:

    # comment
    ! key = value        a [smtp] setting for this dialog (max_recipients = 3, ...)
    C: EHLO client       client sends the text and CRLF
    C~ DATA\\r\\nx\\n      client sends exactly these bytes (escapes: \\r \\n \\t \\0 \\xHH \\\\)
    S: 250 2.1.0         the next reply's first line starts with this ("250-" reads as "250 ")
    TLS                  the STARTTLS handshake happens here
    CLOSED               the server has closed the connection
    QUEUED n             n messages were queued by this dialog so far
    BODY k escaped       message k (1-based) of this dialog has exactly this content
                         (the server's own Received header left out)

Consecutive C lines are sent in one write, as a pipelining client would.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from pathlib import Path

DIALOGS = Path(__file__).parent / "dialogs"


def unescape(text: str) -> bytes:
    decoded: bytes = codecs.escape_decode(text.encode("utf-8"))[0]
    return decoded


@dataclass
class Step:
    kind: str  # send, expect, tls, closed, queued, body
    data: bytes = b""
    text: str = ""
    number: int = 0


@dataclass
class Dialog:
    name: str
    settings: dict[str, str] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)

    @property
    def settings_key(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(self.settings.items()))


def parse(path: Path) -> Dialog:
    d = Dialog(path.stem)
    for lineno, raw in enumerate(path.read_text("utf-8").splitlines(), 1):
        line = raw.rstrip("\n")
        if not line.strip() or line.startswith("#"):
            continue
        where = f"{path.name}:{lineno}"
        if line.startswith("! "):
            key, _, value = line[2:].partition("=")
            d.settings[key.strip()] = value.strip()
        elif line.startswith("C: ") or line == "C:":
            d.steps.append(Step("send", line[3:].encode("utf-8") + b"\r\n"))
        elif line.startswith("C~ "):
            d.steps.append(Step("send", unescape(line[3:])))
        elif line.startswith("S: "):
            d.steps.append(Step("expect", text=line[3:]))
        elif line == "TLS":
            d.steps.append(Step("tls"))
        elif line == "CLOSED":
            d.steps.append(Step("closed"))
        elif line.startswith("QUEUED "):
            d.steps.append(Step("queued", number=int(line.split()[1])))
        elif line.startswith("BODY "):
            _, num, rest = line.split(" ", 2)
            d.steps.append(Step("body", data=unescape(rest), number=int(num)))
        else:
            raise ValueError(f"{where}: cannot parse dialog line {line!r}")
    # Merge consecutive sends: one write per pipelined group.
    merged: list[Step] = []
    for s in d.steps:
        if s.kind == "send" and merged and merged[-1].kind == "send":
            merged[-1] = Step("send", merged[-1].data + s.data)
        else:
            merged.append(s)
    d.steps = merged
    return d


def all_dialogs() -> list[Dialog]:
    return [parse(p) for p in sorted(DIALOGS.glob("*.txt"))]


def split_replies(buf: bytearray) -> list[str]:
    """Take complete replies off the front of `buf`; each is its first line, '-' -> ' '."""
    out: list[str] = []
    while True:
        first = None
        pos = 0
        done = False
        while True:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            line = bytes(buf[pos:end]).decode("utf-8", "replace")
            if first is None:
                first = line[:3] + " " + line[4:] if len(line) > 3 else line
            pos = end + 2
            if len(line) < 4 or line[3] != "-":
                done = True
                break
        if not done:
            return out
        del buf[:pos]
        assert first is not None
        out.append(first)


def strip_received(message: bytes) -> bytes:
    """Remove the first header (our Received) and its continuation lines."""
    assert message.startswith(b"Received: "), message[:80]
    pos = message.find(b"\r\n") + 2
    while message[pos : pos + 1] in (b"\t", b" "):
        pos = message.find(b"\r\n", pos) + 2
    return message[pos:]
