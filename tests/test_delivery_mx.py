"""Tests for delivery.mx: RFC 5321 §5.1 routing on a small fake resolver."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from albatross.delivery.mx import Candidate, RouteError, RoutePolicy, find_route, literal_address
from albatross.dns import MX, Answer, Status


class Zone:
    """A fake resolver: MX and address answers from dictionaries; anything else NXDOMAIN."""

    def __init__(self) -> None:
        self.mxs: dict[str, Answer[MX]] = {}
        self.addrs: dict[str, Answer[str]] = {}
        self.asked: list[str] = []

    def mx_records(self, domain: str, *records: tuple[int, str]) -> None:
        self.mxs[domain] = Answer(Status.OK, tuple(MX(p, h) for p, h in records), 300.0)

    def mx_status(self, domain: str, status: Status) -> None:
        self.mxs[domain] = Answer(status, (), 300.0, "test")

    def host(self, name: str, *ips: str, status: Status = Status.OK) -> None:
        self.addrs[name] = Answer(status, tuple(ips), 300.0)

    async def mx(self, domain: str) -> Answer[MX]:
        self.asked.append(f"MX {domain}")
        return self.mxs.get(domain, Answer(Status.NXDOMAIN, (), 300.0))

    async def addresses(self, host: str) -> Answer[str]:
        self.asked.append(f"ADDR {host}")
        return self.addrs.get(host, Answer(Status.NXDOMAIN, (), 300.0))


def policy(**kw: object) -> RoutePolicy:
    return RoutePolicy(rng=random.Random(7), **kw)  # type: ignore[arg-type]


async def route(zone: Zone, domain: str = "example.org", **kw: object) -> list[Candidate]:
    return list(await find_route(domain, zone, policy(**kw)))


async def route_error(zone: Zone, domain: str = "example.org", **kw: object) -> RouteError:
    with pytest.raises(RouteError) as info:
        await find_route(domain, zone, policy(**kw))
    return info.value


async def test_mx_by_preference_with_all_addresses() -> None:
    z = Zone()
    z.mx_records("example.org", (20, "mx2.example.org"), (10, "mx1.example.org"))
    z.host("mx1.example.org", "2001:db8::1", "192.0.2.1")
    z.host("mx2.example.org", "192.0.2.2")
    assert await route(z) == [Candidate("mx1.example.org", "2001:db8::1"),
                              Candidate("mx1.example.org", "192.0.2.1"),
                              Candidate("mx2.example.org", "192.0.2.2")]


async def test_equal_preferences_are_shuffled() -> None:
    z = Zone()
    z.mx_records("example.org", (10, "a.example.org"), (10, "b.example.org"),
                 (10, "c.example.org"), (5, "best.example.org"))
    for n, h in enumerate("abc"):
        z.host(f"{h}.example.org", f"192.0.2.{n + 1}")
    z.host("best.example.org", "192.0.2.9")
    rng = random.Random(1)
    firsts: Counter[str] = Counter()
    for _ in range(60):
        got = await find_route("example.org", z, RoutePolicy(rng=rng))
        assert got[0].host == "best.example.org"
        assert sorted(c.host for c in got[1:]) == ["a.example.org", "b.example.org",
                                                   "c.example.org"]
        firsts[got[1].host] += 1
    assert len(firsts) == 3 and min(firsts.values()) >= 5


async def test_implicit_mx_when_no_mx_records() -> None:
    z = Zone()
    z.mx_status("example.org", Status.NODATA)
    z.host("example.org", "192.0.2.5")
    assert await route(z) == [Candidate("example.org", "192.0.2.5")]


async def test_no_mx_and_no_address_bounces() -> None:
    z = Zone()
    z.mx_status("example.org", Status.NODATA)
    z.host("example.org", status=Status.NODATA)
    err = await route_error(z)
    assert err.permanent and err.reply.enhanced == "5.1.2" and err.category == "dns"


async def test_null_mx_bounces_5_1_10() -> None:
    z = Zone()
    z.mx_records("example.org", (0, ""))
    err = await route_error(z)
    assert (err.reply.code, err.reply.enhanced) == (556, "5.1.10")
    assert err.permanent and err.category == "dns"
    assert z.asked == ["MX example.org"]  # no address lookups at all


async def test_nxdomain_bounces_5_1_2() -> None:
    err = await route_error(Zone(), "nowhere.example")
    assert (err.reply.code, err.reply.enhanced) == (550, "5.1.2")
    assert err.permanent


async def test_mx_tempfail_defers() -> None:
    z = Zone()
    z.mx_status("example.org", Status.TEMPFAIL)
    err = await route_error(z)
    assert not err.permanent and err.reply.enhanced == "4.4.3" and err.category == "dns"


async def test_tempfail_of_every_mx_host_defers() -> None:
    z = Zone()
    z.mx_records("example.org", (10, "mx1.example.org"), (20, "mx2.example.org"))
    z.host("mx1.example.org", status=Status.TEMPFAIL)
    z.host("mx2.example.org", status=Status.TEMPFAIL)
    err = await route_error(z)
    assert not err.permanent and err.category == "dns"


async def test_tempfail_of_one_mx_host_skips_it() -> None:
    z = Zone()
    z.mx_records("example.org", (10, "mx1.example.org"), (20, "mx2.example.org"))
    z.host("mx1.example.org", status=Status.TEMPFAIL)
    z.host("mx2.example.org", "192.0.2.2")
    assert await route(z) == [Candidate("mx2.example.org", "192.0.2.2")]


async def test_mx_hosts_without_addresses_bounce() -> None:
    z = Zone()
    z.mx_records("example.org", (10, "gone.example.org"))
    err = await route_error(z)
    assert err.permanent and err.reply.enhanced == "5.4.4"
    assert "gone.example.org" in err.reply.text


async def test_mx_pointing_at_us_is_a_loop() -> None:
    z = Zone()
    z.mx_records("example.org", (10, "mx.example.org"))
    z.host("mx.example.org", "192.0.2.10")
    err = await route_error(z, local_addresses=frozenset({"192.0.2.10"}))
    assert (err.reply.code, err.reply.enhanced, err.category) == (554, "5.4.6", "loop")
    # The same MX for a domain of ours is not a loop.
    got = await route(z, local_addresses=frozenset({"192.0.2.10"}),
                      our_domains=frozenset({"example.org"}))
    assert got == [Candidate("mx.example.org", "192.0.2.10")]


async def test_backup_mx_only_tries_better_ones() -> None:
    # RFC 5321 §5.1: we are the 20 MX: drop ourselves and everything at 20 or worse.
    z = Zone()
    z.mx_records("example.org", (10, "primary.example.org"), (20, "us.example.org"),
                 (20, "peer.example.org"), (30, "worse.example.org"))
    z.host("primary.example.org", "192.0.2.1")
    z.host("us.example.org", "2001:db8::10")
    z.host("peer.example.org", "192.0.2.3")
    z.host("worse.example.org", "192.0.2.4")
    got = await route(z, local_addresses=frozenset({"2001:0db8::0010"}))
    assert got == [Candidate("primary.example.org", "192.0.2.1")]


async def test_loopback_counts_as_ours_when_configured() -> None:
    z = Zone()
    z.mx_records("example.org", (10, "mx.example.org"))
    z.host("mx.example.org", "127.0.0.2")
    assert await route(z) == [Candidate("mx.example.org", "127.0.0.2")]
    err = await route_error(z, loopback_is_local=True)
    assert err.category == "loop"


async def test_caps_on_hosts_and_addresses() -> None:
    z = Zone()
    z.mx_records("example.org", *[(i, f"mx{i}.example.org") for i in range(8)])
    for i in range(8):
        z.host(f"mx{i}.example.org", *[f"192.0.{i}.{j}" for j in range(1, 4)])
    got = await route(z)
    assert len(got) == 10
    assert {c.host for c in got} == {f"mx{i}.example.org" for i in range(4)}
    assert sum(q.startswith("ADDR") for q in z.asked) == 5  # at most 5 MX hosts looked up
    got = await route(z, max_mx=2, max_addresses=100)
    assert len(got) == 6


async def test_duplicate_addresses_once() -> None:
    z = Zone()
    z.mx_records("example.org", (10, "a.example.org"), (20, "b.example.org"))
    z.host("a.example.org", "192.0.2.1")
    z.host("b.example.org", "192.0.2.1", "192.0.2.2")
    assert [c.ip for c in await route(z)] == ["192.0.2.1", "192.0.2.2"]


@pytest.mark.parametrize(("literal", "ip"), [
    ("[192.0.2.1]", "192.0.2.1"),
    ("[IPv6:2001:db8::1]", "2001:db8::1"),
    ("[ipv6:2001:DB8:0::1]", "2001:db8::1"),
    ("[300.1.1.1]", None),
    ("[2001:db8::1]", None),  # IPv6 needs the tag (RFC 5321 §4.1.3)
    ("example.org", None),
])
def test_literal_address(literal: str, ip: str | None) -> None:
    assert literal_address(literal) == ip


async def test_address_literals_only_when_allowed() -> None:
    z = Zone()
    err = await route_error(z, "[192.0.2.1]")
    assert err.permanent and err.category == "policy"
    assert await route(z, "[192.0.2.1]", allow_literals=True) == [
        Candidate("[192.0.2.1]", "192.0.2.1")]
    assert z.asked == []
    err = await route_error(z, "[192.0.2.1]", allow_literals=True,
                            local_addresses=frozenset({"192.0.2.1"}))
    assert err.category == "loop"
    err = await route_error(z, "[999.0.2.1]", allow_literals=True)
    assert err.permanent and err.reply.enhanced == "5.1.2"
