"""Tests for smtp.client: the sans-IO SMTP client state machine, on canned server bytes."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from albatross.model import Recipient, Reply
from albatross.smtp.client import (
    AuthDone,
    ClientConnection,
    ClientProtocolError,
    Event,
    Extensions,
    Greeting,
    Hello,
    QuitDone,
    ResetDone,
    ServerClosing,
    Stage,
    StartTLSReply,
    State,
    Transaction,
    TransactionDone,
    dot_stuff,
    normalize_body,
    orcpt_param,
)

FULL_EHLO = (b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
             b"250-SMTPUTF8\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n")


def events(conn: ClientConnection, data: bytes = b"") -> list[Event]:
    if data:
        conn.receive_data(data)
    out = []
    while (ev := conn.next_event()) is not None:
        out.append(ev)
    return out


def ready(ehlo: bytes = FULL_EHLO) -> ClientConnection:
    conn = ClientConnection("client.test")
    assert conn.waiting_for is Stage.GREETING
    [greet] = events(conn, b"220 mx.example ESMTP\r\n")
    assert isinstance(greet, Greeting) and greet.reply.code == 220
    conn.send_ehlo()
    assert conn.data_to_send() == b"EHLO client.test\r\n"
    [hello] = events(conn, ehlo)
    assert isinstance(hello, Hello) and hello.reply.is_positive
    assert conn.state is State.READY
    return conn


def tx(*rcpts: str | Recipient, body: bytes = b"Subject: x\r\n\r\nhi\r\n", **kw: Any
       ) -> Transaction:
    rs = tuple(r if isinstance(r, Recipient) else Recipient(r) for r in rcpts)
    return Transaction(sender=str(kw.pop("sender", "a@example.org")), recipients=rs, body=body,
                       **kw)


def waiting(conn: ClientConnection) -> Stage | None:
    return conn.waiting_for


# --- greeting, EHLO, HELO --------------------------------------------------------------------

def test_ehlo_extensions_parsed() -> None:
    conn = ready(b"250-mx.example hello\r\n250-PIPELINING\r\n250-SIZE 35882577\r\n"
                 b"250-AUTH PLAIN LOGIN\r\n250-AUTH=CRAM-MD5\r\n250-chunking\r\n"
                 b"250-X-WEIRD arg\r\n250-bad*keyword\r\n250 \r\n")
    ext = conn.extensions
    assert ext.pipelining and ext.chunking and not ext.dsn and not ext.starttls
    assert ext.size == 35882577
    assert ext.auth == {"PLAIN", "LOGIN", "CRAM-MD5"}
    assert "X-WEIRD" in ext.keywords and "BAD*KEYWORD" not in ext.keywords
    assert conn.extended


def test_size_without_number_means_no_limit() -> None:
    assert ready(b"250-mx\r\n250 SIZE\r\n").extensions.size == 0
    assert ready(b"250-mx\r\n250 SIZE lots\r\n").extensions.size == 0
    assert ready(b"250 mx\r\n").extensions.size is None


@pytest.mark.parametrize("code", [b"500", b"502", b"554"])
def test_helo_fallback_after_5xx_to_ehlo(code: bytes) -> None:
    conn = ClientConnection("client.test")
    events(conn, b"220 old.example\r\n")
    conn.send_ehlo()
    conn.data_to_send()
    assert events(conn, code + b" 5.5.1 what is EHLO?\r\n") == []
    assert conn.data_to_send() == b"HELO client.test\r\n"
    assert conn.waiting_for is Stage.HELO
    [hello] = events(conn, b"250 old.example\r\n")
    assert isinstance(hello, Hello) and not hello.extended
    assert hello.extensions == Extensions()
    assert conn.state is State.READY


def test_helo_refused_too() -> None:
    conn = ClientConnection("client.test")
    events(conn, b"220 x\r\n")
    conn.send_ehlo()
    events(conn, b"500 no\r\n")
    [hello] = events(conn, b"550 5.7.1 go away\r\n")
    assert isinstance(hello, Hello) and hello.reply.code == 550 and not hello.extended


def test_ehlo_4xx_does_not_fall_back() -> None:
    conn = ClientConnection("client.test")
    events(conn, b"220 x\r\n")
    conn.send_ehlo()
    conn.data_to_send()
    [hello] = events(conn, b"451 4.3.0 busy\r\n")
    assert isinstance(hello, Hello) and hello.reply.code == 451
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("greeting", [b"421 4.3.2 busy\r\n", b"554 no mail here\r\n"])
def test_refusing_greeting(greeting: bytes) -> None:
    conn = ClientConnection("client.test")
    [ev] = events(conn, greeting)
    assert isinstance(ev, Greeting) and not ev.reply.is_positive
    assert conn.closed
    with pytest.raises(ClientProtocolError):
        conn.send_ehlo()


# --- replies -----------------------------------------------------------------------------------

def test_multiline_reply_with_enhanced_codes() -> None:
    conn = ready()
    conn.send_rset()
    [ev] = events(conn, b"250-2.0.0 first\r\n250-2.0.0 second\r\n250 2.0.0 third\r\n")
    assert isinstance(ev, ResetDone)
    assert ev.reply == Reply(250, "2.0.0", "first\nsecond\nthird")


def test_enhanced_code_taken_when_present_without_the_keyword() -> None:
    conn = ready(b"250 mx\r\n")
    conn.send_rset()
    [ev] = events(conn, b"250 2.1.0 fine\r\n")
    assert isinstance(ev, ResetDone) and ev.reply == Reply(250, "2.1.0", "fine")


@pytest.mark.parametrize(("raw", "reply"), [
    (b"250\r\n", Reply(250, "", "")),
    (b"250 \r\n", Reply(250, "", "")),
    (b"250 ok\n", Reply(250, "", "ok")),  # a bare LF ending: liberal
    (b"250 5.0.0 wrong class\r\n", Reply(250, "", "5.0.0 wrong class")),
    (b"250 2.1234.0 too long\r\n", Reply(250, "", "2.1234.0 too long")),
    (b"250 ok \x1b[31m\xff\r\n", Reply(250, "", "ok ?[31m\ufffd")),
])
def test_reply_forms(raw: bytes, reply: Reply) -> None:
    conn = ready()
    conn.send_noop()
    [ev] = events(conn, raw)
    assert ev.reply == reply  # type: ignore[union-attr]


def test_reply_split_across_reads() -> None:
    conn = ready()
    conn.send_noop()
    for piece in (b"25", b"0-one\r", b"\n250 tw", b"o"):
        assert events(conn, piece) == []
    [ev] = events(conn, b"\r\n")
    assert ev.reply.text == "one\ntwo"  # type: ignore[union-attr]


def test_reply_line_limit() -> None:
    conn = ready()
    conn.send_noop()
    line = b"250 " + b"x" * (2048 - 6) + b"\r\n"
    assert len(line) == 2048
    [ev] = events(conn, line)
    assert len(ev.reply.text) == 2042  # type: ignore[union-attr]
    conn.send_noop()
    with pytest.raises(ClientProtocolError, match="longer than 2048"):
        events(conn, b"250 " + b"x" * 2045)  # no LF within 2048 octets


def test_continuation_limit() -> None:
    conn = ready()
    conn.send_noop()
    [ev] = events(conn, b"250-x\r\n" * 100 + b"250 end\r\n")
    assert ev.reply.text.count("\n") == 100  # type: ignore[union-attr]
    conn.send_noop()
    with pytest.raises(ClientProtocolError, match="100 continuation"):
        events(conn, b"250-x\r\n" * 101)


@pytest.mark.parametrize("raw", [
    b"hello\r\n", b"25\r\n", b"2x0 no\r\n", b"150 too low\r\n", b"650 too high\r\n",
    b"250_x\r\n", b"250-a\r\n251 b\r\n", b"\r\n",
])
def test_malformed_replies(raw: bytes) -> None:
    conn = ready()
    conn.send_noop()
    with pytest.raises(ClientProtocolError):
        events(conn, raw)


def test_unsolicited_reply_is_an_error_but_421_closes() -> None:
    conn = ready()
    with pytest.raises(ClientProtocolError, match="unexpected"):
        events(conn, b"250 what\r\n")
    conn = ready()
    [ev] = events(conn, b"421 4.4.2 idle too long\r\n")
    assert isinstance(ev, ServerClosing) and conn.closed


def test_eof_while_waiting_is_an_error() -> None:
    conn = ready()
    conn.send_noop()
    with pytest.raises(ClientProtocolError, match="noop"):
        conn.receive_eof()
    conn = ready()
    conn.send_quit()
    [ev] = events(conn, b"221 2.0.0 bye\r\n")
    assert isinstance(ev, QuitDone) and conn.closed
    conn.receive_eof()  # expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8), st.booleans())
def test_fuzz_only_our_error_escapes(chunks: list[bytes], pipelined: bool) -> None:
    conn = ClientConnection("client.test")
    try:
        for chunk in chunks:
            conn.receive_data(chunk)
            while (ev := conn.next_event()) is not None:
                if isinstance(ev, Greeting) and ev.reply.code == 220:
                    conn.send_ehlo()
                elif isinstance(ev, Hello) and ev.reply.is_positive:
                    conn.send_transaction(tx("b@example.net", "c@example.net"))
            conn.data_to_send()
        conn.receive_eof()
    except ClientProtocolError as err:
        assert str(err).isascii() and str(err).isprintable()


# --- transactions ------------------------------------------------------------------------------

def test_pipelining_one_write_and_replies_in_order() -> None:
    conn = ready()
    conn.send_transaction(tx("b@example.net", "c@example.net", "d@example.net"))
    sent = conn.data_to_send()
    assert sent == (b"MAIL FROM:<a@example.org> SIZE=18\r\n"
                    b"RCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\n"
                    b"RCPT TO:<d@example.net>\r\nDATA\r\n")
    assert conn.waiting_for is Stage.MAIL
    assert events(conn, b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n") == []
    assert waiting(conn) is Stage.RCPT
    assert events(conn, b"451 4.2.0 try later\r\n354 go on\r\n") == []
    assert conn.data_to_send() == b"Subject: x\r\n\r\nhi\r\n.\r\n"
    assert waiting(conn) is Stage.DOT
    [done] = events(conn, b"250 2.0.0 queued as X\r\n")
    assert isinstance(done, TransactionDone)
    assert [done.result(i).code for i in range(3)] == [250, 550, 451]
    assert done.result(0) == Reply(250, "2.0.0", "queued as X")
    assert done.result(1).enhanced == "5.1.1"
    assert done.complete and conn.state is State.READY


def test_without_pipelining_one_command_at_a_time() -> None:
    conn = ready(b"250-mx\r\n250 8BITMIME\r\n")
    conn.send_transaction(tx("b@example.net", "c@example.net"))
    assert conn.data_to_send() == b"MAIL FROM:<a@example.org>\r\n"
    events(conn, b"250 ok\r\n")
    assert conn.data_to_send() == b"RCPT TO:<b@example.net>\r\n"
    events(conn, b"550 no\r\n")
    assert conn.data_to_send() == b"RCPT TO:<c@example.net>\r\n"
    events(conn, b"250 ok\r\n")
    assert conn.data_to_send() == b"DATA\r\n"
    events(conn, b"354 go\r\n")
    assert conn.data_to_send().endswith(b"\r\n.\r\n")
    [done] = events(conn, b"250 queued\r\n")
    assert isinstance(done, TransactionDone)
    assert [done.result(i).code for i in range(2)] == [550, 250]


def test_mail_refused_no_rcpt_sent() -> None:
    conn = ready(b"250 mx\r\n")
    conn.send_transaction(tx("b@example.net", "c@example.net"))
    conn.data_to_send()
    [done] = events(conn, b"553 5.7.1 sender refused\r\n")
    assert isinstance(done, TransactionDone)
    assert conn.data_to_send() == b""
    assert done.rcpts == (done.mail, done.mail) and done.data is None
    assert done.result(1).code == 553 and done.complete


def test_pipelined_mail_refused_replies_are_drained() -> None:
    conn = ready()
    conn.send_transaction(tx("b@example.net"))
    conn.data_to_send()
    [done] = events(conn, b"550 5.7.1 no\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n")
    assert isinstance(done, TransactionDone) and done.result(0).code == 550
    assert conn.state is State.READY


def test_all_recipients_refused_without_pipelining_sends_no_data() -> None:
    conn = ready(b"250 mx\r\n")
    conn.send_transaction(tx("b@example.net"))
    conn.data_to_send()
    events(conn, b"250 ok\r\n")
    conn.data_to_send()
    [done] = events(conn, b"550 no\r\n")
    assert isinstance(done, TransactionDone) and done.data is None
    assert not done.complete  # MAIL is still open on the server: RSET before reuse
    assert conn.data_to_send() == b""


def test_pipelined_354_without_accepted_recipient_sends_only_the_dot() -> None:
    conn = ready()
    conn.send_transaction(tx("b@example.net"))
    conn.data_to_send()
    events(conn, b"250 ok\r\n550 no\r\n354 go\r\n")
    assert conn.data_to_send() == b".\r\n"
    [done] = events(conn, b"554 5.5.1 no valid recipients\r\n")
    assert isinstance(done, TransactionDone) and done.data is None
    assert done.result(0).code == 550


def test_pipelined_data_refused() -> None:
    conn = ready()
    conn.send_transaction(tx("b@example.net", "c@example.net"))
    conn.data_to_send()
    [done] = events(conn, b"250 ok\r\n250 ok\r\n550 no\r\n451 4.3.0 DATA later\r\n")
    assert isinstance(done, TransactionDone)
    assert [done.result(i).code for i in range(2)] == [451, 550]


def test_421_mid_pipeline_answers_everything() -> None:
    conn = ready()
    conn.send_transaction(tx("b@example.net", "c@example.net", "d@example.net"))
    conn.data_to_send()
    [done] = events(conn, b"250 ok\r\n250 ok\r\n421 4.3.2 shutting down\r\n")
    assert isinstance(done, TransactionDone)
    assert [done.result(i).code for i in range(3)] == [421, 421, 421]
    assert conn.closed


def test_dot_stuffing_and_bare_line_endings() -> None:
    conn = ready()
    body = b".leading\n..two\r.three\r\nend\r\n.\r\nafter\nno-final-newline"
    conn.send_transaction(tx("b@example.net", body=body))
    conn.data_to_send()
    events(conn, b"250 ok\r\n250 ok\r\n354 go\r\n")
    out = conn.data_to_send()
    assert out == (b"..leading\r\n...two\r\n..three\r\nend\r\n..\r\nafter\r\n"
                   b"no-final-newline\r\n.\r\n")


def test_empty_body() -> None:
    assert dot_stuff(normalize_body(b"")) == b".\r\n"


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_no_bare_cr_or_lf_ever_leaves(body: bytes) -> None:
    wire = dot_stuff(normalize_body(body))
    assert wire.endswith(b".\r\n")
    assert wire.count(b"\r") == wire.count(b"\n") == wire.count(b"\r\n")
    # The terminator appears once, at the end: the next hop cannot see an early end.
    assert (b"\r\n" + wire).find(b"\r\n.\r\n") == len(wire) - 3
    # Unstuffing gives back the normalized message.
    lines = wire[:-3].split(b"\r\n")
    unstuffed = b"\r\n".join(ln[1:] if ln.startswith(b".") else ln for ln in lines)
    assert unstuffed == normalize_body(body)


def test_bdat_framing_with_chunking() -> None:
    conn = ready(FULL_EHLO.replace(b"250 STARTTLS", b"250 CHUNKING"))
    body = b"line\n.dot\rend"
    conn.send_transaction(tx("b@example.net", body=body))
    # BDAT is not sent blind: the RCPT replies come first.
    assert conn.data_to_send().endswith(b"RCPT TO:<b@example.net>\r\n")
    events(conn, b"250 ok\r\n250 ok\r\n")
    content = b"line\r\n.dot\r\nend\r\n"
    assert conn.data_to_send() == b"BDAT %d LAST\r\n" % len(content) + content
    assert conn.waiting_for is Stage.BDAT
    [done] = events(conn, b"250 2.0.0 queued\r\n")
    assert isinstance(done, TransactionDone) and done.result(0).code == 250


def test_bdat_without_pipelining() -> None:
    conn = ready(b"250-mx\r\n250 CHUNKING\r\n")
    conn.send_transaction(tx("b@example.net", body=b"x\r\n"))
    assert conn.data_to_send() == b"MAIL FROM:<a@example.org>\r\n"
    events(conn, b"250 ok\r\n")
    assert conn.data_to_send() == b"RCPT TO:<b@example.net>\r\n"
    events(conn, b"250 ok\r\n")
    assert conn.data_to_send() == b"BDAT 3 LAST\r\nx\r\n"
    [done] = events(conn, b"552 5.3.4 too big\r\n")
    assert isinstance(done, TransactionDone) and done.result(0).code == 552


def test_dsn_parameters_passed_and_encoded() -> None:
    conn = ready(b"250-mx\r\n250 DSN\r\n")
    r1 = Recipient("b@example.net", notify="SUCCESS,FAILURE", orcpt="rfc822;b+x=y@example.net")
    r2 = Recipient("c@example.net", notify="NEVER")
    conn.send_transaction(tx(r1, r2, ret="HDRS", envid="id 1+2=3"))
    assert conn.data_to_send() == (
        b"MAIL FROM:<a@example.org> RET=HDRS ENVID=id+201+2B2+3D3\r\n")
    events(conn, b"250 ok\r\n")
    assert conn.data_to_send() == (
        b"RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx+3Dy@example.net\r\n")
    events(conn, b"250 ok\r\n")
    assert conn.data_to_send() == b"RCPT TO:<c@example.net> NOTIFY=NEVER\r\n"


def test_dsn_parameters_dropped_without_dsn() -> None:
    conn = ready(b"250 mx\r\n")
    r1 = Recipient("b@example.net", notify="NEVER", orcpt="rfc822;b@example.net")
    conn.send_transaction(tx(r1, ret="FULL", envid="x"))
    assert conn.data_to_send() == b"MAIL FROM:<a@example.org>\r\n"
    events(conn, b"250 ok\r\n")
    assert conn.data_to_send() == b"RCPT TO:<b@example.net>\r\n"


def test_orcpt_utf8_form() -> None:
    assert orcpt_param("utf-8;jö+=@exämple.org") == (
        "utf-8;j\\x{F6}\\x{2B}\\x{3D}@ex\\x{E4}mple.org")


def test_body_8bitmime_and_smtputf8() -> None:
    conn = ready()
    conn.send_transaction(tx("b@example.net", body="héllo\r\n".encode()))
    assert conn.data_to_send().startswith(b"MAIL FROM:<a@example.org> SIZE=8 BODY=8BITMIME\r\n")
    conn = ready()
    conn.send_transaction(tx("b@exämple.net", sender="ä@example.org", smtputf8=True))
    sent = conn.data_to_send()
    assert sent.startswith("MAIL FROM:<ä@example.org> SIZE=18 SMTPUTF8\r\n".encode())
    assert "RCPT TO:<b@exämple.net>\r\n".encode() in sent
    # 8-bit content to a server without 8BITMIME goes as is, without a BODY parameter.
    conn = ready(b"250 mx\r\n")
    conn.send_transaction(tx("b@example.net", body=b"\xe9\r\n"))
    assert conn.data_to_send() == b"MAIL FROM:<a@example.org>\r\n"


def test_smtputf8_needed_but_not_offered() -> None:
    conn = ready(b"250 mx\r\n")
    with pytest.raises(ClientProtocolError, match="SMTPUTF8"):
        conn.send_transaction(tx("b@example.net", smtputf8=True))
    with pytest.raises(ClientProtocolError, match="non-ASCII"):
        conn.send_transaction(tx("b@exämple.net"))
    assert conn.state is State.READY  # nothing was sent, nothing changed


@pytest.mark.parametrize("kw", [
    {"sender": "a@b\r\nRCPT TO:<evil@example>"},
    {"ret": "FULL\r\nRSET"},
])
def test_command_injection_refused(kw: dict[str, Any]) -> None:
    conn = ready()
    with pytest.raises(ClientProtocolError, match="CR, LF or NUL"):
        conn.send_transaction(tx("b@example.net", **kw))
    with pytest.raises(ClientProtocolError):
        conn.send_transaction(tx("b@example.net\nDATA"))
    assert conn.data_to_send() == b""


def test_transaction_needs_ready_and_recipients() -> None:
    conn = ready()
    with pytest.raises(ClientProtocolError):
        conn.send_transaction(tx())
    conn.send_noop()
    with pytest.raises(ClientProtocolError):
        conn.send_transaction(tx("b@example.net"))


def test_two_transactions_with_rset_between() -> None:
    conn = ready()
    for _ in range(2):
        conn.send_transaction(tx("b@example.net"))
        conn.data_to_send()
        events(conn, b"250 ok\r\n250 ok\r\n354 go\r\n")
        assert conn.data_to_send().endswith(b"hi\r\n.\r\n")
        [done] = events(conn, b"250 ok\r\n")
        assert isinstance(done, TransactionDone)
        conn.send_rset()
        assert conn.data_to_send() == b"RSET\r\n"
        [ev] = events(conn, b"250 2.0.0 ok\r\n")
        assert isinstance(ev, ResetDone)


# --- STARTTLS and AUTH -------------------------------------------------------------------------

def test_starttls_drops_injected_plaintext() -> None:
    conn = ready()
    conn.send_starttls()
    assert conn.data_to_send() == b"STARTTLS\r\n"
    # A man in the middle appends a reply to the 220 (CVE-2011-0411, client side).
    [ev] = events(conn, b"220 2.0.0 go ahead\r\n250 injected\r\n")
    assert isinstance(ev, StartTLSReply) and ev.reply.code == 220
    assert conn.state is State.TLS
    with pytest.raises(ClientProtocolError):
        conn.send_transaction(tx("b@example.net"))
    conn.tls_established()
    assert conn.tls_active and conn.extensions == Extensions()
    assert events(conn) == []  # the injected reply is gone
    conn.send_ehlo()
    [hello] = events(conn, b"250-mx\r\n250 PIPELINING\r\n")
    assert isinstance(hello, Hello) and hello.extensions.pipelining


def test_starttls_refused_stays_usable() -> None:
    conn = ready()
    conn.send_starttls()
    [ev] = events(conn, b"454 4.7.0 TLS not available\r\n")
    assert isinstance(ev, StartTLSReply) and conn.state is State.READY


def test_auth_plain() -> None:
    conn = ready(b"250-mx\r\n250 AUTH PLAIN\r\n")
    conn.send_auth("plain", "user", "secret")
    token = base64.b64encode(b"\0user\0secret")
    assert conn.data_to_send() == b"AUTH PLAIN " + token + b"\r\n"
    [ev] = events(conn, b"235 2.7.0 ok\r\n")
    assert isinstance(ev, AuthDone) and ev.reply.code == 235


def test_auth_login() -> None:
    conn = ready(b"250-mx\r\n250 AUTH LOGIN\r\n")
    conn.send_auth("LOGIN", "user", "secret")
    assert conn.data_to_send() == b"AUTH LOGIN\r\n"
    events(conn, b"334 VXNlcm5hbWU6\r\n")
    assert conn.data_to_send() == base64.b64encode(b"user") + b"\r\n"
    events(conn, b"334 UGFzc3dvcmQ6\r\n")
    assert conn.data_to_send() == base64.b64encode(b"secret") + b"\r\n"
    [ev] = events(conn, b"535 5.7.8 bad credentials\r\n")
    assert isinstance(ev, AuthDone) and ev.reply.code == 535
    assert conn.state is State.READY


def test_auth_unexpected_challenge_is_cancelled() -> None:
    conn = ready(b"250-mx\r\n250 AUTH PLAIN\r\n")
    conn.send_auth("PLAIN", "user", "secret")
    conn.data_to_send()
    assert events(conn, b"334 more?\r\n") == []
    assert conn.data_to_send() == b"*\r\n"
    [ev] = events(conn, b"501 5.0.0 cancelled\r\n")
    assert isinstance(ev, AuthDone) and ev.reply.code == 501


def test_auth_rejects_unknown_mechanism() -> None:
    conn = ready()
    with pytest.raises(ClientProtocolError):
        conn.send_auth("CRAM-MD5", "u", "p")
