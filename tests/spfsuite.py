"""The openspf RFC 7208 test suite (tests/data/rfc7208-tests.yml) as pytest parameters, and a
Resolver answering from each scenario's zone data.

Where the file comes from: the "RFC 7208 test suite" of the openspf project (release 2014.04
plus the 2019.08 additions), as shipped in pyspf 2.0.14's source distribution under test/
(`pip download --no-binary :all: pyspf==2.0.14`). Its licence (BSD-style, Stuart D Gathman,
Julian Mehnle, Scott Kitterman) is tests/data/rfc7208-tests.LICENSE.

Zone data semantics, as the suite's own drivers read them: "SPF" records are served as TXT
records for names that have no TXT record of their own ("TXT: NONE" only suppresses that);
a bare "TIMEOUT" entry makes every query for a type that has no record listed before it time
out; a record whose value is TIMEOUT times out queries for its type; names under "error."
time out. Names are checked like DnsResolver checks them (query_name, or domain_spec_name
when the lookup says `domain_spec=True`), CNAMEs are followed to any name, and MX and PTR
targets come back in DnsResolver's text (names.presentation).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from albatross.dns import MX, Answer, InvalidName, Status, query_name
from albatross.dns.answer import combine_addresses
from albatross.dns.names import domain_spec_name, presentation, to_dns_name

SUITE = Path(__file__).parent / "data" / "rfc7208-tests.yml"
TIMEOUT = "TIMEOUT"
MAX_CNAMES = 8


@dataclass(frozen=True)
class Scenario:
    name: str
    section: str
    helo: str
    host: str
    mailfrom: str
    results: tuple[str, ...]  # the acceptable results, preferred first
    explanation: str | None
    zone: Zone


class Zone:
    """The Resolver protocol answering from one section's zonedata."""

    def __init__(self, zonedata: dict[str, list[Any]]) -> None:
        self.entries: dict[str, list[Any]] = {}
        for name, records in zonedata.items():
            self.entries[name.lower().rstrip(".")] = _records(records)

    def _lookup(self, name: str, rtype: str, domain_spec: bool,
                depth: int = 0) -> Answer[Any]:
        try:
            qname = domain_spec_name(name) if domain_spec else query_name(name)
        except InvalidName as exc:
            return Answer(Status.NXDOMAIN, (), 0.0, str(exc))
        entries = self.entries.get(qname)
        if entries is None:
            if qname.startswith("error."):
                return Answer(Status.TEMPFAIL, (), 0.0, "timeout (error. name)")
            return Answer(Status.NXDOMAIN, (), 0.0, f"{qname} does not exist")
        found: list[Any] = []
        for entry in entries:
            if entry == TIMEOUT:
                if not found:
                    return Answer(Status.TEMPFAIL, (), 0.0, f"{qname}: timeout")
                break
            etype, value = entry
            if etype == "CNAME" and rtype != "CNAME":
                if depth >= MAX_CNAMES:
                    return Answer(Status.TEMPFAIL, (), 0.0, "CNAME loop")
                # the server follows a CNAME to whatever name it holds
                return self._lookup(value, rtype, True, depth + 1)
            if etype != rtype:
                continue
            if value == TIMEOUT:
                return Answer(Status.TEMPFAIL, (), 0.0, f"{qname} {rtype}: timeout")
            found.append(value)
        if found:
            return Answer(Status.OK, tuple(found), 300.0)
        return Answer(Status.NODATA, (), 300.0, f"{qname} has no {rtype}")

    async def txt(self, name: str, *, domain_spec: bool = False) -> Answer[str]:
        return self._lookup(name, "TXT", domain_spec)

    async def a(self, host: str, *, domain_spec: bool = False) -> Answer[str]:
        return self._lookup(host, "A", domain_spec)

    async def aaaa(self, host: str, *, domain_spec: bool = False) -> Answer[str]:
        answer = self._lookup(host, "AAAA", domain_spec)
        records = tuple(str(ipaddress.IPv6Address(r)) for r in answer.records)
        return Answer(answer.status, records, answer.ttl, answer.reason)

    async def addresses(self, host: str, *, domain_spec: bool = False) -> Answer[str]:
        return combine_addresses(await self.aaaa(host, domain_spec=domain_spec),
                                 await self.a(host, domain_spec=domain_spec))

    async def mx(self, domain: str, *, domain_spec: bool = False) -> Answer[MX]:
        answer = self._lookup(domain, "MX", domain_spec)
        records = [MX(int(pref), _target(host)) for pref, host in answer.records]
        return Answer(answer.status, tuple(sorted(records, key=lambda m: (m.preference, m.host))),
                      answer.ttl, answer.reason)

    async def ptr(self, ip: str) -> Answer[str]:
        name = ipaddress.ip_address(ip).reverse_pointer
        answer = self._lookup(name, "PTR", False)
        return Answer(answer.status, tuple(_target(r) for r in answer.records),
                      answer.ttl, answer.reason)

    async def tlsa(self, name: str) -> Answer[Any]:
        return Answer(Status.NODATA, (), 0.0)


def _target(host: str) -> str:
    """An MX or PTR target of the zone data as DnsResolver would return it."""
    if host in ("", "."):
        return ""  # the root: a null MX
    return presentation(to_dns_name(domain_spec_name(host)))


def _records(records: list[Any]) -> list[Any]:
    """The suite's record list as ("TYPE", value) pairs and "TIMEOUT" markers; SPF records
    become TXT records when the name has no TXT (or "TXT: NONE") entry."""
    out: list[Any] = []
    spf: list[Any] = []
    has_txt = False
    for item in records:
        if item == TIMEOUT:
            out.append(TIMEOUT)
            continue
        ((rtype, value),) = item.items()
        if rtype in ("TXT", "SPF"):
            if value == TIMEOUT:
                text: Any = TIMEOUT
            else:
                text = "".join(value) if isinstance(value, list) else str(value)
            if rtype == "TXT":
                has_txt = True
                if value != "NONE":
                    out.append(("TXT", text))
            else:
                spf.append(("TXT", text))
            continue
        out.append((rtype, value))
    if not has_txt:
        # The drivers append generated TXT copies after the other records.
        out.extend(spf)
    return out


def load() -> list[Scenario]:
    scenarios = []
    with SUITE.open("rb") as fp:
        for section in yaml.safe_load_all(fp):
            zone = Zone(section.get("zonedata") or {})
            for name, test in section["tests"].items():
                result = test["result"]
                results = tuple(result) if isinstance(result, list) else (result,)
                scenarios.append(Scenario(name, section["description"], str(test["helo"]),
                                          str(test["host"]), str(test["mailfrom"]), results,
                                          test.get("explanation"), zone))
    return scenarios
