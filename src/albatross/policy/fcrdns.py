"""The fcrdns check: the client's forward-confirmed reverse DNS name, recorded at connect.

Anyone who controls the reverse zone of an address can make its PTR record say
"mail.bank.example"; only a name whose own A/AAAA records lead back to the address means
something (forward-confirmed reverse DNS). The confirmed name, or "unknown", goes into
client.ptr for the Received header and the mail log. It is not enforced unless asked
(`require_fcrdns`), and then only with a temporary 450 4.7.25 (RFC 7372 §3): a missing PTR
is common for small legitimate servers and DNS trouble is often temporary.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from albatross.dns import InvalidName, Resolver, Status, query_name
from albatross.policy.chain import Log
from albatross.policy.verdict import ClientInfo, Phase, Verdict, tempfail

UNKNOWN = "unknown"
# An address may have several PTR names; each costs a forward lookup, so a hostile reverse
# zone publishing hundreds of them must not make us ask hundreds of questions.
MAX_NAMES = 5
# The lookups get this share of the check's timeout, so that slow DNS makes the client
# "unknown" rather than letting the Policy's timeout answer 451 to every client.
LOOKUP_SHARE = 0.8


class FcrdnsCheck:
    """Sets client.ptr; refuses (450 4.7.25) unconfirmed clients on `require_roles` only,
    and never those `skip` exempts."""

    name = "fcrdns"
    phase = Phase.CONNECT

    def __init__(self, resolver: Resolver, *, timeout: float,
                 require_roles: Sequence[str] = (),
                 skip: Callable[[ClientInfo], bool] = lambda client: False,
                 log: Log | None = None) -> None:
        self.resolver = resolver
        self.timeout = timeout
        self.require_roles = frozenset(require_roles)
        self.skip = skip
        self._log = log
        required = ",".join(sorted(self.require_roles)) or "none"
        self.detail = f"required_on={required}"

    async def run(self, client: ClientInfo, **fields: Any) -> Verdict | None:
        # Until confirmed the client is "unknown", even if this check is cut short.
        client.ptr = UNKNOWN
        try:
            async with asyncio.timeout(self.timeout * LOOKUP_SHARE):
                name = await self.confirmed_name(client)
        except TimeoutError:
            self._note(client, "reverse DNS lookups did not finish in time")
            name = None
        client.ptr = name or UNKNOWN
        if name is None and client.role in self.require_roles and not self.skip(client):
            return tempfail(self.name, 450, "4.7.25",
                            f"Client host rejected: cannot find your hostname, [{client.ip}]")
        return None

    async def confirmed_name(self, client: ClientInfo) -> str | None:
        """The first PTR name of the client's address whose addresses include it."""
        try:
            address = ipaddress.ip_address(client.ip)
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address in _THIS_HOST:
            # Every host calls these "localhost" (/etc/hosts); asking DNS would only make
            # local submissions wait for a resolver that may not know the reverse zone.
            return "localhost"
        answer = await self.resolver.ptr(str(address))
        if answer.status is Status.TEMPFAIL:
            self._note(client, f"PTR lookup failed: {answer.reason}")
        if not answer.ok:
            return None
        names = []
        for record in answer.records[:MAX_NAMES]:
            try:
                names.append(query_name(record))
            except InvalidName:
                continue  # not a host name (escaped bytes, spaces): never shown to anyone
        forward = await asyncio.gather(*(self.resolver.addresses(name) for name in names))
        for name, addresses in zip(names, forward, strict=True):
            if addresses.ok and any(_same(address, text) for text in addresses.records):
                return name
        return None

    def _note(self, client: ClientInfo, error: str) -> None:
        if self._log is not None:
            self._log("error", where="policy", check=self.name, client=client.ip, error=error)


_THIS_HOST = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


def _same(address: ipaddress.IPv4Address | ipaddress.IPv6Address, text: str) -> bool:
    try:
        return ipaddress.ip_address(text) == address
    except ValueError:
        return False
