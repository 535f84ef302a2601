"""The values a lookup returns (Status, MX, Answer) and the Resolver protocol they travel by."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")

# Bound on the records kept from one answer: a hostile or broken zone can publish thousands
# of MX or TXT records, and every caller loops over them ("every parser bounds what it
# reads", ARCHITECTURE.md). The wire size is already bounded by dnspython (64 KiB over TCP).
MAX_RECORDS = 100

# (certificate usage, selector, matching type, certificate association data), RFC 6698 §2.1
TlsaRecord = tuple[int, int, int, bytes]


class Status(enum.Enum):
    """What a lookup found out about a (name, type).

    NXDOMAIN: the name does not exist (RFC 8020: nor anything under it).
    NODATA: the name exists but holds no record of the type asked (RFC 2308 §2.2).
    TEMPFAIL: no answer could be had (SERVFAIL, REFUSED, timeout, network error); try later.
    """

    OK = "ok"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True, slots=True)
class MX:
    """One MX record. `host` is lower-case A-label text without the trailing dot.

    A null MX (RFC 7505, "0 .") has host "": the domain accepts no mail at all.
    """

    preference: int
    host: str

    @property
    def is_null(self) -> bool:
        return self.host == ""


@dataclass(frozen=True, slots=True)
class Answer(Generic[T]):
    """The result of one lookup. `records` is empty unless `status` is OK.

    `ttl` is how many more seconds the answer may be trusted (for a cached answer, what is
    left of its lifetime); `reason` is human text for logs ("" for a plain success).
    """

    status: Status
    records: tuple[T, ...]
    ttl: float
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


class Resolver(Protocol):
    """The DNS questions Albatross asks. No method raises for a DNS failure.

    Names are host names, checked by names.query_name: a name it refuses is answered
    NXDOMAIN without a query. `domain_spec=True` checks the name by names.domain_spec_name
    instead, which also allows ":", "/", "%", spaces and other visible characters in a
    label; it is for the names SPF records and macros produce (RFC 7208 §7.1) and for
    nothing else.
    """

    async def mx(self, domain: str, *, domain_spec: bool = False) -> Answer[MX]:
        """MX records sorted by preference (then host); shuffling equal ones is the caller's."""
        ...

    async def addresses(self, host: str, *, domain_spec: bool = False) -> Answer[str]:
        """AAAA then A records of `host`, as IPv6 and IPv4 text."""
        ...

    async def a(self, host: str, *, domain_spec: bool = False) -> Answer[str]: ...

    async def aaaa(self, host: str, *, domain_spec: bool = False) -> Answer[str]: ...

    async def txt(self, name: str, *, domain_spec: bool = False) -> Answer[str]:
        """Each TXT record's strings joined into one text (RFC 7208 §3.3)."""
        ...

    async def ptr(self, ip: str) -> Answer[str]: ...

    async def tlsa(self, name: str) -> Answer[TlsaRecord]: ...


def combine_addresses(v6: Answer[str], v4: Answer[str]) -> Answer[str]:
    """One answer for "the addresses of a host" from its AAAA and A answers.

    Any records win: a host whose AAAA lookup fails but whose A lookup succeeds is reachable
    over IPv4 now, and the failure is kept in `reason`. Without records, NXDOMAIN (the name
    does not exist, whatever the type) beats TEMPFAIL, which beats NODATA: a temporary
    failure of one type must not be mistaken for "this host has no address".
    """
    parts = (v6, v4)
    ttl = min(v6.ttl, v4.ttl)
    notes = "; ".join(f"{kind}: {p.reason}" for kind, p in zip(("AAAA", "A"), parts, strict=True)
                      if p.reason)
    if any(p.status is Status.OK for p in parts):
        records = tuple(r for p in parts if p.status is Status.OK for r in p.records)
        ttl = min(p.ttl for p in parts if p.status is Status.OK)
        return Answer(Status.OK, records[: 2 * MAX_RECORDS], ttl, notes)
    for status in (Status.NXDOMAIN, Status.TEMPFAIL, Status.NODATA):
        if any(p.status is status for p in parts):
            return Answer(status, (), ttl, notes)
    raise AssertionError("unreachable: every Status is handled above")
