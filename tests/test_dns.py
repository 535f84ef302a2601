"""dns/: the Resolver against a real nsd (answers, caching) and a fault server (failures)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import FrameType

import pytest

from albatross.dns import (
    MX,
    Answer,
    DnsResolver,
    FakeResolver,
    InvalidName,
    Resolver,
    Status,
    domain_spec_name,
    parse_server,
    query_name,
)
from albatross.dns.cache import DEFAULT_NEGATIVE_TTL, MAX_NEGATIVE_TTL, MAX_TTL, MIN_TTL
from albatross.dns.names import to_dns_name
from albatross.errors import ConfigError
from tests.dnszone import FAULTS, AuthServer, FaultServer, Zone, standard_zones
from tests.dnszone import test_dns as test_dns  # the fixture, re-exported for these tests

TEST_LIMIT = 20  # seconds any one test may take


@pytest.fixture(autouse=True)
def bounded() -> Iterator[None]:
    """Fail a test that runs longer than TEST_LIMIT instead of hanging the suite."""

    def expired(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"test took longer than {TEST_LIMIT} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, TEST_LIMIT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver_for(server: AuthServer | FaultServer, clock: Clock | None = None, *,
                 timeout: float = 5.0, cache_size: int = 10000) -> DnsResolver:
    return DnsResolver(server.nameservers, clock=clock or Clock(), timeout=timeout,
                       cache_size=cache_size)


@contextlib.asynccontextmanager
async def serving(server: AuthServer | FaultServer) -> AsyncIterator[None]:
    """Run `server` for the block, starting and stopping it off the event loop."""
    await asyncio.to_thread(server.start)
    try:
        yield
    finally:
        await asyncio.to_thread(server.stop)


@pytest.fixture
def faults() -> Iterator[FaultServer]:
    with FaultServer(standard_zones()) as server:
        yield server


# --- answers from a real authoritative server (nsd) ------------------------------------


async def test_mx_sorted_by_preference(test_dns: AuthServer) -> None:
    answer = await resolver_for(test_dns).mx("example.test")
    assert answer.status is Status.OK
    assert answer.records == (MX(10, "mx1.example.test"), MX(20, "mx2.example.test"))
    assert answer.ttl == 300
    assert answer.reason == ""


async def test_equal_preferences_are_all_returned(test_dns: AuthServer) -> None:
    answer = await resolver_for(test_dns).mx("equal.test")
    assert answer.records == (MX(10, "mx-a.equal.test"), MX(10, "mx-b.equal.test"))


async def test_a_aaaa_and_addresses(test_dns: AuthServer) -> None:
    r = resolver_for(test_dns)
    assert (await r.a("mx2.example.test")).records == ("127.0.0.3",)
    assert (await r.aaaa("mx2.example.test")).records == ("::1",)
    assert (await r.addresses("mx2.example.test")).records == ("::1", "127.0.0.3")
    assert (await r.addresses("mx1.example.test")).records == ("127.0.0.2",)
    assert (await r.aaaa("mx1.example.test")).status is Status.NODATA
    assert (await r.addresses("mx.v6only.test")).records == ("::1",)
    assert (await r.a("mx.v6only.test")).status is Status.NODATA
    assert (await r.addresses("mx.loop.test")).records == ("127.0.0.1",)


async def test_txt_tlsa_ptr(test_dns: AuthServer) -> None:
    r = resolver_for(test_dns)
    assert (await r.txt("example.test")).records == ("v=spf1 ip4:127.0.0.0/8 -all",)
    tlsa = await r.tlsa("_25._tcp.mx1.example.test")
    assert tlsa.status is Status.OK
    usage, selector, mtype, data = tlsa.records[0]
    assert (usage, selector, mtype) == (3, 1, 1)
    assert data.hex() == "0c72ac70b745ac19998811b131d662c9ac69dbdbe7cb23e5b514b56664c5d3d6"
    assert (await r.ptr("127.0.0.2")).records == ("mx1.example.test",)
    assert (await r.ptr("127.0.0.9")).status is Status.NXDOMAIN


async def test_nxdomain_is_not_nodata(test_dns: AuthServer) -> None:
    r = resolver_for(test_dns)
    nodata = await r.mx("nomx.test")
    assert nodata.status is Status.NODATA and nodata.records == ()
    assert "no MX" in nodata.reason
    assert (await r.a("nomx.test")).records == ("127.0.0.4",)
    for name in ("nope.test", "deep.er.nope.example.test"):
        missing = await r.mx(name)
        assert missing.status is Status.NXDOMAIN, name
        assert "does not exist" in missing.reason
    assert (await r.addresses("nope.test")).status is Status.NXDOMAIN
    assert (await r.addresses("nomx.test")).records == ("127.0.0.4",)
    assert (await r.addresses("example.test")).status is Status.NODATA


async def test_null_mx(test_dns: AuthServer) -> None:
    answer = await resolver_for(test_dns).mx("nullmx.test")
    assert answer.status is Status.OK
    assert answer.records == (MX(0, ""),)
    assert answer.records[0].is_null
    assert not MX(10, "mx1.example.test").is_null


async def test_idna_names_are_asked_as_a_labels(test_dns: AuthServer) -> None:
    r = resolver_for(test_dns)
    for spelling in ("bücher.test", "BÜCHER.TEST.", "xn--bcher-kva.test", "bücher\u3002test"):
        answer = await r.mx(spelling)
        assert answer.records == (MX(10, "mx1.example.test"),), spelling


def test_query_name() -> None:
    assert query_name("Bücher.Example.") == "xn--bcher-kva.example"
    assert query_name("_dmarc.EXAMPLE.org") == "_dmarc.example.org"
    fullwidth = "\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.test"  # UTS #46 maps it
    assert query_name(fullwidth) == "example.test"
    assert query_name("a" * 63 + ".test") == "a" * 63 + ".test"
    for bad in ("", ".", "a..b", "a b.test", "a\\.b.test", "x\r\n.test", "a" * 64 + ".test",
                ".".join(["a" * 60] * 5), "a\u200db.test", "a\x00.test"):
        with pytest.raises(InvalidName):
            query_name(bad)


def test_domain_spec_name() -> None:
    # Any printable ASCII but the dot, as RFC 7208 §7.1 domain-specs produce them.
    assert domain_spec_name("Foo:Bar/Baz.Example.COM.") == "foo:bar/baz.example.com"
    assert (domain_spec_name("macro%percent  space%20url-space.example.com")
            == "macro%percent  space%20url-space.example.com")
    assert domain_spec_name("a\\b.test") == "a\\b.test"  # a backslash is one octet
    printable = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != ".")
    assert domain_spec_name(f"{printable[:63]}.{printable[63:]}.test") == (
        f"{printable[:63]}.{printable[63:]}.test".lower())
    # Same text as query_name wherever query_name accepts the name (one cache for both).
    for host in ("Bücher.Example.", "_dmarc.EXAMPLE.org", "a" * 63 + ".test", "xn--zz.test",
                 "\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.test", "x.y\u3002z"):
        assert domain_spec_name(host) == query_name(host), host
    # Lengths: 63 octets a label, 253 characters a name.
    longest = ".".join([":" * 63] * 3 + ["/" * 61])
    assert len(longest) == 253 and domain_spec_name(longest) == longest
    for bad in ("", ".", "a..b", ":" * 64 + ".test", longest + "x", longest + ".x",
                "x\r\n.test", "a\x00.test", "a\tb.test", "a\x7fb.test", "a\u200db.test",
                "b\u00fc:cher.test"):
        with pytest.raises(InvalidName):
            domain_spec_name(bad)
    # The host-name rules are untouched.
    for refused in ("foo:bar/baz.example.com", "50%.test", "a b.test", "a\\b.test"):
        with pytest.raises(InvalidName):
            query_name(refused)


def test_to_dns_name_reads_no_presentation_syntax() -> None:
    name = to_dns_name(domain_spec_name("a\\b.c d.(x);@$.test"))
    assert name.labels == (b"a\\b", b"c d", b"(x);@$", b"test", b"")
    assert to_dns_name(query_name("mx1.example.test")).to_text() == "mx1.example.test."


async def test_domain_spec_names_found_on_nsd() -> None:
    # nsd takes ":", "/" and "%" in owner names as they are, a space as \032 and a
    # backslash as \\ (RFC 1035 §5.1 escapes); we ask for the same octets label by label.
    zone = Zone("odd.test", [
        "foo:bar/baz A 127.0.0.2",
        'foo:bar/baz TXT "v=spf1 -all"',
        "mx:host MX 10 foo:bar/baz",
        "50%\\032off AAAA ::1",
        "back\\\\slash TXT back",
    ])
    server = AuthServer([zone])
    async with serving(server):
        r = resolver_for(server)
        assert (await r.a("foo:bar/baz.odd.test", domain_spec=True)).records == ("127.0.0.2",)
        assert (await r.txt("FOO:BAR/baz.odd.test.", domain_spec=True)).records == (
            "v=spf1 -all",)
        mx = await r.mx("mx:host.odd.test", domain_spec=True)
        assert mx.records == (MX(10, "foo:bar/baz.odd.test"),)
        assert (await r.addresses(mx.records[0].host, domain_spec=True)).records == (
            "127.0.0.2",)
        assert (await r.aaaa("50% off.odd.test", domain_spec=True)).records == ("::1",)
        assert (await r.txt("back\\slash.odd.test", domain_spec=True)).records == ("back",)
        assert (await r.a("nope:x.odd.test", domain_spec=True)).status is Status.NXDOMAIN
        # Without domain_spec the same names are refused before any query.
        refused = await r.a("foo:bar/baz.odd.test")
        assert refused.status is Status.NXDOMAIN and "invalid label" in refused.reason


async def test_invalid_names_are_nxdomain_without_a_query(faults: FaultServer) -> None:
    r = resolver_for(faults)
    for bad in ("a..b.test", "bad name.test", "x" * 64 + ".test", "evil\r\n.test",
                "foo:bar/baz.example.test", "50%.example.test", "back\\slash.example.test"):
        answer = await r.mx(bad)
        assert answer.status is Status.NXDOMAIN, bad
        assert "\r" not in answer.reason and "\n" not in answer.reason
    for bad in ("a..b.test", "x" * 64 + ".test", "evil\r\n.test", ":" * 254):
        answer = await r.txt(bad, domain_spec=True)
        assert answer.status is Status.NXDOMAIN, bad
        assert "\r" not in answer.reason and "\n" not in answer.reason
    assert (await r.ptr("not-an-ip")).status is Status.NXDOMAIN
    assert (await r.ptr("fe80::1%eth0")).status is Status.NXDOMAIN
    assert faults.count() == 0


# --- caching --------------------------------------------------------------------------


async def test_positive_answer_cached_for_its_ttl() -> None:
    clock = Clock()
    zone = Zone("ttl.test", ["@ 60 MX 10 mx", "mx 60 A 127.0.0.2"])
    server = AuthServer([zone])
    async with serving(server):
        r = resolver_for(server, clock, timeout=0.5)
        first = await r.mx("ttl.test")
        assert first.ttl == 60
    # The server is gone: only the cache can answer now.
    clock.now += 59
    cached = await r.mx("ttl.test")
    assert cached.records == first.records
    assert cached.ttl == pytest.approx(1)
    clock.now += 2
    expired = await r.mx("ttl.test")
    assert expired.status is Status.TEMPFAIL  # asked again, and nobody answers


async def test_second_lookup_sends_no_query(faults: FaultServer) -> None:
    clock = Clock()
    r = resolver_for(faults, clock)
    await r.mx("example.test")
    await r.mx("EXAMPLE.test.")
    assert faults.count("example.test", "MX") == 1
    assert r.queries_sent == 1
    clock.now += 301
    await r.mx("example.test")
    assert faults.count("example.test", "MX") == 2


async def test_negative_answers_cached_for_soa_minimum() -> None:
    clock = Clock()
    zone = Zone("neg.test", ["@ A 127.0.0.2"], negative_ttl=30)
    server = AuthServer([zone])
    async with serving(server):
        r = resolver_for(server, clock, timeout=0.5)
        nx = await r.mx("missing.neg.test")
        nodata = await r.mx("neg.test")
        assert (nx.status, nx.ttl) == (Status.NXDOMAIN, 30)
        assert (nodata.status, nodata.ttl) == (Status.NODATA, 30)
    clock.now += 29
    assert (await r.mx("missing.neg.test")).status is Status.NXDOMAIN
    assert (await r.mx("neg.test")).status is Status.NODATA
    clock.now += 2
    assert (await r.mx("missing.neg.test")).status is Status.TEMPFAIL
    assert (await r.mx("neg.test")).status is Status.TEMPFAIL


async def test_negative_ttl_is_the_smaller_of_soa_ttl_and_minimum() -> None:
    # RFC 2308 §5: a SOA with TTL 20 and MINIMUM 600 makes negative answers live 20 s.
    short_ttl = Zone("a.test", ["@ 20 SOA ns hostmaster 1 3600 600 86400 600", "@ NS ns",
                                "ns A 127.0.0.53"])
    short_min = Zone("b.test", ["@ 600 SOA ns hostmaster 1 3600 600 86400 40", "@ NS ns",
                                "ns A 127.0.0.53"])
    server = AuthServer([short_ttl, short_min])
    async with serving(server):
        r = resolver_for(server)
        assert (await r.mx("x.a.test")).ttl == 20
        assert (await r.mx("x.b.test")).ttl == 40


async def test_cache_bounds_on_ttls() -> None:
    zones = [Zone("long.test", ["@ 9999999 A 127.0.0.2"], negative_ttl=86400),
             Zone("zero.test", ["@ 0 A 127.0.0.2"], negative_ttl=0)]
    server = AuthServer(zones)
    async with serving(server):
        r = resolver_for(server)
        assert (await r.a("long.test")).ttl == MAX_TTL
        assert (await r.a("x.long.test")).ttl == MAX_NEGATIVE_TTL
        assert (await r.a("zero.test")).ttl == MIN_TTL
        assert (await r.a("x.zero.test")).ttl == MIN_TTL


async def test_negative_ttl_without_soa_is_the_default(faults: FaultServer) -> None:
    faults.set_fault("nope.test", "no-soa")
    faults.set_fault("nomx.test", "no-soa")
    r = resolver_for(faults)
    nx = await r.mx("nope.test")
    nodata = await r.mx("nomx.test")
    assert (nx.status, nx.ttl) == (Status.NXDOMAIN, DEFAULT_NEGATIVE_TTL)
    assert (nodata.status, nodata.ttl) == (Status.NODATA, DEFAULT_NEGATIVE_TTL)


async def test_tempfail_cached_briefly(faults: FaultServer) -> None:
    clock = Clock()
    faults.set_fault("example.test", "servfail")
    r = resolver_for(faults, clock)
    first = await r.mx("example.test")
    assert (first.status, first.ttl) == (Status.TEMPFAIL, 5)
    clock.now += 4
    assert (await r.mx("example.test")).status is Status.TEMPFAIL
    assert faults.count("example.test") == 1
    faults.set_fault("example.test", None)
    clock.now += 2
    assert (await r.mx("example.test")).status is Status.OK
    assert faults.count("example.test") == 2


async def test_cache_is_lru_and_size_bounded(faults: FaultServer) -> None:
    r = resolver_for(faults, cache_size=2)
    await r.a("mx1.example.test")
    await r.a("mx2.example.test")
    await r.a("mx1.example.test")  # mx1 is now the most recently used
    await r.a("mx-a.equal.test")  # evicts mx2
    await r.a("mx1.example.test")
    await r.a("mx2.example.test")
    assert faults.count("mx1.example.test") == 1
    assert faults.count("mx2.example.test") == 2
    assert len(r._cache) == 2


async def test_cache_size_zero_caches_nothing(faults: FaultServer) -> None:
    r = resolver_for(faults, cache_size=0)
    for _ in range(3):
        await r.mx("example.test")
    assert faults.count("example.test") == 3


# --- failures from the fault server ----------------------------------------------------


@pytest.mark.parametrize("fault", ["servfail", "refused", "garbage", "truncate-then-servfail"])
async def test_server_failures_are_tempfail(faults: FaultServer, fault: str) -> None:
    faults.set_fault("example.test", fault)
    start = time.monotonic()
    answer = await resolver_for(faults, timeout=1.0).mx("example.test")
    assert answer.status is Status.TEMPFAIL
    assert answer.records == ()
    assert answer.reason
    assert time.monotonic() - start < 1.3
    if fault == "truncate-then-servfail":
        assert faults.count("example.test", transport="tcp") == 1


async def test_servfail_and_refused_named_in_reason(faults: FaultServer) -> None:
    faults.set_fault("example.test", "servfail")
    faults.set_fault("nomx.test", "refused")
    r = resolver_for(faults)
    assert "SERVFAIL" in (await r.mx("example.test")).reason
    assert "REFUSED" in (await r.mx("nomx.test")).reason
    # A name outside every zone the server holds is REFUSED too: not "does not exist".
    assert (await r.mx("example.org")).status is Status.TEMPFAIL


async def test_timeout_is_tempfail_within_the_timeout(faults: FaultServer) -> None:
    faults.set_fault("example.test", "timeout")
    start = time.monotonic()
    answer = await resolver_for(faults, timeout=0.5).mx("example.test")
    elapsed = time.monotonic() - start
    assert answer.status is Status.TEMPFAIL
    assert "timed out" in answer.reason
    assert 0.4 <= elapsed < 0.8
    assert faults.count("example.test") >= 1


async def test_slow_answer_within_the_timeout_is_used(faults: FaultServer) -> None:
    faults.slow_seconds = 0.3
    faults.set_fault("example.test", "slow")
    answer = await resolver_for(faults, timeout=2.0).mx("example.test")
    assert answer.status is Status.OK


async def test_no_server_listening_is_tempfail_within_the_timeout() -> None:
    server = FaultServer()
    async with serving(server):
        pass  # nothing listens on the port any more
    start = time.monotonic()
    answer = await resolver_for(server, timeout=0.5).mx("example.test")
    assert answer.status is Status.TEMPFAIL
    assert time.monotonic() - start < 0.8


async def test_truncated_udp_answer_is_asked_again_over_tcp(faults: FaultServer) -> None:
    faults.set_fault("example.test", "truncate")
    answer = await resolver_for(faults).mx("example.test")
    assert answer.records == (MX(10, "mx1.example.test"), MX(20, "mx2.example.test"))
    assert faults.count("example.test", transport="udp") == 1
    assert faults.count("example.test", transport="tcp") == 1


async def test_records_per_answer_are_capped() -> None:
    many = Zone("many.test", [f'@ TXT "record {i:03}"' for i in range(150)]
                + [f"@ MX {149 - i} mx{i}" for i in range(150)])
    server = FaultServer([many])
    async with serving(server):
        r = resolver_for(server)
        txt = await r.txt("many.test")
        mx = await r.mx("many.test")
    assert txt.status is Status.OK and len(txt.records) == 100
    assert "kept 100 of 150" in txt.reason
    # The cap keeps the most preferred MX hosts, not whichever came first on the wire.
    assert [m.preference for m in mx.records] == list(range(100))
    assert server.count("many.test", transport="tcp") == 2  # too big for UDP


async def test_addresses_when_one_family_fails(faults: FaultServer) -> None:
    faults.set_fault("mx2.example.test/AAAA", "servfail")
    faults.set_fault("mx1.example.test/A", "servfail")
    r = resolver_for(faults)
    partial = await r.addresses("mx2.example.test")
    assert partial.status is Status.OK
    assert partial.records == ("127.0.0.3",)
    assert "AAAA" in partial.reason and "SERVFAIL" in partial.reason
    # No A records could be had and there is no AAAA: a temporary failure, not "no address".
    assert (await r.addresses("mx1.example.test")).status is Status.TEMPFAIL


# --- coalescing -----------------------------------------------------------------------


async def test_concurrent_identical_lookups_share_one_query(faults: FaultServer) -> None:
    faults.slow_seconds = 0.3
    faults.set_fault("example.test", "slow")
    r = resolver_for(faults)
    mxs, addresses = await asyncio.gather(
        asyncio.gather(*(r.mx("example.test") for _ in range(20))),
        asyncio.gather(*(r.a("mx1.example.test") for _ in range(5))))
    assert all(a == mxs[0] for a in mxs)
    assert all(a == addresses[0] for a in addresses)
    assert mxs[0].records[0] == MX(10, "mx1.example.test")
    assert faults.count("example.test", "MX") == 1
    assert faults.count("mx1.example.test", "A") == 1
    assert r.queries_sent == 2


async def test_a_cancelled_waiter_does_not_cancel_the_shared_query(
        faults: FaultServer) -> None:
    faults.slow_seconds = 0.3
    faults.set_fault("example.test", "slow")
    r = resolver_for(faults)
    first = asyncio.ensure_future(r.mx("example.test"))
    second = asyncio.ensure_future(r.mx("example.test"))
    await asyncio.sleep(0.05)
    first.cancel()
    answer = await second
    assert answer.status is Status.OK
    assert first.cancelled()
    assert faults.count("example.test") == 1
    await r.mx("example.test")  # and the answer was cached
    assert faults.count("example.test") == 1


# --- configuration --------------------------------------------------------------------


def test_parse_server() -> None:
    assert parse_server("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_server("127.0.0.1") == ("127.0.0.1", 53)
    assert parse_server("[::1]:53") == ("::1", 53)
    assert parse_server("[::1]") == ("::1", 53)
    assert parse_server("::1") == ("::1", 53)
    assert parse_server(" 127.0.0.53:1053 ") == ("127.0.0.53", 1053)
    for bad in ("", "dns.example:53", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:x",
                "127.0.0.1:", "[::1", "[::1]x", "[::1]:", "[127.0.0.1:53", "1.2.3:53",
                "127.0.0.1:+53", "127.0.0.1:٥٣"):
        with pytest.raises(ValueError):
            parse_server(bad)


def test_resolver_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing"):
        DnsResolver(resolv_conf=str(tmp_path / "missing"))
    empty = tmp_path / "empty.conf"
    empty.write_text("# no nameserver\n")
    with pytest.raises(ConfigError):
        DnsResolver(resolv_conf=str(empty))
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\nsearch example.test\n")
    assert DnsResolver(resolv_conf=str(conf)).nameservers == [("127.0.0.53", 53)]
    with pytest.raises(ValueError):
        DnsResolver([])
    with pytest.raises(ValueError):
        DnsResolver([("127.0.0.1", 53)], timeout=0)
    with pytest.raises(ValueError):
        DnsResolver([("127.0.0.1", 53)], cache_size=-1)
    with pytest.raises(ValueError):
        DnsResolver([("localhost", 53)])


async def test_search_domains_are_never_appended(faults: FaultServer, tmp_path: Path) -> None:
    # "nomx" must not become "nomx.test" through a search list: mail domains are absolute.
    r = resolver_for(faults)
    assert (await r.a("nomx")).status is Status.TEMPFAIL  # outside the zones: REFUSED
    assert faults.count("nomx.test") == 0


# --- the test internet itself ---------------------------------------------------------


async def test_standard_zones_on_the_fault_server_match_nsd(
        test_dns: AuthServer, faults: FaultServer) -> None:
    real, ours = resolver_for(test_dns), resolver_for(faults)
    questions: list[tuple[str, str]] = [
        ("mx", "example.test"), ("mx", "nomx.test"), ("mx", "nope.test"),
        ("mx", "nullmx.test"), ("addresses", "mx2.example.test"), ("txt", "example.test"),
        ("mx", "xn--bcher-kva.test"), ("a", "_tcp.mx1.example.test")]
    for method, name in questions:
        want: Answer[object] = await getattr(real, method)(name)
        got: Answer[object] = await getattr(ours, method)(name)
        assert (got.status, got.records, got.ttl) == (want.status, want.records, want.ttl), \
            (method, name)


def test_auth_server_reports_a_broken_zone() -> None:
    with pytest.raises(RuntimeError, match="did not serve"):
        AuthServer([Zone("broken.test", ["@ MX notanumber mx"])]).start()


def test_fault_server_rejects_unknown_faults() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        FaultServer(faults={"example.test": "explode"})
    assert "timeout" in FAULTS


# --- FakeResolver ---------------------------------------------------------------------


async def test_fake_resolver() -> None:
    fake = FakeResolver()
    resolver: Resolver = fake  # it satisfies the protocol
    fake.add_mx("Example.test", 20, "mx2.example.test")
    fake.add_mx("example.test", 10, "MX1.example.test.")
    fake.add_a("mx1.example.test", "192.0.2.1")
    fake.add_aaaa("mx1.example.test", "2001:db8::1")
    fake.add_txt("example.test", "v=spf1 -all")
    fake.add_mx("nullmx.test", 0, ".")
    fake.add_mx("bücher.test", 10, "mx1.example.test")
    fake.add_ptr("192.0.2.1", "mx1.example.test")
    fake.add_tlsa("_25._tcp.mx1.example.test", (3, 1, 1, b"\x01"))
    assert (await resolver.mx("example.test")).records == (
        MX(10, "mx1.example.test"), MX(20, "mx2.example.test"))
    assert (await resolver.mx("nullmx.test")).records == (MX(0, ""),)
    assert (await resolver.mx("xn--bcher-kva.test")).status is Status.OK
    assert (await resolver.addresses("mx1.example.test")).records == ("2001:db8::1",
                                                                      "192.0.2.1")
    assert (await resolver.txt("example.test")).records == ("v=spf1 -all",)
    assert (await resolver.ptr("192.0.2.1")).records == ("mx1.example.test",)
    assert (await resolver.ptr("nonsense")).status is Status.NXDOMAIN
    assert (await resolver.tlsa("_25._tcp.mx1.example.test")).records == ((3, 1, 1, b"\x01"),)
    assert (await resolver.a("example.test")).status is Status.NODATA
    assert (await resolver.mx("nope.test")).status is Status.NXDOMAIN
    assert (await resolver.mx("bad..name")).status is Status.NXDOMAIN
    fake.set_status("example.test", "mx", Status.TEMPFAIL)
    failed = await resolver.mx("example.test")
    assert (failed.status, failed.records) == (Status.TEMPFAIL, ())
    fake.set_status("example.test", "MX", Status.OK)
    assert (await resolver.mx("example.test")).status is Status.OK
    # Records at names only a domain-spec may ask about, as DnsResolver would answer them.
    fake.add_a("Foo:Bar/baz.example.test", "192.0.2.7")
    fake.add_mx("odd.example.test", 10, "foo:bar/baz.example.test")
    fake.add_mx("odder.example.test", 10, "a b.example.test")
    assert (await resolver.a("foo:bar/baz.example.test", domain_spec=True)).records == (
        "192.0.2.7",)
    assert (await resolver.a("foo:bar/baz.example.test")).status is Status.NXDOMAIN
    assert (await resolver.mx("odd.example.test")).records == (
        MX(10, "foo:bar/baz.example.test"),)
    assert (await resolver.mx("odder.example.test")).records == (
        MX(10, "a\\032b.example.test"),)  # dnspython's escape, as DnsResolver gives it
    fake.set_status("gone.test", "A", Status.TEMPFAIL)
    assert (await resolver.aaaa("gone.test")).status is Status.NODATA
    assert ("example.test", "MX") in fake.queries
    with pytest.raises(ValueError):
        fake.set_status("example.test", "SRV", Status.TEMPFAIL)
