"""DnsResolver: the Resolver that asks real DNS servers, through dnspython, with a TTL cache.

Every failure of the DNS becomes a Status, never an exception: NXDOMAIN and NODATA are
answers (and are cached per RFC 2308), while SERVFAIL, REFUSED, timeouts, malformed
responses and network errors are TEMPFAIL. Identical lookups that overlap in time share one
query, so a burst of messages for one domain costs one round trip.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import dns.asyncresolver
import dns.exception
import dns.message
import dns.nameserver
import dns.rdata
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.MX import MX as MXRdata
from dns.rdtypes.ANY.PTR import PTR as PTRRdata
from dns.rdtypes.ANY.SOA import SOA as SOARdata
from dns.rdtypes.ANY.TLSA import TLSA as TLSARdata
from dns.rdtypes.ANY.TXT import TXT as TXTRdata
from dns.rdtypes.IN.A import A as ARdata
from dns.rdtypes.IN.AAAA import AAAA as AAAARdata

from albatross.dns.answer import MAX_RECORDS, MX, Answer, Status, TlsaRecord, combine_addresses
from albatross.dns.cache import AnswerCache, Key, lifetime
from albatross.dns.names import (
    InvalidName,
    domain_spec_name,
    presentation,
    query_name,
    reverse_name,
    to_dns_name,
)
from albatross.errors import ConfigError

T = TypeVar("T")

# Advertised EDNS(0) UDP payload: the DNS Flag Day 2020 value, small enough to avoid IP
# fragmentation (a spoofing vector), large enough that most MX/TXT answers skip TCP.
EDNS_PAYLOAD = 1232
MAX_REASON = 300  # characters of human text kept for the logs


def parse_server(text: str) -> tuple[str, int]:
    """A nameserver given as "127.0.0.1:5353", "[::1]:53", "127.0.0.1" or "::1" (port 53).

    Only IP addresses: finding a nameserver by name would need a nameserver. Raises
    ValueError with a message fit for a configuration error.
    """
    spec = text.strip()
    port_text = ""
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} must be ADDRESS, ADDRESS:PORT or [IPV6]:PORT")
        port_text = rest[1:] if rest else "53"
        if rest == ":":
            raise ValueError(f"{text!r} has an empty port")
    elif spec.count(":") == 1:
        host, _, port_text = spec.partition(":")
    else:  # an IPv4 address, or a bare IPv6 address (several colons, no port)
        host, port_text = spec, "53"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"nameserver {host!r} is not an IP address") from None
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
    return str(address), int(port_text)


def _clean(text: str) -> str:
    """`text` safe for one log line: control characters become "?" and it is bounded."""
    out = "".join(c if c.isprintable() else "?" for c in text)
    return out if len(out) <= MAX_REASON else out[: MAX_REASON - 3] + "..."


def _mx(rdata: dns.rdata.Rdata) -> MX | None:
    if not isinstance(rdata, MXRdata):
        return None
    return MX(rdata.preference, presentation(rdata.exchange))


def _address(rdata: dns.rdata.Rdata) -> str | None:
    return str(rdata.address) if isinstance(rdata, ARdata | AAAARdata) else None


def _txt(rdata: dns.rdata.Rdata) -> str | None:
    # SPF, DKIM and DMARC records are ASCII; invalid UTF-8 cannot be a valid record of any
    # of them, so replacing it loses nothing a caller could use.
    if not isinstance(rdata, TXTRdata):
        return None
    return b"".join(rdata.strings).decode("utf-8", "replace")


def _ptr(rdata: dns.rdata.Rdata) -> str | None:
    return presentation(rdata.target) if isinstance(rdata, PTRRdata) else None


def _tlsa(rdata: dns.rdata.Rdata) -> TlsaRecord | None:
    if not isinstance(rdata, TLSARdata):
        return None
    return (rdata.usage, rdata.selector, rdata.mtype, bytes(rdata.cert))


def _negative_ttl(response: Any) -> float | None:
    """The RFC 2308 §5 negative TTL of a NXDOMAIN or NODATA response: the smaller of the
    SOA record's TTL and its MINIMUM field (and of any CNAME TTL on the way), or None when
    the response carries no SOA for the name."""
    if not isinstance(response, dns.message.QueryMessage):
        return None
    try:
        chain = response.resolve_chaining()
    except dns.exception.DNSException:
        return None
    for rrset in response.authority:
        if (rrset.rdtype == dns.rdatatype.SOA and len(rrset) > 0
                and chain.canonical_name.is_subdomain(rrset.name)):
            soa = rrset[0]
            if isinstance(soa, SOARdata):
                return float(min([rrset.ttl, soa.minimum] + [c.ttl for c in chain.cnames]))
    return None


class DnsResolver:
    """The Resolver on dnspython's async stub resolver, with an LRU cache of `cache_size`
    answers and in-flight coalescing.

    `nameservers` None reads /etc/resolv.conf (or `resolv_conf`); otherwise the given
    (address, port) pairs are asked, in order. `timeout` bounds each lookup of one type,
    retries included. `clock` (seconds, monotonic) times the cache; tests inject one.
    Use one instance per event loop.
    """

    def __init__(self, nameservers: list[tuple[str, int]] | None = None, *,
                 timeout: float = 5.0, cache_size: int = 10000,
                 clock: Callable[[], float] = time.monotonic,
                 resolv_conf: str = "/etc/resolv.conf") -> None:
        if not timeout > 0:
            raise ValueError("timeout must be > 0")
        if nameservers is None:
            try:
                resolver = dns.asyncresolver.Resolver(filename=resolv_conf, configure=True)
            except (dns.exception.DNSException, OSError) as exc:
                raise ConfigError(f"cannot use {resolv_conf} for DNS: {exc}") from exc
        else:
            if not nameservers:
                raise ValueError("at least one nameserver is needed")
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(str(ipaddress.ip_address(a)),
                                                                   int(p))
                                    for a, p in nameservers]
        resolver.lifetime = timeout
        # Two tries fit in the lifetime, so one lost UDP datagram does not fail the lookup.
        resolver.timeout = timeout / 2
        resolver.use_edns(0, 0, EDNS_PAYLOAD)
        resolver.cache = None  # ours, below, also keeps negative answers and failures
        resolver.retry_servfail = False
        self._resolver = resolver
        self._timeout = timeout
        self._clock = clock
        self._cache = AnswerCache(cache_size)
        self._inflight: dict[Key, asyncio.Future[Answer[Any]]] = {}
        self.queries_sent = 0  # lookups that went to the network (not cache, not coalesced)

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        out = []
        for ns in self._resolver.nameservers:
            if isinstance(ns, dns.nameserver.Do53Nameserver):
                out.append((ns.address, ns.port))
            else:
                out.append((str(ns), self._resolver.port))
        return out

    # --- the Resolver protocol ---------------------------------------------------------

    async def mx(self, domain: str, *, domain_spec: bool = False) -> Answer[MX]:
        return await self._lookup(domain, dns.rdatatype.MX, _mx, domain_spec=domain_spec,
                                  order=lambda rs: sorted(rs, key=lambda m: (m.preference,
                                                                             m.host)))

    async def addresses(self, host: str, *, domain_spec: bool = False) -> Answer[str]:
        v6, v4 = await asyncio.gather(self.aaaa(host, domain_spec=domain_spec),
                                      self.a(host, domain_spec=domain_spec))
        return combine_addresses(v6, v4)

    async def a(self, host: str, *, domain_spec: bool = False) -> Answer[str]:
        return await self._lookup(host, dns.rdatatype.A, _address, domain_spec=domain_spec)

    async def aaaa(self, host: str, *, domain_spec: bool = False) -> Answer[str]:
        return await self._lookup(host, dns.rdatatype.AAAA, _address, domain_spec=domain_spec)

    async def txt(self, name: str, *, domain_spec: bool = False) -> Answer[str]:
        return await self._lookup(name, dns.rdatatype.TXT, _txt, domain_spec=domain_spec)

    async def ptr(self, ip: str) -> Answer[str]:
        try:
            name = reverse_name(ip)
        except InvalidName as exc:
            return Answer(Status.NXDOMAIN, (), 0.0, _clean(str(exc)))
        return await self._lookup(name, dns.rdatatype.PTR, _ptr)

    async def tlsa(self, name: str) -> Answer[TlsaRecord]:
        return await self._lookup(name, dns.rdatatype.TLSA, _tlsa)

    # --- lookups, cache and coalescing -------------------------------------------------

    async def _lookup(self, name: str, rdtype: dns.rdatatype.RdataType,
                      convert: Callable[[dns.rdata.Rdata], T | None], *,
                      domain_spec: bool = False,
                      order: Callable[[Iterable[T]], list[T]] = list) -> Answer[T]:
        try:
            # Both give the same text for a host name, so the cache key names one DNS name.
            qname = domain_spec_name(name) if domain_spec else query_name(name)
        except InvalidName as exc:
            # A name that cannot be written in DNS cannot exist: answer as the DNS would.
            return Answer(Status.NXDOMAIN, (), 0.0, _clean(str(exc)))
        key = (qname, dns.rdatatype.to_text(rdtype))
        cached = self._cache.get(key, self._clock())
        if cached is not None:
            return cached
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._query(key, qname, rdtype, convert, order))
            self._inflight[key] = future
            future.add_done_callback(lambda f: self._forget(key, f))
        # shield: one caller giving up (a cancelled session) must not cancel the query the
        # other callers are waiting for; the answer still lands in the cache.
        answer: Answer[T] = await asyncio.shield(future)
        return answer

    def _forget(self, key: Key, future: asyncio.Future[Answer[Any]]) -> None:
        if self._inflight.get(key) is future:
            del self._inflight[key]

    async def _query(self, key: Key, qname: str, rdtype: dns.rdatatype.RdataType,
                     convert: Callable[[dns.rdata.Rdata], T | None],
                     order: Callable[[Iterable[T]], list[T]]) -> Answer[T]:
        self.queries_sent += 1
        answer = await self._ask(qname, rdtype, convert, order)
        self._cache.put(key, answer, self._clock())
        return answer

    async def _ask(self, qname: str, rdtype: dns.rdatatype.RdataType,
                   convert: Callable[[dns.rdata.Rdata], T | None],
                   order: Callable[[Iterable[T]], list[T]]) -> Answer[T]:
        """One lookup through dnspython, every outcome turned into an Answer."""
        rtype = dns.rdatatype.to_text(rdtype)
        name = to_dns_name(qname)  # label by label: a domain-spec label may hold a backslash
        try:
            # dnspython's lifetime can overrun by its backoff sleep; this bound cannot.
            async with asyncio.timeout(self._timeout):
                result = await self._resolver.resolve(name, rdtype, search=False,
                                                      raise_on_no_answer=True)
        except dns.resolver.NXDOMAIN as exc:
            responses = exc.kwargs.get("responses") or {}
            ttl = next((t for r in responses.values()
                        if (t := _negative_ttl(r)) is not None), None)
            return Answer(Status.NXDOMAIN, (), lifetime(Status.NXDOMAIN, ttl),
                          _clean(f"{qname} does not exist (NXDOMAIN)"))
        except dns.resolver.NoAnswer as exc:
            ttl = _negative_ttl(exc.kwargs.get("response"))
            return Answer(Status.NODATA, (), lifetime(Status.NODATA, ttl),
                          _clean(f"{qname} has no {rtype} record"))
        except (dns.exception.Timeout, TimeoutError):
            return Answer(Status.TEMPFAIL, (), lifetime(Status.TEMPFAIL, None),
                          _clean(f"{rtype} lookup of {qname} timed out after "
                                 f"{self._timeout:g} s"))
        except (dns.exception.DNSException, OSError, EOFError) as exc:
            # NoNameservers (SERVFAIL, REFUSED, malformed answers), YXDOMAIN and network
            # errors: nothing here says the name is missing, so it is a temporary failure.
            return Answer(Status.TEMPFAIL, (), lifetime(Status.TEMPFAIL, None),
                          _clean(f"{rtype} lookup of {qname} failed: {exc}"))
        records = [r for r in (convert(rd) for rd in result.rrset or ()) if r is not None]
        kept = order(records)[:MAX_RECORDS]
        reason = ""
        if len(records) > MAX_RECORDS:
            reason = f"kept {MAX_RECORDS} of {len(records)} {rtype} records"
        if not kept:  # an answer of some other type only: treat as no data
            return Answer(Status.NODATA, (), lifetime(Status.NODATA, None),
                          _clean(f"{qname} has no usable {rtype} record"))
        ttl = float(result.chaining_result.minimum_ttl)
        return Answer(Status.OK, tuple(kept), lifetime(Status.OK, ttl), reason)
