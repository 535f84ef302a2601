"""Fuzzing of the SMTP server state machine (smtp/server.py) with hypothesis.

Random byte streams, built from valid commands, DATA blocks, BDAT chunks of right and wrong
sizes and raw noise with CR, LF, dots and NULs sprinkled in, are fed to a ServerConnection
under an auto-accepting driver, whole, byte by byte and in random chunks. What must hold:

- nothing escapes the machine (the driver never misuses it, so not even ProtocolError);
- message events nest: one MessageStart, then data, then one MessageEnd or MessageAborted;
- the framing does not depend on how TCP cut the stream: the messages, the replies and the
  events are the same for every split (a split-dependent terminator is how SMTP smuggling,
  CVE-2023-51764, gets a second message past a relay);
- what is accepted respects every limit, and never holds a bare CR or LF, nor a NUL,
  unless the client declared BODY=BINARYMIME (RFC 3030 §3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from albatross.model import Reply
from albatross.smtp.server import (
    Closed,
    Event,
    Hello,
    Limits,
    MailFrom,
    MessageAborted,
    MessageData,
    MessageEnd,
    MessageStart,
    RcptTo,
    Reset,
    ServerConnection,
    StartTLS,
)

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass
class Transcript:
    """Everything observable about one run."""

    replies: bytes = b""
    events: list[tuple[str, object]] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    # Stream offsets where a polite client waits for a reply before sending more: after the
    # DATA that got 354, and after the STARTTLS that got 220 (RFC 2920 §3.1, RFC 3207 §4).
    waits: list[int] = field(default_factory=list)


def drive(limits: Limits, chunks: list[bytes]) -> Transcript:
    """Run `chunks` through a ServerConnection that accepts everything."""
    conn = ServerConnection(limits)
    conn.greet(Reply(220, "", "mx.test ESMTP"))
    t = Transcript()
    out = bytearray(conn.data_to_send())
    current: bytearray | None = None
    started = -1  # index in t.events of the open message's MessageStart
    fed = 0

    def forget_content() -> None:
        # How much of a refused or unfinished message streamed out depends on the split,
        # and the driver throws it away: leave it out of the comparison.
        if started >= 0:
            t.events[started:] = [e for e in t.events[started:] if e[0] != "data"]

    def note(ev: Event) -> None:
        nonlocal started
        if isinstance(ev, MessageAborted | Reset | Closed):
            forget_content()
        if isinstance(ev, MessageStart):
            started = len(t.events)
        elif isinstance(ev, MessageEnd | MessageAborted | Reset | Closed):
            started = -1
        if isinstance(ev, MessageData):
            if t.events and t.events[-1][0] == "data":
                prev = t.events[-1][1]
                assert isinstance(prev, bytes)
                t.events[-1] = ("data", prev + ev.data)
            else:
                t.events.append(("data", ev.data))
        else:
            t.events.append((type(ev).__name__, repr(ev)))

    def pump() -> None:
        nonlocal current
        while (ev := conn.next_event()) is not None:
            note(ev)
            if isinstance(ev, MessageStart):
                assert current is None, "a message started inside another"
                current = bytearray()
                if not ev.chunking:
                    t.waits.append(fed)
            elif isinstance(ev, MessageData):
                assert current is not None, "content outside a message"
                assert ev.data, "empty MessageData"
                current += ev.data
            elif isinstance(ev, MessageEnd):
                assert current is not None, "end of a message that never started"
                check_message(limits, conn, bytes(current))
                t.messages.append(bytes(current))
                current = None
                conn.respond(Reply(250, "2.0.0", f"Ok: queued as M{len(t.messages)}"))
            elif isinstance(ev, MessageAborted):
                assert current is not None, "abort of a message that never started"
                assert ev.reply.code >= 500
                current = None
            elif isinstance(ev, Reset | Closed):
                current = None
            elif isinstance(ev, StartTLS):
                conn.accept()
                t.waits.append(fed)
                conn.tls_established()  # the handshake, instantly
            else:
                assert isinstance(ev, Hello | MailFrom | RcptTo)
                assert conn.pending is ev
                conn.accept()
        assert conn.pending is None
        out.extend(conn.data_to_send())

    pump()
    for chunk in chunks:
        conn.receive_data(chunk)
        fed += len(chunk)
        pump()
    forget_content()
    t.replies = bytes(out)
    return t


def check_message(limits: Limits, conn: ServerConnection, body: bytes) -> None:
    """What any accepted message must respect."""
    assert len(body) <= limits.max_message_size
    params = conn.transaction.params
    if params is not None and params.body == "BINARYMIME":
        return
    crlf = body.count(b"\r\n")
    assert body.count(b"\r") == crlf and body.count(b"\n") == crlf, "bare CR or LF accepted"
    assert b"\0" not in body
    for line in body.split(b"\r\n"):
        assert len(line) + 2 <= limits.max_text_line, "overlong line accepted"
    if not conn.transaction.chunking:
        assert body == b"" or body.endswith(b"\r\n")


# --- input generation ------------------------------------------------------------------------

NOISE = [b"a", b"Z", b" ", b".", b"..", b"\r", b"\n", b"\r\n", b"\0", b"\xc3\xa9", b"\xff",
         b"\r\n.\r\n", b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b".\r\n", b"\r\n.",
         b"x" * 37, b"MAIL FROM:<s@example.org>\r\n", b"QUIT\r\n"]

COMMANDS = [
    b"EHLO client.example\r\n", b"HELO client.example\r\n", b"EHLO\r\n",
    b"MAIL FROM:<a@example.org>\r\n", b"MAIL FROM:<>\r\n",
    b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\n",
    b"MAIL FROM:<a@example.org> BODY=8BITMIME SIZE=100\r\n",
    b"MAIL FROM:<a@example.org> SIZE=999999\r\n",
    b"MAIL FROM:<\xc3\xa9@example.org> SMTPUTF8\r\n",
    b"RCPT TO:<b@localhost>\r\n", b"RCPT TO:<c@localhost> NOTIFY=NEVER\r\n",
    b"RCPT TO:<Postmaster>\r\n", b"RCPT TO:<bad\r\n",
    b"DATA\r\n", b"RSET\r\n", b"NOOP\r\n", b"VRFY x\r\n", b"HELP\r\n", b"STARTTLS\r\n",
    b"BDAT 0 LAST\r\n", b"BDAT x\r\n", b"mail from:<l@example.org>\r\n", b"XYZZY\r\n",
    b"DATA\n", b"NOOP\r", b"NO\0OP\r\n",
]

LINES = [b"Subject: x\r\n", b"\r\n", b"..\r\n", b".x\r\n", b"...\r\n", b"text line\r\n",
         b"x" * 9 + b"\r\n", b"x" * 37 + b"\r\n", b"caf\xc3\xa9\r\n"]

noise = st.lists(st.sampled_from(NOISE), max_size=12).map(b"".join)
lines = st.lists(st.sampled_from(LINES), max_size=8).map(b"".join)
content = st.one_of(lines, noise, st.tuples(lines, noise, lines).map(b"".join))
command = st.sampled_from(COMMANDS)


@st.composite
def data_block(draw: st.DrawFn) -> bytes:
    """A DATA command and content, usually ending with the proper terminator."""
    body = draw(content)
    end = draw(st.sampled_from([b"\r\n.\r\n", b"\r\n.\r\n", b".\r\n", b"", b"\n.\n"]))
    return b"DATA\r\n" + body + end


@st.composite
def bdat_block(draw: st.DrawFn) -> bytes:
    """A BDAT command and its chunk; the declared size is sometimes a lie."""
    chunk = draw(content)
    size = len(chunk) + draw(st.sampled_from([0, 0, 0, -1, 1, 5]))
    last = draw(st.sampled_from([b"", b" LAST", b" last"]))
    return b"BDAT %d%s\r\n" % (max(size, 0), last) + chunk


@st.composite
def transaction(draw: st.DrawFn) -> bytes:
    """A mostly plausible MAIL/RCPT/content sequence, so that messages really happen."""
    parts = [draw(st.sampled_from([b"", b"RSET\r\n"])), draw(st.sampled_from(COMMANDS[3:9]))]
    parts += draw(st.lists(st.sampled_from(COMMANDS[9:13]), min_size=1, max_size=4))
    parts += draw(st.lists(st.one_of(data_block(), bdat_block()), min_size=1, max_size=3))
    return b"".join(parts)


session = st.lists(
    st.one_of(transaction(), transaction(), command, data_block(), bdat_block(), noise),
    min_size=1, max_size=10,
).map(lambda parts: b"EHLO client.example\r\n" + b"".join(parts))

limits = st.builds(
    Limits,
    hostname=st.just("mx.test"),
    max_command_line=st.sampled_from([60, 512]),
    max_text_line=st.sampled_from([12, 40, 1000, 1000]),
    max_message_size=st.sampled_from([30, 200, 100000, 100000]),
    max_recipients=st.sampled_from([1, 3, 1000]),
    max_errors=st.sampled_from([3, 1000, 1000, 1000]),
    bare_line_endings=st.sampled_from(["reject", "normalize"]),
    tls_available=st.booleans(),
)


def split(stream: bytes, cuts: list[int], waits: list[int]) -> list[bytes]:
    """Cut `stream` at `cuts` and at every point where the client must wait for a reply."""
    points = sorted({p for p in cuts + waits if 0 < p < len(stream)})
    pieces = []
    prev = 0
    for p in [*points, len(stream)]:
        pieces.append(stream[prev:p])
        prev = p
    return pieces


def comparable(t: Transcript) -> tuple[bytes, list[tuple[str, object]], list[bytes]]:
    return t.replies, t.events, t.messages


# --- properties ------------------------------------------------------------------------------


@FUZZ
@given(limits=limits, stream=session, cuts=st.lists(st.integers(0, 4000), max_size=20))
def test_the_split_never_changes_the_outcome(
    limits: Limits, stream: bytes, cuts: list[int]
) -> None:
    # Byte by byte is the politest client: nothing is ever buffered ahead of a command.
    reference = drive(limits, [stream[i : i + 1] for i in range(len(stream))])
    whole = drive(limits, split(stream, [], reference.waits))
    assert comparable(whole) == comparable(reference)
    chunked = drive(limits, split(stream, cuts, reference.waits))
    assert comparable(chunked) == comparable(reference)


@FUZZ
@given(limits=limits, stream=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600)))
def test_raw_bytes_never_break_the_machine(
    limits: Limits, stream: bytes, cuts: list[int]
) -> None:
    drive(limits, split(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n" + stream, cuts, []))


@FUZZ
@given(limits=limits, stream=session)
def test_every_message_is_framed_once(limits: Limits, stream: bytes) -> None:
    t = drive(limits, [stream])
    starts = sum(1 for name, _ in t.events if name == "MessageStart")
    ends = sum(1 for name, _ in t.events if name in ("MessageEnd", "MessageAborted"))
    assert ends <= starts
    assert len(t.messages) <= stream.count(b"DATA") + stream.upper().count(b"LAST")
