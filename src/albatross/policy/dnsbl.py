"""The DNSBL check: at connect, ask DNS block lists whether the client's address is listed.

A list is asked for the client's address reversed under its zone (RFC 5782 §2.1: IPv4
octets, IPv6 nibbles), for an A record. An answer in 127.0.0.0/24 means listed (RFC 5782
§2.1.1); NXDOMAIN means not listed. Any other answer is not a listing: lists answer
127.255.255.x to say "you may not query me" (for example from a public resolver), and a
hijacked or wildcarded zone answers with public addresses; treating those as listings would
refuse every client. A list that cannot be reached is ignored for this connection and
logged: an outage of a third party must never turn into refused mail.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from albatross.dns import Resolver, Status
from albatross.policy.chain import Log
from albatross.policy.verdict import ClientInfo, Phase, Verdict, reject

LISTED = ipaddress.ip_network("127.0.0.0/24")
# The lists get this share of the check's timeout; one that has not answered by then is
# ignored like one that failed. Were the Policy's own timeout to fire instead, every client
# would get 451 at connect for as long as one list is slow: a third party's outage would stop
# all inbound mail.
LOOKUP_SHARE = 0.8
# RFC 5321 §4.5.3.1.5: a reply line holds at most 512 octets with its code and CRLF. The
# fixed text, an IPv6 literal and a 253-octet zone leave this much room for the reason.
MAX_REASON = 150


def query_prefix(ip: str) -> str | None:
    """The reversed address under which lists publish `ip` (None if it is no address).

    "192.0.2.1" -> "1.2.0.192"; an IPv6 address gives its 32 nibbles, least significant
    first; an IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 client) is
    asked as the IPv4 address it is.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    suffix = ".ip6.arpa" if address.version == 6 else ".in-addr.arpa"
    return address.reverse_pointer.removesuffix(suffix)


def printable(text: str, limit: int) -> str:
    """`text` fit for a reply line: printable ASCII only (a CR or LF from a list's TXT
    record must not inject reply lines), runs of spaces folded, at most `limit` long."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text)
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


class DnsblCheck:
    """Refuses a client listed by one of `zones` (554 5.7.1 naming the first such list, in
    the configured order), on the listed `roles` only and unless `skip(client)`."""

    name = "dnsbl"
    phase = Phase.CONNECT

    def __init__(self, resolver: Resolver, zones: Sequence[str], *, timeout: float,
                 skip: Callable[[ClientInfo], bool] = lambda client: False,
                 roles: Sequence[str] = ("mx",), log: Log | None = None) -> None:
        if not zones:
            raise ValueError("dnsbl needs at least one zone")
        self.resolver = resolver
        self.zones = tuple(zone.rstrip(".").lower() for zone in zones)
        self.timeout = timeout
        self.skip = skip
        self.roles = frozenset(roles)
        self._log = log
        self.detail = f"zones={','.join(self.zones)} roles={','.join(sorted(self.roles))}"

    async def run(self, client: ClientInfo, **fields: Any) -> Verdict | None:
        if client.role not in self.roles or self.skip(client):
            return None
        prefix = query_prefix(client.ip)
        if prefix is None:
            return None
        deadline = asyncio.get_running_loop().time() + self.timeout * LOOKUP_SHARE
        found = await asyncio.gather(*(self._ask_until(deadline, client, prefix, zone)
                                       for zone in self.zones))
        for zone, reason in zip(self.zones, found, strict=True):
            if reason is not None:
                text = f"Service unavailable; client [{client.ip}] listed by {zone}"
                if reason:
                    text += f"; {reason}"
                return reject(self.name, 554, "5.7.1", text)
        return None

    async def _ask_until(self, deadline: float, client: ClientInfo, prefix: str,
                         zone: str) -> str | None:
        try:
            async with asyncio.timeout_at(deadline):
                return await self._ask(client, prefix, zone)
        except TimeoutError:
            self._note(client, zone, "no answer from the list in time")
            return None

    async def _ask(self, client: ClientInfo, prefix: str, zone: str) -> str | None:
        """None when not listed (or unknown); the list's reason ("" if none) when listed."""
        name = f"{prefix}.{zone}"
        answer = await self.resolver.a(name)
        if answer.status is Status.TEMPFAIL:
            self._note(client, zone, f"no answer from the list: {answer.reason}")
            return None
        if not answer.ok:  # NXDOMAIN (not listed) or NODATA (listed for something else)
            return None
        codes = [ip for ip in answer.records if _in_listed(ip)]
        if not codes:
            self._note(client, zone, "answer outside 127.0.0.0/24 ignored: "
                       + ",".join(answer.records[:4]))
            return None
        reasons = await self.resolver.txt(name)
        if not reasons.ok or not reasons.records:
            return ""
        return printable(reasons.records[0], MAX_REASON)

    def _note(self, client: ClientInfo, zone: str, error: str) -> None:
        if self._log is not None:
            self._log("error", where="policy", check=self.name, client=client.ip,
                      zone=zone, error=error)


def _in_listed(text: str) -> bool:
    try:
        return ipaddress.ip_address(text) in LISTED
    except ValueError:
        return False
