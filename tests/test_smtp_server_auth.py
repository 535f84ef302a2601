"""AUTH (RFC 4954) in the server state machine: the exchange, its limits and its refusals."""

from __future__ import annotations

import base64

import pytest

from albatross.model import Reply
from albatross.smtp.server import (
    AuthRequest,
    AuthResponse,
    Limits,
    MailFrom,
    ProtocolError,
    ServerConnection,
    State,
)

LIMITS = Limits(hostname="mx.test", tls_available=True, auth_mechanisms=("PLAIN", "LOGIN"))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def session(limits: Limits = LIMITS, tls: bool = True) -> ServerConnection:
    c = ServerConnection(limits)
    c.greet(Reply(220, "", "mx.test ESMTP"))
    if tls:
        c.receive_data(b"EHLO c\r\nSTARTTLS\r\n")
        while c.next_event() is not None:
            c.accept()
        c.tls_established()
    c.receive_data(b"EHLO c\r\n")
    assert c.next_event() is not None
    c.accept()
    c.data_to_send()
    return c


def feed(c: ServerConnection, data: bytes) -> list[object]:
    c.receive_data(data)
    out = []
    while (ev := c.next_event()) is not None:
        out.append(ev)
        if c.pending is not None:
            break
    return out


def test_auth_is_advertised_only_under_tls() -> None:
    plain = ServerConnection(LIMITS)
    plain.greet(Reply(220, "", "x"))
    plain.receive_data(b"EHLO c\r\n")
    plain.next_event()
    plain.accept()
    assert b"AUTH" not in plain.data_to_send()
    assert feed(plain, b"AUTH PLAIN\r\n") == []
    assert plain.data_to_send().startswith(b"538 5.7.11")
    c = ServerConnection(LIMITS)
    c.greet(Reply(220, "", "x"))
    c.receive_data(b"EHLO c\r\nSTARTTLS\r\n")
    while c.next_event() is not None:
        c.accept()
    c.tls_established()
    c.receive_data(b"EHLO c\r\n")
    c.next_event()
    c.accept()
    assert b"250 AUTH PLAIN LOGIN\r\n" in c.data_to_send()


def test_plain_with_initial_response() -> None:
    c = session()
    [ev] = feed(c, f"AUTH PLAIN {b64(chr(0) + 'alice' + chr(0) + 'secret')}\r\n".encode())
    assert isinstance(ev, AuthRequest) and ev.mechanism == "PLAIN"
    c.respond(Reply(235, "2.7.0", "Authentication successful"))
    assert c.authenticated and c.data_to_send() == b"235 2.7.0 Authentication successful\r\n"
    assert feed(c, b"AUTH PLAIN x\r\n") == []
    assert c.data_to_send().startswith(b"503 5.5.1")


def test_login_exchange_with_challenges() -> None:
    c = session()
    [ev] = feed(c, b"AUTH LOGIN\r\n")
    assert ev == AuthRequest("LOGIN", None)
    c.auth_challenge(b64("Username:"))
    assert c.data_to_send() == f"334 {b64('Username:')}\r\n".encode()
    assert c.state is State.AUTH
    [ev] = feed(c, f"{b64('alice')}\r\n".encode())
    assert ev == AuthResponse(b64("alice"))
    c.auth_challenge(b64("Password:"))
    c.data_to_send()
    [ev] = feed(c, f"{b64('wrong')}\r\n".encode())
    c.respond(Reply(535, "5.7.8", "Authentication credentials invalid"))
    assert not c.authenticated and c.state is State.READY
    assert c.data_to_send().startswith(b"535 5.7.8")


def test_cancel_unknown_mechanism_and_transaction() -> None:
    c = session()
    feed(c, b"AUTH LOGIN\r\n")
    c.auth_challenge("VXNlcm5hbWU6")
    c.data_to_send()
    assert feed(c, b"*\r\n") == []
    assert c.data_to_send().startswith(b"501 5.0.0") and c.state is State.READY
    assert feed(c, b"AUTH CRAM-MD5\r\n") == []
    assert c.data_to_send().startswith(b"504 5.5.4")
    [ev] = feed(c, b"MAIL FROM:<a@b>\r\n")
    assert isinstance(ev, MailFrom)
    c.accept()
    c.data_to_send()
    assert feed(c, b"AUTH PLAIN\r\n") == []
    assert c.data_to_send().startswith(b"503 5.5.1")


def test_overlong_response_line_is_refused_and_skipped() -> None:
    c = session()
    feed(c, b"AUTH LOGIN\r\n")
    c.auth_challenge("VXNlcm5hbWU6")
    c.data_to_send()
    assert feed(c, b"A" * 20000) == []
    assert c.data_to_send().startswith(b"500 5.5.6")
    assert feed(c, b"AAAA\r\nNOOP\r\n") == []  # the rest of the long line is skipped
    assert c.data_to_send() == b"250 2.0.0 Ok\r\n"


def test_starttls_forgets_authentication() -> None:
    limits = Limits(hostname="mx.test", tls_available=True, auth_mechanisms=("PLAIN",),
                    auth_requires_tls=False)
    c = session(limits, tls=False)
    feed(c, b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
    c.accept()
    assert c.authenticated
    feed(c, b"STARTTLS\r\n")
    c.accept()
    c.tls_established()
    assert not c.authenticated


def test_challenge_without_exchange_is_a_driver_error() -> None:
    c = session()
    with pytest.raises(ProtocolError):
        c.auth_challenge("x")
