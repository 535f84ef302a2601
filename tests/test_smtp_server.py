"""Unit tests of the SMTP server state machine (smtp/server.py) beyond the scripted dialogs.

The dialogs (tests/dialogs) show what a client sees; these tests hold the driver's side of
the contract: which events come in which order, what respond() and accept() change, how
the machine refuses to be misused (ProtocolError), and that its buffers stay bounded.
"""

from __future__ import annotations

import dataclasses

import pytest

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
    ProtocolError,
    RcptTo,
    Reset,
    ServerConnection,
    StartTLS,
    State,
)
from tests.dialog import Dialog, Step
from tests.test_dialogs_machine import DIALOGS, run

GREETING = Reply(220, "", "mx.test ESMTP")
QUEUED = Reply(250, "2.0.0", "Ok: queued as Q1")


def connect(**limits: object) -> ServerConnection:
    conn = ServerConnection(Limits(hostname="mx.test", **limits))  # type: ignore[arg-type]
    conn.greet(GREETING)
    assert conn.data_to_send() == b"220 mx.test ESMTP\r\n"
    return conn


def events(conn: ServerConnection) -> list[Event]:
    """Every event available now, without answering any decision."""
    out = []
    while (ev := conn.next_event()) is not None:
        out.append(ev)
    return out


def auto(conn: ServerConnection, data: bytes = b"") -> list[Event]:
    """Feed `data`, accept every decision, return the events."""
    conn.receive_data(data)
    out = []
    while (ev := conn.next_event()) is not None:
        out.append(ev)
        if conn.pending is not None:
            conn.accept()
    return out


def replies(conn: ServerConnection) -> list[str]:
    """The reply lines written since the last call."""
    return conn.data_to_send().decode().splitlines()


def state(conn: ServerConnection) -> State:
    """The state, read through a call so that mypy does not keep an earlier narrowing."""
    return conn.state


def ready(**limits: object) -> ServerConnection:
    """A session after EHLO, MAIL and RCPT."""
    conn = connect(**limits)
    auto(conn, b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@localhost>\r\n")
    conn.data_to_send()
    return conn


# --- API misuse --------------------------------------------------------------------------


def test_greeting_twice_is_misuse() -> None:
    conn = connect()
    with pytest.raises(ProtocolError):
        conn.greet(GREETING)


def test_respond_or_accept_without_a_decision_is_misuse() -> None:
    conn = connect()
    with pytest.raises(ProtocolError):
        conn.respond(Reply(250, "2.0.0", "Ok"))
    with pytest.raises(ProtocolError):
        conn.accept()
    conn.receive_data(b"NOOP\r\n")
    assert events(conn) == []  # NOOP needs no decision
    with pytest.raises(ProtocolError):
        conn.accept()


def test_answering_the_same_decision_twice_is_misuse() -> None:
    conn = connect()
    conn.receive_data(b"EHLO c.example\r\n")
    assert isinstance(conn.next_event(), Hello)
    conn.accept()
    with pytest.raises(ProtocolError):
        conn.accept()


def test_tls_established_without_starttls_is_misuse() -> None:
    conn = connect(tls_available=True)
    with pytest.raises(ProtocolError):
        conn.tls_established()


def test_misuse_leaves_the_session_usable() -> None:
    conn = connect()
    with pytest.raises(ProtocolError):
        conn.accept()
    auto(conn, b"NOOP\r\n")
    assert replies(conn) == ["250 2.0.0 Ok"]


# --- decisions and event order -----------------------------------------------------------


def test_a_decision_stops_the_parser_until_answered() -> None:
    # RFC 2920 §3.1: a later pipelined command is never judged before an earlier one.
    conn = connect()
    conn.receive_data(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nNOOP\r\n")
    ev = conn.next_event()
    assert ev == Hello("c.example", extended=True)
    assert conn.pending is ev
    assert conn.next_event() is None
    assert conn.data_to_send() == b""
    conn.accept()
    mail = conn.next_event()
    assert isinstance(mail, MailFrom)
    assert mail.sender is not None and str(mail.sender) == "a@example.org"
    assert conn.next_event() is None
    conn.accept()
    assert conn.next_event() is None
    out = replies(conn)
    assert out[0] == "250-mx.test"
    assert out[-2:] == ["250 2.1.0 Sender ok", "250 2.0.0 Ok"]


def test_events_of_a_whole_transaction_in_order() -> None:
    conn = connect()
    evs = auto(conn, b"EHLO c\r\nMAIL FROM:<> SIZE=10\r\nRCPT TO:<b@localhost> NOTIFY=NEVER "
                     b"ORCPT=rfc822;b+40localhost\r\nDATA\r\n")
    assert [type(e) for e in evs] == [Hello, MailFrom, RcptTo, MessageStart]
    mail, rcpt = evs[1], evs[2]
    assert isinstance(mail, MailFrom) and mail.sender is None and mail.params.size == 10
    assert isinstance(rcpt, RcptTo)
    assert (rcpt.notify, rcpt.orcpt) == ("NEVER", "rfc822;b@localhost")
    assert evs[3] == MessageStart(chunking=False)
    conn.receive_data(b"hello\r\n.\r\n")
    assert events(conn) == [MessageData(b"hello\r\n"), MessageEnd()]
    assert conn.transaction.recipients == [rcpt]
    conn.respond(QUEUED)
    assert conn.next_event() is None  # no Reset: the transaction ended with its message
    assert conn.transaction.recipients == []
    assert replies(conn)[-1] == "250 2.0.0 Ok: queued as Q1"
    assert conn.state is State.READY


def test_refused_hello_keeps_the_session_waiting_for_one() -> None:
    conn = connect()
    conn.receive_data(b"EHLO bad.example\r\nMAIL FROM:<a@example.org>\r\n")
    assert isinstance(conn.next_event(), Hello)
    conn.respond(Reply(550, "5.7.1", "Go away"))
    assert conn.next_event() is None
    assert replies(conn) == ["550 5.7.1 Go away", "503 5.5.1 Error: send EHLO or HELO first"]
    assert conn.state is State.INIT


def test_refused_sender_opens_no_transaction() -> None:
    conn = connect()
    auto(conn, b"EHLO c\r\n")
    conn.receive_data(b"MAIL FROM:<spam@example.org>\r\nRCPT TO:<b@localhost>\r\n")
    assert isinstance(conn.next_event(), MailFrom)
    conn.respond(Reply(550, "5.7.1", "No"))
    assert conn.next_event() is None
    assert replies(conn)[-2:] == ["550 5.7.1 No", "503 5.5.1 Error: need MAIL command"]
    assert conn.state is State.READY


def test_refused_recipients_are_not_kept() -> None:
    conn = connect()
    auto(conn, b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n")
    conn.receive_data(b"RCPT TO:<x@elsewhere.example>\r\nDATA\r\n")
    assert isinstance(conn.next_event(), RcptTo)
    conn.respond(Reply(554, "5.7.1", "Relay access denied"))
    assert conn.next_event() is None
    assert conn.transaction.recipients == []
    assert replies(conn)[-1] == "554 5.5.1 Error: no valid recipients"


def test_refused_recipient_does_not_count_against_the_limit() -> None:
    conn = connect(max_recipients=1)
    auto(conn, b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n")
    conn.receive_data(b"RCPT TO:<x@elsewhere.example>\r\nRCPT TO:<b@localhost>\r\n")
    assert conn.next_event() is not None
    conn.respond(Reply(550, "5.1.1", "No such user"))
    assert isinstance(conn.next_event(), RcptTo)
    conn.accept()
    assert replies(conn)[-2:] == ["550 5.1.1 No such user", "250 2.1.5 Recipient ok"]


def test_temporary_failure_at_end_of_data_resets_the_transaction() -> None:
    conn = ready()
    auto(conn, b"DATA\r\n")
    conn.receive_data(b"x\r\n.\r\nRCPT TO:<c@localhost>\r\n")
    assert events(conn) == [MessageData(b"x\r\n"), MessageEnd()]
    conn.respond(Reply(451, "4.3.0", "Try again"))
    assert conn.next_event() is None
    assert replies(conn)[-2:] == ["451 4.3.0 Try again", "503 5.5.1 Error: need MAIL command"]


def test_rset_reports_a_reset_only_when_a_transaction_was_open() -> None:
    conn = connect()
    assert auto(conn, b"EHLO c\r\nRSET\r\n") == [Hello("c", extended=True)]
    evs = auto(conn, b"MAIL FROM:<a@example.org>\r\nRSET\r\n")
    assert [type(e) for e in evs] == [MailFrom, Reset]
    assert conn.state is State.READY


def test_ehlo_inside_a_transaction_resets_it() -> None:
    # RFC 5321 §4.1.4: EHLO has the effect of RSET.
    conn = ready()
    evs = auto(conn, b"EHLO again\r\nRCPT TO:<b@localhost>\r\n")
    assert [type(e) for e in evs] == [Hello, Reset]
    assert replies(conn)[-1] == "503 5.5.1 Error: need MAIL command"


def test_quit_emits_closed_and_ignores_later_input() -> None:
    conn = connect()
    assert auto(conn, b"QUIT\r\nNOOP\r\n") == [Closed("quit")]
    assert conn.closing and conn.closed_reason == "quit"
    assert replies(conn) == ["221 2.0.0 Bye"]
    conn.receive_data(b"NOOP\r\n")
    assert conn.buffered == 0
    assert conn.next_event() is None


def test_http_client_is_closed_without_reply() -> None:
    conn = connect()
    assert auto(conn, b"POST / HTTP/1.1\r\nHost: x\r\n") == [Closed("http client")]
    assert conn.data_to_send() == b""


def test_too_many_errors_closes_with_421() -> None:
    conn = connect(max_errors=2)
    assert auto(conn, b"A\r\nB\r\nC\r\n") == [Closed("too many errors")]
    assert replies(conn) == ["500 5.5.1 Error: command not recognized"] * 2 + [
        "421 4.7.0 Error: too many errors, closing connection"]


def test_refusals_by_the_driver_count_as_errors() -> None:
    conn = connect(max_errors=2)
    auto(conn, b"EHLO c\r\n")
    conn.receive_data(b"MAIL FROM:<a@example.org>\r\n")
    conn.next_event()
    conn.respond(Reply(550, "5.7.1", "No"))
    conn.receive_data(b"MAIL FROM:<a@example.org>\r\n")
    conn.next_event()
    conn.respond(Reply(450, "4.7.1", "Later"))
    assert conn.next_event() == Closed("too many errors")
    assert replies(conn)[-1].startswith("421 4.7.0")


# --- greeting and shutdown ---------------------------------------------------------------


def test_554_greeting_allows_only_quit() -> None:
    # RFC 5321 §3.1: after a 554 greeting the client may only QUIT.
    conn = ServerConnection(Limits())
    conn.greet(Reply(554, "5.7.1", "Not here"))
    auto(conn, b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n")
    assert replies(conn)[1:] == ["503 5.7.0 Error: service refused, please QUIT"] * 2
    assert auto(conn, b"QUIT\r\n") == [Closed("quit")]


def test_421_greeting_closes_at_once() -> None:
    conn = ServerConnection(Limits())
    conn.greet(Reply(421, "4.7.0", "Too busy"))
    assert conn.closing
    assert conn.next_event() == Closed("greeting refused")


def test_shutdown_sends_its_reply_once_and_drops_a_pending_decision() -> None:
    conn = connect()
    conn.receive_data(b"EHLO c\r\n")
    assert isinstance(conn.next_event(), Hello)
    conn.shutdown(Reply(421, "4.3.2", "Shutting down"))
    conn.shutdown(Reply(421, "4.3.2", "Shutting down"))
    assert conn.pending is None
    assert replies(conn) == ["421 4.3.2 Shutting down"]
    assert conn.next_event() == Closed("shutdown")
    with pytest.raises(ProtocolError):
        conn.accept()


# --- EHLO and STARTTLS -------------------------------------------------------------------


def test_ehlo_advertises_the_extensions_and_limits() -> None:
    conn = connect(max_message_size=12345, tls_available=True)
    auto(conn, b"EHLO c\r\n")
    assert replies(conn) == ["250-mx.test", "250-PIPELINING", "250-SIZE 12345", "250-8BITMIME",
                             "250-SMTPUTF8", "250-ENHANCEDSTATUSCODES", "250-DSN",
                             "250-CHUNKING", "250-BINARYMIME", "250 STARTTLS"]


def test_helo_gets_one_line_and_no_extensions() -> None:
    conn = connect()
    auto(conn, b"HELO c\r\n")
    assert replies(conn) == ["250 mx.test"]
    assert conn.helo == "c" and not conn.extended


def test_starttls_not_advertised_without_tls() -> None:
    conn = connect(tls_available=False)
    auto(conn, b"EHLO c\r\nSTARTTLS\r\n")
    out = replies(conn)
    assert "250-STARTTLS" not in out and "250 STARTTLS" not in out
    assert out[-1] == "502 5.5.1 Error: STARTTLS not available"


def test_starttls_discards_pipelined_input_and_starts_over() -> None:
    # CVE-2011-0411: nothing received before the handshake is read after it.
    conn = connect(tls_available=True)
    auto(conn, b"EHLO c\r\n")
    conn.data_to_send()
    conn.receive_data(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\n")
    assert conn.next_event() == StartTLS()
    conn.accept()
    assert conn.state is State.TLS and conn.buffered == 0
    # What comes through the TLS layer before the driver calls tls_established() waits.
    conn.receive_data(b"EHLO c\r\n")
    assert conn.next_event() is None
    conn.tls_established()
    assert conn.tls_active and conn.helo is None and state(conn) is State.INIT
    assert replies(conn) == ["220 2.0.0 Ready to start TLS"]
    assert auto(conn) == [Hello("c", extended=True)]
    out = replies(conn)
    assert out[-1] == "250 BINARYMIME"  # STARTTLS no longer offered (RFC 3207 §4.2)


def test_refused_starttls_keeps_the_plaintext_session() -> None:
    conn = connect(tls_available=True)
    auto(conn, b"EHLO c\r\n")
    conn.data_to_send()
    conn.receive_data(b"STARTTLS\r\nNOOP\r\n")
    assert conn.next_event() == StartTLS()
    conn.respond(Reply(454, "4.7.0", "TLS not available now"))
    assert conn.next_event() is None
    assert replies(conn) == ["454 4.7.0 TLS not available now", "250 2.0.0 Ok"]
    assert not conn.tls_active and conn.state is State.READY


# --- content -----------------------------------------------------------------------------


def test_content_is_streamed_not_buffered() -> None:
    conn = ready()
    auto(conn, b"DATA\r\n")
    line = b"y" * 70 + b"\r\n"
    total = bytearray()
    for _ in range(200):
        conn.receive_data(line * 10)
        for ev in events(conn):
            assert isinstance(ev, MessageData)
            total += ev.data
        assert conn.buffered == 0
    conn.receive_data(b".\r\n")
    assert events(conn) == [MessageEnd()]
    assert bytes(total) == line * 2000


def test_unfinished_line_is_held_back_until_its_end() -> None:
    conn = ready()
    auto(conn, b"DATA\r\n")
    conn.receive_data(b"one\r\ntw")
    assert events(conn) == [MessageData(b"one\r\n")]
    assert conn.buffered == 2
    conn.receive_data(b"o\r\n.\r\n")
    assert events(conn) == [MessageData(b"two\r\n"), MessageEnd()]


def test_overlong_line_is_refused_before_its_end_and_not_buffered() -> None:
    conn = ready(max_text_line=100)
    auto(conn, b"DATA\r\n")
    for _ in range(100):
        conn.receive_data(b"z" * 1000)
        assert events(conn) == []
        assert conn.buffered <= 1000 + 4  # at most one read and a terminator-sized tail
    conn.receive_data(b"\r\n.\r\n")
    ev = events(conn)
    assert ev == [MessageAborted(Reply(550, "5.6.0",
                                       "Error: message has a line longer than the limit"))]
    assert replies(conn)[-1].startswith("550 5.6.0")
    assert conn.state is State.READY


def test_refused_message_keeps_only_a_terminator_sized_tail() -> None:
    conn = ready()
    auto(conn, b"DATA\r\n")
    conn.receive_data(b"bare\nline\r\n")
    events(conn)
    conn.receive_data(b"more text " * 1000)
    assert events(conn) == []
    assert conn.buffered <= 4
    conn.receive_data(b"\r\n.\r\n")
    assert [type(e) for e in events(conn)] == [MessageAborted]


def test_overlong_command_line_is_answered_once_and_not_buffered() -> None:
    conn = connect()
    for _ in range(50):
        conn.receive_data(b"x" * 1000)
        assert events(conn) == []
        assert conn.buffered <= 1
    conn.receive_data(b"\r\nNOOP\r\n")
    events(conn)
    assert replies(conn) == ["500 5.5.2 Error: command line too long", "250 2.0.0 Ok"]


def test_data_size_limit_counts_unstuffed_content() -> None:
    conn = ready(max_message_size=11)
    auto(conn, b"DATA\r\n")
    conn.receive_data(b"..12345\r\n..\r\n.\r\n")  # 13 octets on the wire, 11 unstuffed
    assert events(conn) == [MessageData(b".12345\r\n.\r\n"), MessageEnd()]


def test_bdat_crlf_split_across_chunks_is_not_bare() -> None:
    conn = ready()
    evs = auto(conn, b"BDAT 3\r\nab\rBDAT 3 LAST\r\n\ncd")
    assert [type(e) for e in evs] == [MessageStart, MessageData, MessageData, MessageEnd]
    assert b"".join(e.data for e in evs if isinstance(e, MessageData)) == b"ab\r\ncd"


def test_bdat_final_bare_cr_is_refused_in_reject_mode() -> None:
    conn = ready()
    evs = auto(conn, b"BDAT 3 LAST\r\nab\r")
    assert isinstance(evs[-1], MessageAborted) and evs[-1].reply.enhanced == "5.6.11"


def test_bdat_chunk_is_read_even_when_refused() -> None:
    # RFC 3030 §2: the chunk's bytes are consumed whatever the reply.
    conn = connect()
    auto(conn, b"EHLO c\r\n")
    conn.data_to_send()
    assert auto(conn, b"BDAT 12\r\nRSET\r\nRSET\r\n") == []
    assert conn.state is State.READY
    assert replies(conn) == ["503 5.5.1 Error: need MAIL command"]


def test_bdat_aborted_transaction_refuses_later_chunks() -> None:
    # RFC 3030 §3: after a failed chunk the transaction is gone; the next BDAT is 503.
    conn = ready(max_message_size=5)
    evs = auto(conn, b"BDAT 8\r\n1234567\nBDAT 2 LAST\r\nab")
    assert [type(e) for e in evs] == [MessageStart, MessageAborted]
    assert replies(conn) == ["550 5.6.11 Error: message contains a bare CR or LF; lines must "
                             "end with CRLF", "503 5.5.1 Error: need MAIL command"]


@pytest.mark.parametrize("mode", ["reject", "normalize"])
@pytest.mark.parametrize("trick", [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r\n.\r",
                                   b"\r\n\0.\r\n", b"\r\n.\0\r\n", b"\n..\r\n"])
def test_smuggling_is_the_same_whatever_the_reads(mode: str, trick: bytes) -> None:
    """CVE-2023-51764 family: a fake terminator, however the stream is cut, never ends the
    message and never lets a second transaction through."""
    stream = (b"DATA\r\nSubject: x\r\n\r\nfirst" + trick + b"MAIL FROM:<x@example.org>\r\n"
              b"RCPT TO:<y@localhost>\r\nBDAT 5 LAST\r\nhello\r\n.\r\nQUIT\r\n")
    results = []
    for size in (1, 2, 3, 5, 7, len(stream)):
        conn = ready(bare_line_endings=mode)
        # DATA alone first: a polite client waits for the 354.
        evs = auto(conn, b"DATA\r\n")
        for i in range(6, len(stream), size):
            evs += auto(conn, stream[i : i + size])
        ends = [e for e in evs if isinstance(e, MessageEnd | MessageAborted)]
        assert len(ends) == 1
        assert sum(isinstance(e, MessageStart) for e in evs) == 1
        results.append((replies(conn), [type(e) for e in evs if not isinstance(e, MessageData)]))
    assert all(r == results[0] for r in results)


# --- every dialog, one byte per read -------------------------------------------------------

# Where cutting the client's writes changes what a correct server must do: content sent
# before the 354, and commands sent before the STARTTLS handshake, are refused only when they
# arrive together with the command they should have waited for.
_TIMING_MATTERS = {"pipelining-early-content", "starttls-pipelined-discarded"}


@pytest.mark.parametrize("dialog", [d for d in DIALOGS if d.name not in _TIMING_MATTERS],
                         ids=lambda d: d.name)
def test_dialog_byte_by_byte(dialog: Dialog) -> None:
    """The framing may not depend on how TCP cuts the stream (the smuggling lesson): every
    dialog gives the same replies and messages when each byte arrives on its own."""
    steps = []
    for step in dialog.steps:
        if step.kind == "send":
            steps += [Step("send", step.data[i : i + 1]) for i in range(len(step.data))]
        else:
            steps.append(step)
    run(dataclasses.replace(dialog, steps=steps))
