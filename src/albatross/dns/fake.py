"""FakeResolver: a Resolver answering from records and failures set by hand, for tests."""

from __future__ import annotations

from typing import Any

from albatross.dns.answer import MX, Answer, Status, TlsaRecord, combine_addresses
from albatross.dns.names import (
    InvalidName,
    domain_spec_name,
    presentation,
    query_name,
    reverse_name,
    to_dns_name,
)

RTYPES = ("MX", "A", "AAAA", "TXT", "PTR", "TLSA")


class FakeResolver:
    """Answers like DnsResolver would from a zone built with the add_* methods.

    A (name, type) with records answers OK; a name that has records of other types (or a
    status set for some type) answers NODATA; any other name NXDOMAIN. `set_status` forces a
    status for one (name, type), for example TEMPFAIL. Names are normalised as DnsResolver
    normalises them (IDNA, case, trailing dot); PTR records are keyed by the IP address.
    Records may be put at any name a zone could hold (names.domain_spec_name rules), and
    asked about as DnsResolver would: a name query_name refuses is NXDOMAIN without a
    question unless the lookup passes `domain_spec=True`. MX and PTR targets come back in
    the text DnsResolver gives them (names.presentation). Every question asked is appended
    to `queries` as (name, type).
    """

    def __init__(self, ttl: float = 300.0) -> None:
        self.ttl = ttl
        self.queries: list[tuple[str, str]] = []
        self._records: dict[tuple[str, str], list[Any]] = {}
        self._status: dict[tuple[str, str], Status] = {}

    # --- building the zone -------------------------------------------------------------

    def add_mx(self, domain: str, preference: int, host: str) -> None:
        """`host` "" or "." makes a null MX (RFC 7505)."""
        target = "" if host in ("", ".") else _target(host)
        self._add(domain, "MX", MX(preference, target))

    def add_a(self, host: str, ip: str) -> None:
        self._add(host, "A", ip)

    def add_aaaa(self, host: str, ip: str) -> None:
        self._add(host, "AAAA", ip)

    def add_txt(self, name: str, text: str) -> None:
        self._add(name, "TXT", text)

    def add_ptr(self, ip: str, host: str) -> None:
        self._records.setdefault((reverse_name(ip), "PTR"), []).append(_target(host))

    def add_tlsa(self, name: str, record: TlsaRecord) -> None:
        self._add(name, "TLSA", record)

    def set_status(self, name: str, rtype: str, status: Status) -> None:
        """Force `status` for (name, rtype); for PTR, `name` is the IP address.

        Status.OK removes a forced status, so the records added answer again."""
        rtype = rtype.upper()
        if rtype not in RTYPES:
            raise ValueError(f"unknown record type {rtype!r}")
        key = reverse_name(name) if rtype == "PTR" else domain_spec_name(name)
        if status is Status.OK:
            self._status.pop((key, rtype), None)
        else:
            self._status[(key, rtype)] = status

    def _add(self, name: str, rtype: str, record: Any) -> None:
        self._records.setdefault((domain_spec_name(name), rtype), []).append(record)

    # --- the Resolver protocol ---------------------------------------------------------

    async def mx(self, domain: str, *, domain_spec: bool = False) -> Answer[MX]:
        answer: Answer[MX] = self._answer(domain, "MX", domain_spec)
        ordered = tuple(sorted(answer.records, key=lambda m: (m.preference, m.host)))
        return Answer(answer.status, ordered, answer.ttl, answer.reason)

    async def addresses(self, host: str, *, domain_spec: bool = False) -> Answer[str]:
        return combine_addresses(await self.aaaa(host, domain_spec=domain_spec),
                                 await self.a(host, domain_spec=domain_spec))

    async def a(self, host: str, *, domain_spec: bool = False) -> Answer[str]:
        return self._answer(host, "A", domain_spec)

    async def aaaa(self, host: str, *, domain_spec: bool = False) -> Answer[str]:
        return self._answer(host, "AAAA", domain_spec)

    async def txt(self, name: str, *, domain_spec: bool = False) -> Answer[str]:
        return self._answer(name, "TXT", domain_spec)

    async def ptr(self, ip: str) -> Answer[str]:
        try:
            name = reverse_name(ip)
        except InvalidName as exc:
            return Answer(Status.NXDOMAIN, (), 0.0, str(exc))
        return self._lookup(name, "PTR")

    async def tlsa(self, name: str) -> Answer[TlsaRecord]:
        return self._answer(name, "TLSA")

    def _answer(self, name: str, rtype: str, domain_spec: bool = False) -> Answer[Any]:
        try:
            qname = domain_spec_name(name) if domain_spec else query_name(name)
        except InvalidName as exc:
            return Answer(Status.NXDOMAIN, (), 0.0, str(exc))
        return self._lookup(qname, rtype)

    def _lookup(self, qname: str, rtype: str) -> Answer[Any]:
        self.queries.append((qname, rtype))
        forced = self._status.get((qname, rtype))
        records = self._records.get((qname, rtype))
        if forced is not None:
            return Answer(forced, (), self.ttl, f"{forced.name} set by the test for {qname}")
        if records:
            return Answer(Status.OK, tuple(records), self.ttl)
        exists = any(name == qname for name, _ in (*self._records, *self._status))
        if exists:
            return Answer(Status.NODATA, (), self.ttl, f"{qname} has no {rtype} record")
        return Answer(Status.NXDOMAIN, (), self.ttl, f"{qname} does not exist (NXDOMAIN)")


def _target(host: str) -> str:
    """An MX or PTR target as DnsResolver returns it from a zone holding `host`."""
    return presentation(to_dns_name(domain_spec_name(host)))
