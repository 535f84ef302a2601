"""PROXY protocol on the daemon: the real client address from an allowed balancer."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from tests.conftest import Daemon, make_daemon

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


@pytest.fixture
def behind_proxy(tmp_path: Path) -> Daemon:
    d = make_daemon(tmp_path, {"proxy_protocol_from": ["127.0.0.1/32"]},
                    extra='[relay]\ntrusted_networks = ["127.0.0.1/32"]\n')
    d.start()
    yield d  # type: ignore[misc]
    d.stop()


def dialog(sock: socket.socket, header: bytes) -> list[bytes]:
    f = sock.makefile("rb")
    sock.sendall(header)
    greeting = f.readline()
    sock.sendall(b"EHLO balancer.example\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    sock.sendall(b"MAIL FROM:<a@example.org>\r\n")
    mail = f.readline()
    sock.sendall(b"RCPT TO:<someone@elsewhere.test>\r\n")
    relay = f.readline()
    sock.sendall(b"RCPT TO:<b@localhost>\r\nDATA\r\n")
    local = f.readline()
    data = f.readline()
    sock.sendall(b"Subject: via proxy\r\n\r\nx\r\n.\r\nQUIT\r\n")
    return [greeting, mail, relay, local, data, f.readline()]


def test_v1_header_gives_the_real_client(behind_proxy: Daemon) -> None:
    d = behind_proxy
    with d.connect() as s:
        replies = dialog(s, b"PROXY TCP4 192.0.2.10 127.0.0.1 40000 25\r\n")
    assert replies[0].startswith(b"220 ")
    # 127.0.0.1 is trusted, but the client behind the balancer is not: no relaying for it.
    assert replies[2].startswith(b"554 5.7.1")
    assert replies[5].startswith(b"250 2.0.0 Ok: queued")
    env, body = d.load(d.ids()[0])
    assert env.client_ip == "192.0.2.10"  # type: ignore[attr-defined]
    assert b"([192.0.2.10])" in body.split(b"\r\n\r\n")[0]


def test_v2_header(behind_proxy: Daemon) -> None:
    d = behind_proxy
    addresses = socket.inet_aton("198.51.100.7") + socket.inet_aton("127.0.0.1") + \
        struct.pack("!HH", 51000, 25)
    header = V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses
    with d.connect() as s:
        replies = dialog(s, header)
    assert replies[0].startswith(b"220 ") and replies[2].startswith(b"554 5.7.1")
    env, _ = d.load(d.ids()[0])
    assert env.client_ip == "198.51.100.7"  # type: ignore[attr-defined]


def test_missing_or_malformed_header_closes_without_a_reply(behind_proxy: Daemon) -> None:
    d = behind_proxy
    for first in (b"EHLO sneaky.example\r\n", b"PROXY TCP4 999.1.1.1 127.0.0.1 1 25\r\n"):
        with d.connect() as s:
            s.sendall(first)
            s.settimeout(5)
            try:
                data = s.recv(100)
            except ConnectionResetError:
                data = b""
            assert data == b""
    assert d.ids() == []


def test_header_from_an_address_not_allowed_is_not_believed(behind_proxy: Daemon) -> None:
    # 127.0.0.2 is no balancer: its PROXY line claiming to be the trusted 127.0.0.1 is just
    # an unknown command, and it stays an untrusted client that may not relay.
    d = behind_proxy
    with socket.create_connection((d.host, d.port), timeout=10,
                                  source_address=("127.0.0.2", 0)) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 ")
        s.sendall(b"PROXY TCP4 127.0.0.1 127.0.0.1 40000 25\r\n")
        assert f.readline().startswith(b"500 5.5.1")
        s.sendall(b"EHLO x.example\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        s.sendall(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<someone@elsewhere.test>\r\n")
        assert f.readline().startswith(b"250 ")
        assert f.readline().startswith(b"554 5.7.1")
    assert d.ids() == []
