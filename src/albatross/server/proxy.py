"""PROXY protocol headers (v1 text, v2 binary): a sans-IO parser for connections from a proxy.

A load balancer such as HAProxy prepends one header to each TCP connection it forwards,
naming the client it accepted the connection from; the SMTP session starts right after it.
The format is HAProxy's "The PROXY protocol, versions 1 & 2" (proxy-protocol.txt, referred
to below as PP with its section numbers). This module knows nothing of sockets: bytes go in
through `ProxyHeaderParser.feed`, a `ProxyInfo` comes out, and the bytes that followed the
header are left in `rest` for the SMTP machine.

Whether a peer may send a header at all is `allowed`: a header from anyone else is a client
forging its own address (PP §2: the receiver is configured for the protocol and must not
guess whether a header is present; an untrusted peer's header is never believed).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["V2_MAX_LENGTH", "ProxyError", "ProxyHeaderParser", "ProxyInfo", "allowed"]

# PP §2.1: a receiver need read at most 107 bytes for the whole v1 line, CRLF included; the
# longest legitimate line (TCP6, two full-length addresses, two 5-digit ports) is 104.
V1_PREFIX = b"PROXY "
V1_MAX = 107

# PP §2.2: the 12-byte v2 signature, chosen so that it cannot start any text protocol
# (it holds a NUL and starts with an empty line), then version/command, family/transport
# and a 16-bit big-endian length of what follows.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16
# The 16-bit length field would let a peer make us buffer 64 KiB before we see anything
# useful; real headers (addresses plus a few TLVs such as ALPN, authority, an AWS VPC
# endpoint id or SSL details) stay well below 1 KiB.
V2_MAX_LENGTH = 1024

_V2_LOCAL, _V2_PROXY = 0x0, 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_STREAM = 0x1
_DGRAM = 0x2
# PP §2.2: the address block for TCP over IPv4 is 4+4+2+2 bytes, over IPv6 16+16+2+2.
_V2_ADDRESS_LENGTH = {_AF_INET: 12, _AF_INET6: 36}

# PP §2.1: ports are decimal numbers in 0..65535; a leading zero or sign would let two
# spellings name one port, so only the canonical form is accepted.
_V1_PORT = re.compile(r"0|[1-9][0-9]{0,4}")
# Only the characters an address can hold: ipaddress alone would also take an IPv6 zone
# ("fe80::1%eth0"), which names an interface of the proxy, not anything of the client.
_V1_IPV4_CHARS = re.compile(r"[0-9.]{7,15}")
_V1_IPV6_CHARS = re.compile(r"[0-9A-Fa-f:.]{2,45}")


class ProxyError(ValueError):
    """The bytes are not a valid PROXY header; the connection is to be closed unanswered.

    Messages describe the fault in our words and never quote the peer's bytes, so they
    can go to a log line as they are.
    """


@dataclass(frozen=True)
class ProxyInfo:
    """What a PROXY header said about the connection.

    `local` is true for v1 UNKNOWN, v2 LOCAL, and v2 PROXY over a family or transport we do
    not take addresses from (UNSPEC, UNIX, DGRAM): the addresses are then None and the
    driver keeps the real socket endpoints (PP §2.1 and §2.2 allow the receiver to).
    """

    source_ip: str | None
    source_port: int | None
    dest_ip: str | None
    dest_port: int | None
    version: int
    local: bool


def _local(version: int) -> ProxyInfo:
    return ProxyInfo(None, None, None, None, version=version, local=True)


class ProxyHeaderParser:
    """Accumulate bytes until one PROXY header (v1 or v2) is complete, then parse it.

    `feed` returns None while more bytes are needed, the `ProxyInfo` once the header is
    complete (and again on every later call), and raises `ProxyError` as soon as the bytes
    seen so far cannot start a valid header: a client that speaks SMTP at once is refused
    on its first byte, not after 107. The verdict depends only on the bytes, never on how
    TCP split them. Once a header is parsed, `rest` holds every byte fed after it.
    After an error every later `feed` raises the same error.
    """

    def __init__(self, *, max_v2_length: int = V2_MAX_LENGTH) -> None:
        if not 0 <= max_v2_length <= 0xFFFF:
            raise ValueError("max_v2_length must be within 0..65535")
        self._max_v2_length = max_v2_length
        self._buffer = bytearray()
        self._info: ProxyInfo | None = None
        self._error: str | None = None
        self.rest = b""

    @property
    def info(self) -> ProxyInfo | None:
        """The parsed header, or None while it is incomplete."""
        return self._info

    def feed(self, data: bytes) -> ProxyInfo | None:
        if self._info is not None:
            self.rest += data
            return self._info
        if self._error is not None:
            raise ProxyError(self._error)
        self._buffer += data
        try:
            parsed = self._parse()
        except ProxyError as error:
            self._error = str(error)
            self._buffer.clear()
            raise
        if parsed is None:
            return None
        info, used = parsed
        self.rest = bytes(self._buffer[used:])
        self._buffer.clear()
        self._info = info
        return info

    def _parse(self) -> tuple[ProxyInfo, int] | None:
        buffer = self._buffer
        if not buffer:
            return None
        if buffer[0] == V1_PREFIX[0]:
            return _parse_v1(buffer)
        if buffer[0] == V2_SIGNATURE[0]:
            return self._parse_v2(buffer)
        raise ProxyError("no PROXY header")

    def _parse_v2(self, buffer: bytearray) -> tuple[ProxyInfo, int] | None:
        seen = min(len(buffer), len(V2_SIGNATURE))
        if buffer[:seen] != V2_SIGNATURE[:seen]:
            raise ProxyError("no PROXY header")
        # Each fixed field is checked as soon as it arrives, so a bad one fails now rather
        # than after the peer has had us wait for a length it announced.
        if len(buffer) < 13:
            return None
        version, command = buffer[12] >> 4, buffer[12] & 0x0F
        if version != 2:
            raise ProxyError(f"v2: unsupported version {version}")
        if command not in (_V2_LOCAL, _V2_PROXY):
            raise ProxyError(f"v2: unknown command {command}")
        if len(buffer) < 14:
            return None
        family, transport = buffer[13] >> 4, buffer[13] & 0x0F
        # PP §2.2: values other than the listed ones "must be rejected as invalid".
        if family > _AF_UNIX or transport > _DGRAM:
            raise ProxyError(f"v2: invalid address family/transport byte 0x{buffer[13]:02x}")
        if len(buffer) < V2_FIXED:
            return None
        length = int.from_bytes(buffer[14:16], "big")
        if length > self._max_v2_length:
            raise ProxyError(f"v2: header length {length} over the limit {self._max_v2_length}")
        takes_addresses = (
            command == _V2_PROXY and transport == _STREAM and family in _V2_ADDRESS_LENGTH
        )
        if takes_addresses and length < _V2_ADDRESS_LENGTH[family]:
            raise ProxyError(f"v2: header length {length} too short for its addresses")
        end = V2_FIXED + length
        if len(buffer) < end:
            return None
        if not takes_addresses:
            # PP §2.2: LOCAL means "use the real connection endpoints" and its family is
            # ignored; for UNSPEC, UNIX or DGRAM the receiver may ignore the addresses. The
            # block is skipped whole, TLVs included, since nothing in it is used.
            return _local(2), end
        block = bytes(buffer[V2_FIXED:end])
        if family == _AF_INET:
            source: str = str(ipaddress.IPv4Address(block[0:4]))
            dest: str = str(ipaddress.IPv4Address(block[4:8]))
            ports = block[8:12]
        else:
            source = str(ipaddress.IPv6Address(block[0:16]))
            dest = str(ipaddress.IPv6Address(block[16:32]))
            ports = block[32:36]
        _check_tlvs(block[_V2_ADDRESS_LENGTH[family] :])
        info = ProxyInfo(
            source_ip=source,
            source_port=int.from_bytes(ports[0:2], "big"),
            dest_ip=dest,
            dest_port=int.from_bytes(ports[2:4], "big"),
            version=2,
            local=False,
        )
        return info, end


def _check_tlvs(tlvs: bytes) -> None:
    """Walk the TLVs after the addresses (PP §2.2, TLVs) and insist that they tile the block.

    None is used yet; a TLV that runs past the announced length means the sender and we
    disagree on where the header ends, and guessing would hand header bytes to SMTP.
    """
    position = 0
    while position < len(tlvs):
        if len(tlvs) - position < 3:
            raise ProxyError("v2: truncated TLV header")
        value_length = int.from_bytes(tlvs[position + 1 : position + 3], "big")
        position += 3 + value_length
        if position > len(tlvs):
            raise ProxyError("v2: TLV longer than the header")


def _parse_v1(buffer: bytearray) -> tuple[ProxyInfo, int] | None:
    seen = min(len(buffer), len(V1_PREFIX))
    if buffer[:seen] != V1_PREFIX[:seen]:
        raise ProxyError("no PROXY header")
    for index in range(min(len(buffer), V1_MAX)):
        byte = buffer[index]
        if byte == 0x0D:
            if index + 2 > V1_MAX:
                raise ProxyError(f"v1: line longer than {V1_MAX} bytes")
            if index + 1 == len(buffer):
                return None
            if buffer[index + 1] != 0x0A:
                raise ProxyError("v1: CR not followed by LF")
            line = bytes(buffer[:index]).decode("ascii")
            return _v1_line(line), index + 2
        # Printable ASCII only: a bare LF, NUL or 8-bit byte cannot be in a v1 line, and
        # refusing it at once keeps the line safe to log.
        if not 0x20 <= byte <= 0x7E:
            raise ProxyError("v1: invalid byte in line")
    if len(buffer) >= V1_MAX:
        raise ProxyError(f"v1: no CRLF within {V1_MAX} bytes")
    return None


def _v1_line(line: str) -> ProxyInfo:
    """Parse "PROXY <proto> <src> <dst> <sport> <dport>" (PP §2.1), single spaces only."""
    fields = line.split(" ")
    protocol = fields[1]
    if protocol == "UNKNOWN":
        # PP §2.1: after UNKNOWN "the receiver must ignore anything presented before the
        # CRLF"; the connection is taken as coming from the proxy itself.
        return _local(1)
    if protocol not in ("TCP4", "TCP6"):
        raise ProxyError("v1: protocol is not TCP4, TCP6 or UNKNOWN")
    if len(fields) != 6:
        raise ProxyError("v1: expected source and destination addresses and ports")
    return ProxyInfo(
        source_ip=_v1_address(fields[2], protocol, "source"),
        source_port=_v1_port(fields[4], "source"),
        dest_ip=_v1_address(fields[3], protocol, "destination"),
        dest_port=_v1_port(fields[5], "destination"),
        version=1,
        local=False,
    )


def _v1_address(text: str, protocol: str, which: str) -> str:
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    try:
        if protocol == "TCP4":
            if not _V1_IPV4_CHARS.fullmatch(text):
                raise ValueError(text)
            # Since Python 3.9.5 this refuses leading zeros ("010.0.0.1"), which some
            # parsers read as octal: one spelling per address (CVE-2021-29921).
            address = ipaddress.IPv4Address(text)
        else:
            if not _V1_IPV6_CHARS.fullmatch(text):
                raise ValueError(text)
            address = ipaddress.IPv6Address(text)
    except ValueError:
        raise ProxyError(f"v1: invalid {which} address for {protocol}") from None
    return str(address)


def _v1_port(text: str, which: str) -> int:
    if not _V1_PORT.fullmatch(text) or int(text) > 0xFFFF:
        raise ProxyError(f"v1: invalid {which} port")
    return int(text)


def allowed(
    peer_ip: str, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    """Whether `peer_ip`, the socket's real peer, is a proxy trusted to send a header.

    An IPv4 peer seen on a dual-stack socket as ::ffff:a.b.c.d matches the IPv4 networks
    too. A peer that is not an IP address (a UNIX socket, garbage) is never trusted.
    """
    try:
        address = ipaddress.ip_address(peer_ip)
    except ValueError:
        return False
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    # Compare versions first: ipaddress answers False across versions today, but saying so
    # here keeps an IPv4 peer from ever being tested against an IPv6 mask.
    return any(
        candidate.version == network.version and candidate in network
        for network in networks
        for candidate in candidates
    )
