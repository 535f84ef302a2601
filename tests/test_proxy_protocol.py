"""Tests for the PROXY protocol header parser (server/proxy.py).

Every accepted and refused form of v1 and v2, fed whole and split at every byte; each limit
(107-byte v1 line, v2 length bound, TLV framing); the early refusal of a client that speaks
SMTP at once; `allowed`; a hypothesis fuzz whose invariants are that only ProxyError escapes
and that the verdict does not depend on how the stream was cut; and, when HAProxy is
installed, the headers a real HAProxy sends with send-proxy and send-proxy-v2.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from albatross.server.proxy import (
    V2_MAX_LENGTH,
    ProxyError,
    ProxyHeaderParser,
    ProxyInfo,
    allowed,
)

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
SMTP = b"EHLO client.example\r\n"


def v2(command: int, family: int, body: bytes, *, version: int = 2) -> bytes:
    """A v2 header: signature, version/command, family/transport byte, length, body."""
    return SIG + bytes([version << 4 | command, family]) + struct.pack("!H", len(body)) + body


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.ip_address(src).packed
        + ipaddress.ip_address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def whole(data: bytes) -> tuple[ProxyInfo | None, bytes]:
    parser = ProxyHeaderParser()
    info = parser.feed(data)
    return info, parser.rest


def bytewise(data: bytes) -> tuple[ProxyInfo | None, bytes]:
    """Feed one byte at a time, and keep feeding after the result (rest must grow)."""
    parser = ProxyHeaderParser()
    info = None
    for index in range(len(data)):
        got = parser.feed(data[index : index + 1])
        if info is not None:
            assert got == info
        info = got
    return info, parser.rest if info is not None else b""


def result(data: bytes) -> tuple[ProxyInfo | None, bytes] | str:
    """What the parser makes of `data` whole; the error message if it refuses it."""
    try:
        return whole(data)
    except ProxyError as error:
        return f"error: {error}"


def split_everywhere(data: bytes) -> None:
    """Fed whole, byte by byte, and split in two at every point: one and the same verdict."""
    expected = result(data)
    try:
        got: tuple[ProxyInfo | None, bytes] | str = bytewise(data)
    except ProxyError as error:
        got = f"error: {error}"
    assert got == expected
    for cut in range(len(data) + 1):
        parser = ProxyHeaderParser()
        try:
            first = parser.feed(data[:cut])
            second = parser.feed(data[cut:])
            assert first is None or first == second
            outcome: tuple[ProxyInfo | None, bytes] | str = (
                second,
                parser.rest if second is not None else b"",
            )
        except ProxyError as error:
            outcome = f"error: {error}"
        assert outcome == expected, cut


# -- v1 ---------------------------------------------------------------------------------

V1_GOOD = [
    (
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n",
        ProxyInfo("192.0.2.1", 56324, "198.51.100.2", 25, version=1, local=False),
    ),
    (
        b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
        ProxyInfo("0.0.0.0", 0, "255.255.255.255", 65535, version=1, local=False),
    ),
    (
        b"PROXY TCP6 2001:DB8::1 2001:db8:0:0:0:0:0:2 1024 587\r\n",
        ProxyInfo("2001:db8::1", 1024, "2001:db8::2", 587, version=1, local=False),
    ),
    (
        b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 465\r\n",
        ProxyInfo("::ffff:c000:201", 1, "::1", 465, version=1, local=False),
    ),
    (
        # The longest real line: 104 bytes.
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
        ProxyInfo(
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            65535,
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            65535,
            version=1,
            local=False,
        ),
    ),
    (b"PROXY UNKNOWN\r\n", ProxyInfo(None, None, None, None, version=1, local=True)),
    (
        # PP §2.1: anything after UNKNOWN is ignored, even addresses that would not parse.
        b"PROXY UNKNOWN ffff::1 not-an-address 99999 x\r\n",
        ProxyInfo(None, None, None, None, version=1, local=True),
    ),
]


@pytest.mark.parametrize(("header", "expected"), V1_GOOD)
def test_v1_accepted_and_rest_kept(header: bytes, expected: ProxyInfo) -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(header + SMTP) == expected
    assert parser.rest == SMTP
    assert parser.info == expected
    split_everywhere(header + SMTP)


def test_v1_header_alone_needs_nothing_more() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY UNKNOWN\r") is None
    assert parser.feed(b"\n") is not None
    assert parser.rest == b""


def test_feed_after_the_header_appends_to_rest() -> None:
    parser = ProxyHeaderParser()
    info = parser.feed(b"PROXY UNKNOWN\r\nEH")
    assert parser.feed(b"LO x\r\n") == info
    assert parser.rest == b"EHLO x\r\n"


def test_v1_longest_allowed_line_is_107_bytes() -> None:
    line = b"PROXY UNKNOWN " + b"x" * (107 - 16) + b"\r\n"
    assert len(line) == 107
    assert whole(line)[0] == ProxyInfo(None, None, None, None, version=1, local=True)


def test_v1_108_byte_line_is_refused_at_the_cr() -> None:
    line = b"PROXY UNKNOWN " + b"x" * (108 - 16)
    parser = ProxyHeaderParser()
    assert parser.feed(line) is None  # 106 bytes, no CR yet
    with pytest.raises(ProxyError, match="longer than 107"):
        parser.feed(b"\r")


def test_v1_without_crlf_is_refused_at_107_bytes_not_later() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY UNKNOWN " + b"x" * 92) is None  # 106 bytes
    with pytest.raises(ProxyError, match="no CRLF within 107"):
        parser.feed(b"x")


V1_BAD = {
    "lowercase": (b"proxy TCP4 192.0.2.1 192.0.2.2 1 2\r\n", "no PROXY header"),
    "no space": (b"PROXYTCP4 192.0.2.1 192.0.2.2 1 2\r\n", "no PROXY header"),
    "empty protocol": (b"PROXY \r\n", "protocol"),
    "udp": (b"PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n", "protocol"),
    "unknownx": (b"PROXY UNKNOWNX\r\n", "protocol"),
    "double space": (b"PROXY  TCP4 192.0.2.1 192.0.2.2 1 2\r\n", "protocol"),
    "missing port": (b"PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n", "expected source"),
    "extra field": (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 3\r\n", "expected source"),
    "trailing space": (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 \r\n", "expected source"),
    "double space inside": (b"PROXY TCP4 192.0.2.1  192.0.2.2 1 2\r\n", "expected source"),
    "tab": (b"PROXY TCP4\t192.0.2.1 192.0.2.2 1 2\r\n", "invalid byte"),
    "v6 in tcp4": (b"PROXY TCP4 2001:db8::1 192.0.2.2 1 2\r\n", "source address"),
    "v4 in tcp6": (b"PROXY TCP6 ::1 192.0.2.2 1 2\r\n", "destination address"),
    "octet too big": (b"PROXY TCP4 192.0.2.256 192.0.2.2 1 2\r\n", "source address"),
    "leading zero octet": (b"PROXY TCP4 192.0.2.01 192.0.2.2 1 2\r\n", "source address"),
    "three octets": (b"PROXY TCP4 192.0.2 192.0.2.2 1 2\r\n", "source address"),
    "hostname": (b"PROXY TCP4 mx.example 192.0.2.2 1 2\r\n", "source address"),
    "ipv6 zone": (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "source address"),
    "ipv6 numeric zone": (b"PROXY TCP6 fe80::1%1 ::1 1 2\r\n", "source address"),
    "ipv6 brackets": (b"PROXY TCP6 [::1] ::1 1 2\r\n", "source address"),
    "ipv6 two gaps": (b"PROXY TCP6 1::2::3 ::1 1 2\r\n", "source address"),
    "port too big": (b"PROXY TCP4 192.0.2.1 192.0.2.2 65536 2\r\n", "source port"),
    "port huge": (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 999999\r\n", "destination port"),
    "port plus": (b"PROXY TCP4 192.0.2.1 192.0.2.2 +1 2\r\n", "source port"),
    "port minus": (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 -2\r\n", "destination port"),
    "port leading zero": (b"PROXY TCP4 192.0.2.1 192.0.2.2 025 2\r\n", "source port"),
    "port double zero": (b"PROXY TCP4 192.0.2.1 192.0.2.2 1 00\r\n", "destination port"),
    "port hex": (b"PROXY TCP4 192.0.2.1 192.0.2.2 0x19 2\r\n", "source port"),
    "port empty": (b"PROXY TCP4 192.0.2.1 192.0.2.2  2\r\n", "source port"),
    "port unicode digit": (
        "PROXY TCP4 192.0.2.1 192.0.2.2 \u0661 2\r\n".encode(),
        "invalid byte",
    ),
    "cr without lf": (b"PROXY UNKNOWN\rX", "CR not followed by LF"),
    "bare lf": (b"PROXY UNKNOWN\n", "invalid byte"),
    "nul": (b"PROXY UNKNOWN\x00\r\n", "invalid byte"),
    "8-bit": (b"PROXY UNKNOWN \xff\r\n", "invalid byte"),
    "escape sequence": (b"PROXY TCP4 \x1b[31m 192.0.2.2 1 2\r\n", "invalid byte"),
}


@pytest.mark.parametrize("name", sorted(V1_BAD))
def test_v1_refused(name: str) -> None:
    data, reason = V1_BAD[name]
    with pytest.raises(ProxyError, match=reason) as caught:
        whole(data + SMTP)
    # The message is ours: printable ASCII, and none of the peer's line in it.
    message = str(caught.value)
    assert message.isascii() and message.isprintable()
    assert "192.0.2" not in message and "\x1b" not in message
    split_everywhere(data + SMTP)


# -- refusing at once what cannot be a header ---------------------------------------------


@pytest.mark.parametrize(
    "first",
    [b"E", b"EHLO x\r\n", b"H", b"\x16\x03\x01", b"\x00", b"p", b"\r\n\r\n\x01", b"\n"],
)
def test_not_a_header_is_refused_on_the_first_bytes(first: bytes) -> None:
    with pytest.raises(ProxyError, match=r"^no PROXY header$"):
        ProxyHeaderParser().feed(first)


def test_v1_prefix_mismatch_refused_without_waiting() -> None:
    parser = ProxyHeaderParser()
    for byte in b"PROXY":
        assert parser.feed(bytes([byte])) is None
    with pytest.raises(ProxyError, match="no PROXY header"):
        parser.feed(b"T")  # "PROXY" without the space
    parser = ProxyHeaderParser()
    assert parser.feed(b"PRO") is None
    with pytest.raises(ProxyError, match="no PROXY header"):
        parser.feed(b"TO")


def test_v2_signature_mismatch_refused_without_waiting() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(SIG[:7]) is None
    with pytest.raises(ProxyError, match="no PROXY header"):
        parser.feed(b"q")  # lowercase QUIT


def test_empty_feed_waits() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"") is None
    assert parser.info is None


def test_an_error_is_sticky() -> None:
    parser = ProxyHeaderParser()
    with pytest.raises(ProxyError, match="no PROXY header"):
        parser.feed(b"EHLO")
    with pytest.raises(ProxyError, match="no PROXY header"):
        parser.feed(b"PROXY UNKNOWN\r\n")
    assert parser.info is None and parser.rest == b""


# -- v2 -----------------------------------------------------------------------------------

LOCAL = ProxyInfo(None, None, None, None, version=2, local=True)

V2_GOOD = {
    "tcp4": (
        v2(1, 0x11, inet("192.0.2.1", "198.51.100.2", 56324, 25)),
        ProxyInfo("192.0.2.1", 56324, "198.51.100.2", 25, version=2, local=False),
    ),
    "tcp6": (
        v2(1, 0x21, inet("2001:db8::1", "2001:db8::2", 1, 65535)),
        ProxyInfo("2001:db8::1", 1, "2001:db8::2", 65535, version=2, local=False),
    ),
    "tcp4 with tlvs": (
        v2(
            1,
            0x11,
            inet("192.0.2.1", "192.0.2.2", 0, 587)
            + tlv(0x01, b"smtp")  # ALPN
            + tlv(0x02, b"mx.example")  # authority
            + tlv(0x04, b""),  # NOOP, empty value
        ),
        ProxyInfo("192.0.2.1", 0, "192.0.2.2", 587, version=2, local=False),
    ),
    "tcp6 with tlvs up to the bound": (
        v2(1, 0x21, inet("::1", "::2", 7, 8) + tlv(0x04, b"\x00" * (V2_MAX_LENGTH - 36 - 3))),
        ProxyInfo("::1", 7, "::2", 8, version=2, local=False),
    ),
    "local": (v2(0, 0x00, b""), LOCAL),
    # PP §2.2: LOCAL's family and block are ignored, whatever they hold.
    "local with addresses": (v2(0, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2)), LOCAL),
    "local with short block": (v2(0, 0x21, b"\x01\x02"), LOCAL),
    "proxy unspec": (v2(1, 0x00, b""), LOCAL),
    "proxy inet unspec transport": (v2(1, 0x10, inet("192.0.2.1", "192.0.2.2", 1, 2)), LOCAL),
    "proxy udp4": (v2(1, 0x12, inet("192.0.2.1", "192.0.2.2", 1, 2)), LOCAL),
    "proxy udp6": (v2(1, 0x22, inet("::1", "::2", 1, 2)), LOCAL),
    "proxy unix stream": (
        v2(1, 0x31, b"/run/a".ljust(108, b"\0") + b"/b".ljust(108, b"\0")),
        LOCAL,
    ),
    "proxy unix dgram": (v2(1, 0x32, b"\0" * 216), LOCAL),
}


@pytest.mark.parametrize("name", sorted(V2_GOOD))
def test_v2_accepted_and_rest_kept(name: str) -> None:
    header, expected = V2_GOOD[name]
    parser = ProxyHeaderParser()
    assert parser.feed(header + SMTP) == expected
    assert parser.rest == SMTP
    split_everywhere(header + SMTP)


def test_v2_rest_may_start_with_anything() -> None:
    # The session after the header is opaque: even another signature is the client's.
    header = v2(1, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2))
    parser = ProxyHeaderParser()
    assert parser.feed(header + header) is not None
    assert parser.rest == header


def test_v2_waits_for_the_announced_length() -> None:
    header = v2(1, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2) + tlv(0x02, b"a"))
    parser = ProxyHeaderParser()
    assert parser.feed(header[:-1]) is None
    assert parser.feed(header[-1:]) is not None


V2_BAD = {
    "version 1": (v2(1, 0x11, b"", version=1), "unsupported version 1"),
    "version 3": (v2(1, 0x11, b"", version=3), "unsupported version 3"),
    "version 0": (v2(0, 0x00, b"", version=0), "unsupported version 0"),
    "command 2": (v2(2, 0x11, b""), "unknown command 2"),
    "command 15": (v2(15, 0x11, b""), "unknown command 15"),
    "family 4": (v2(1, 0x41, b""), "family/transport byte 0x41"),
    "transport 3": (v2(1, 0x13, b""), "family/transport byte 0x13"),
    "local family 4": (v2(0, 0xF0, b""), "family/transport byte 0xf0"),
    "inet too short": (v2(1, 0x11, b"\0" * 11), "too short for its addresses"),
    "inet6 too short": (v2(1, 0x21, b"\0" * 35), "too short for its addresses"),
    "inet6 with inet length": (v2(1, 0x21, b"\0" * 12), "too short for its addresses"),
    "over the bound": (v2(1, 0x11, b"\0" * (V2_MAX_LENGTH + 1)), "over the limit 1024"),
    "local over the bound": (v2(0, 0x00, b"\0" * (V2_MAX_LENGTH + 1)), "over the limit"),
    "tlv header cut": (
        v2(1, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2) + b"\x01\x00"),
        "truncated TLV",
    ),
    "tlv one byte": (v2(1, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2) + b"\x04"), "truncated TLV"),
    "tlv value past the end": (
        v2(1, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2) + b"\x02\x00\x05abcd"),
        "TLV longer than the header",
    ),
    "second tlv past the end": (
        v2(1, 0x21, inet("::1", "::2", 1, 2) + tlv(0x01, b"x") + b"\x02\xff\xff"),
        "TLV longer than the header",
    ),
}


@pytest.mark.parametrize("name", sorted(V2_BAD))
def test_v2_refused(name: str) -> None:
    data, reason = V2_BAD[name]
    with pytest.raises(ProxyError, match=reason):
        whole(data + SMTP)
    split_everywhere(data + SMTP)


def test_v2_bad_fixed_fields_refused_as_soon_as_they_arrive() -> None:
    parser = ProxyHeaderParser()
    with pytest.raises(ProxyError, match="version"):
        parser.feed(SIG + b"\x11")  # 13 bytes: the version byte is enough
    parser = ProxyHeaderParser()
    with pytest.raises(ProxyError, match="family"):
        parser.feed(SIG + b"\x21\x51")  # 14 bytes


def test_v2_length_over_the_bound_refused_before_the_body() -> None:
    # A peer announcing 64 KiB must not get us to wait for (or buffer) them.
    parser = ProxyHeaderParser()
    with pytest.raises(ProxyError, match="65535 over the limit"):
        parser.feed(SIG + b"\x21\x11\xff\xff")


def test_v2_short_address_block_refused_before_the_body() -> None:
    parser = ProxyHeaderParser()
    with pytest.raises(ProxyError, match="too short"):
        parser.feed(SIG + b"\x21\x21\x00\x0c")


def test_v2_bound_is_configurable() -> None:
    big = v2(1, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2) + tlv(0x04, b"\0" * 2000))
    assert ProxyHeaderParser(max_v2_length=4096).feed(big) is not None
    with pytest.raises(ProxyError, match="over the limit 1024"):
        ProxyHeaderParser().feed(big)
    with pytest.raises(ProxyError, match="over the limit 11"):
        ProxyHeaderParser(max_v2_length=11).feed(v2(1, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2)))
    with pytest.raises(ValueError):
        ProxyHeaderParser(max_v2_length=70000)


# -- allowed ------------------------------------------------------------------------------

PROXIES = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:1::/48")]


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("10.1.2.3", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("192.0.2.1", False),
        ("::ffff:10.1.2.3", True),  # an IPv4 peer on a dual-stack socket
        ("::ffff:11.0.0.1", False),
        ("2001:db8:1::5", True),
        ("2001:db8:2::5", False),
        ("::a01:203", False),  # 10.1.2.3's bits as IPv6, not a mapped address
        ("::", False),
        ("", False),
        ("not an address", False),
        ("/run/albatross.sock", False),
    ],
)
def test_allowed(peer: str, expected: bool) -> None:
    assert allowed(peer, PROXIES) is expected


def test_allowed_scoped_peer_and_empty_list() -> None:
    assert allowed("fe80::1%eth0", [ipaddress.ip_network("fe80::/10")])
    assert not allowed("10.1.2.3", [])
    # An IPv4 network is never matched against an IPv6 peer's bits, nor the reverse.
    assert not allowed("::1", [ipaddress.ip_network("0.0.0.0/0")])
    assert not allowed("10.0.0.1", [ipaddress.ip_network("::/0")])
    assert allowed("10.0.0.1", iter([ipaddress.ip_network("0.0.0.0/0")]))


# -- fuzz ---------------------------------------------------------------------------------

SEEDS = (
    [header for header, _ in V1_GOOD]
    + [header for header, _ in V2_GOOD.values()]
    + [data for data, _ in V1_BAD.values()]
    + [data for data, _ in V2_BAD.values()]
)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """A seed header, mutated: bytes flipped, inserted, deleted; then SMTP or noise after."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        byte = draw(st.sampled_from([0, 0x0A, 0x0D, 0x20, 0x2E, 0x30, 0x3A, 0xFF, 0x11, 0x21]))
        if action == "flip":
            data[position] = byte
        elif action == "insert":
            data.insert(position, byte)
        elif action == "delete":
            del data[position]
        else:
            del data[position:]
    tail = draw(st.one_of(st.just(SMTP), st.binary(max_size=40)))
    return bytes(data) + tail


def chunks_of(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    start = 0
    for point in points:
        yield data[start:point]
        start = point
    yield data[start:]


FUZZ = settings(max_examples=400, deadline=None, database=None)


@FUZZ
@given(
    data=st.one_of(
        streams(), st.binary(max_size=200), st.binary(max_size=60).map(lambda b: SIG + b)
    ),
    cuts=st.lists(st.integers(0, 250), max_size=8),
)
def test_fuzz_only_proxy_error_and_split_independent(data: bytes, cuts: list[int]) -> None:
    expected = result(data)  # anything but ProxyError propagates and fails the test
    parser = ProxyHeaderParser()
    got: tuple[ProxyInfo | None, bytes] | str
    try:
        info = None
        for chunk in chunks_of(data, cuts):
            info = parser.feed(chunk)
        got = (info, parser.rest if info is not None else b"")
    except ProxyError as error:
        got = f"error: {error}"
    assert got == expected
    if isinstance(expected, tuple) and expected[0] is not None:
        info, rest = expected
        assert info is not None and data.endswith(rest)
        if not info.local:
            assert info.source_ip is not None and info.dest_ip is not None
            ipaddress.ip_address(info.source_ip)
            ipaddress.ip_address(info.dest_ip)
            assert info.source_port is not None and 0 <= info.source_port <= 0xFFFF
            assert info.dest_port is not None and 0 <= info.dest_port <= 0xFFFF
        # A header is at most 107 (v1) or 16 + the bound (v2) bytes long.
        assert len(data) - len(rest) <= max(107, 16 + V2_MAX_LENGTH)


# -- a real HAProxy -----------------------------------------------------------------------

HAPROXY = shutil.which("haproxy")


def free_port(family: socket.AddressFamily, host: str) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")
@pytest.mark.parametrize(
    ("option", "family", "host"),
    [
        ("send-proxy", socket.AF_INET, "127.0.0.1"),
        ("send-proxy", socket.AF_INET6, "::1"),
        ("send-proxy-v2", socket.AF_INET, "127.0.0.1"),
        ("send-proxy-v2 proxy-v2-options crc32c,unique-id,authority", socket.AF_INET6, "::1"),
    ],
)
def test_headers_from_a_real_haproxy(
    tmp_path: Path, option: str, family: socket.AddressFamily, host: str
) -> None:
    assert HAPROXY is not None
    backend = socket.socket(family, socket.SOCK_STREAM)
    backend.bind((host, 0))
    backend.listen(1)
    backend.settimeout(10)
    backend_port = backend.getsockname()[1]
    front_port = free_port(family, host)
    literal = f"[{host}]" if family == socket.AF_INET6 else host
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "global\n"
        "  maxconn 10\n"
        "defaults\n"
        "  mode tcp\n"
        "  timeout connect 5s\n"
        "  timeout client 10s\n"
        "  timeout server 10s\n"
        "frontend mx\n"
        f"  bind {literal}:{front_port}\n"
        "  unique-id-format %{+X}o%ci:%cp\n"
        "  default_backend albatross\n"
        "backend albatross\n"
        f"  server a {literal}:{backend_port} {option}\n"
    )
    check = subprocess.run([HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    process = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        client = None
        for _ in range(100):
            try:
                client = socket.create_connection((host, front_port), timeout=5)
                break
            except OSError:
                time.sleep(0.05)
        assert client is not None, "haproxy did not start listening"
        with client:
            client.sendall(SMTP)
            client_port = client.getsockname()[1]
            connection, _ = backend.accept()
            with connection:
                connection.settimeout(10)
                parser = ProxyHeaderParser()
                info = None
                while info is None or len(parser.rest) < len(SMTP):
                    data = connection.recv(4096)
                    assert data, "haproxy closed before the header and the client's bytes"
                    info = parser.feed(data)
        expected_ip = str(ipaddress.ip_address(host))
        assert info == ProxyInfo(
            expected_ip,
            client_port,
            expected_ip,
            front_port,
            version=2 if "v2" in option else 1,
            local=False,
        )
        assert parser.rest == SMTP
    finally:
        process.terminate()
        process.wait(timeout=10)
        backend.close()
