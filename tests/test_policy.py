"""Client policy: the per-phase checks, their verdicts, timeouts and order (policy/).

Unit tests use FakeResolver and a fake clock; the DNSBL and reverse DNS are also asked of a
real nsd serving a block list zone, and of a DNS server that never answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from albatross.cli import policy as policy_cli
from albatross.config import RelayConfig, load
from albatross.config.policy import PolicyConfig
from albatross.config.schema import Config
from albatross.dns import DnsResolver, FakeResolver, Status
from albatross.model import Reply
from albatross.policy import (
    ACCEPT,
    ClientInfo,
    DnsblCheck,
    FcrdnsCheck,
    HeloCheck,
    Phase,
    Policy,
    RateCheck,
    SlidingWindow,
    Verdict,
    build_policy,
    describe,
    helo_problem,
)
from albatross.policy.dnsbl import query_prefix
from albatross.policy.fcrdns import MAX_NAMES
from albatross.policy.rate import address_key
from tests.dnszone import AuthServer, FaultServer, Zone, require_dns_server, standard_zones


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Events:
    """A log callable that keeps what it is given, like MailLog.event."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, /, **fields: Any) -> None:
        self.lines.append((event, fields))

    def about(self, check: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.lines
                if event == "error" and fields.get("check") == check]


def client(ip: str = "192.0.2.10", **kw: Any) -> ClientInfo:
    return ClientInfo(ip=ip, port=40000, **kw)


def trusted(c: ClientInfo) -> bool:
    return RelayConfig().trusts(c.ip)


# --- verdicts -------------------------------------------------------------------------


def test_verdict_actions_match_reply_classes() -> None:
    Verdict("reject", Reply(554, "5.7.1", "no"), "x")
    Verdict("tempfail", Reply(451, "4.7.1", "later"), "x")
    with pytest.raises(ValueError):
        Verdict("reject", Reply(451, "4.7.1", "a reject must be permanent"), "x")
    with pytest.raises(ValueError):
        Verdict("tempfail", Reply(554, "5.7.1", "a tempfail must be transient"), "x")
    with pytest.raises(ValueError):
        Verdict("reject", None, "x")
    with pytest.raises(ValueError):
        Verdict("maybe", None, "x")  # type: ignore[arg-type]


# --- the Policy runner ----------------------------------------------------------------


@dataclasses.dataclass
class Scripted:
    """A check that answers what it is told, after `delay` seconds, or raises."""

    name: str
    phase: Phase = Phase.MAIL
    timeout: float = 1.0
    answer: Any = None
    delay: float = 0.0
    error: Exception | None = None
    detail: str = ""
    calls: int = 0

    async def run(self, client: ClientInfo, **fields: Any) -> Verdict | None:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        result: Verdict | None = self.answer
        return result


def refuse(name: str, code: int = 554) -> Verdict:
    reply = Reply(code, f"{code // 100}.7.1", f"{name} says no")
    return Verdict("reject", reply, name) if code >= 500 else Verdict("tempfail", reply, name)


async def test_no_checks_accepts() -> None:
    assert await Policy([]).run(Phase.CONNECT, client()) == ACCEPT


async def test_first_refusal_wins_and_later_checks_do_not_run() -> None:
    a, b, c = Scripted("a"), Scripted("b", answer=refuse("b", 451)), Scripted("c",
                                                                             answer=refuse("c"))
    verdict = await Policy([a, b, c]).run(Phase.MAIL, client())
    assert verdict.action == "tempfail" and verdict.check == "b"
    assert (a.calls, b.calls, c.calls) == (1, 1, 0)


async def test_accept_does_not_skip_later_checks() -> None:
    ok = Scripted("ok", answer=Verdict("accept", None, "ok"))
    no = Scripted("no", answer=refuse("no"))
    verdict = await Policy([ok, no]).run(Phase.MAIL, client())
    assert verdict.check == "no" and verdict.action == "reject"


async def test_only_the_phase_checks_run() -> None:
    at_rcpt = Scripted("r", phase=Phase.RCPT, answer=refuse("r"))
    policy = Policy([at_rcpt])
    assert await policy.run(Phase.MAIL, client()) == ACCEPT
    assert at_rcpt.calls == 0
    assert (await policy.run(Phase.RCPT, client())).check == "r"
    assert policy.has(Phase.RCPT) and not policy.has(Phase.MAIL)


async def test_a_check_that_times_out_is_a_tempfail_naming_it() -> None:
    events = Events()
    slow = Scripted("slowpoke", timeout=0.05, delay=5.0, answer=refuse("slowpoke"))
    started = time.monotonic()
    verdict = await Policy([slow], log=events).run(Phase.MAIL, client())
    assert time.monotonic() - started < 2.0
    assert verdict.action == "tempfail" and verdict.check == "slowpoke"
    assert verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.enhanced) == (451, "4.3.0")
    assert "slowpoke" in verdict.reply.text
    assert "timed out" in events.about("slowpoke")[0]["error"]


async def test_a_check_that_raises_is_a_tempfail_never_a_reject() -> None:
    events = Events()
    broken = Scripted("broken", error=RuntimeError("bug"))
    after = Scripted("after", answer=refuse("after"))
    verdict = await Policy([broken, after], log=events).run(Phase.MAIL, client())
    assert verdict.check == "broken" and verdict.reply is not None
    assert str(verdict.reply) == "451 4.3.0 Temporary failure in policy check broken; try " \
                                 "again later"
    assert "RuntimeError('bug')" in events.about("broken")[0]["error"]
    assert after.calls == 0


async def test_a_check_returning_garbage_is_a_tempfail() -> None:
    verdict = await Policy([Scripted("odd", answer="yes")]).run(Phase.MAIL, client())
    assert verdict.action == "tempfail" and verdict.check == "odd"


async def test_cancelling_the_session_is_not_swallowed() -> None:
    slow = Scripted("slow", delay=5.0)
    task = asyncio.create_task(Policy([slow]).run(Phase.MAIL, client()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_check_without_a_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="timeout"):
        Policy([Scripted("x", timeout=0)])


def test_describe_lists_checks_in_run_order() -> None:
    checks = [Scripted("rate", phase=Phase.MAIL, detail="per_ip=5"),
              Scripted("dnsbl", phase=Phase.CONNECT, timeout=5, detail="zones=zen.example"),
              Scripted("helo", phase=Phase.HELO, timeout=0.5)]
    assert Policy(checks).describe() == [
        "connect  dnsbl  zones=zen.example timeout=5s",
        "helo     helo   timeout=0.5s",
        "mail     rate   per_ip=5 timeout=1s",
    ]


# --- dnsbl ----------------------------------------------------------------------------


def test_query_prefix_reverses_octets_and_nibbles() -> None:
    assert query_prefix("192.0.2.99") == "99.2.0.192"
    assert query_prefix("::ffff:192.0.2.99") == "99.2.0.192"
    six = query_prefix("2001:db8::1")
    assert six is not None and six.startswith("1.0.0.0.") and six.endswith(".8.b.d.0.1.0.0.2")
    assert len(six.split(".")) == 32
    assert query_prefix("not-an-ip") is None


def listing(zone: str = "bl.example", ip_prefix: str = "2.0.0.127") -> FakeResolver:
    r = FakeResolver()
    r.add_a(f"{ip_prefix}.{zone}", "127.0.0.2")
    r.add_txt(f"{ip_prefix}.{zone}", "Listed; see https://bl.example/lookup")
    return r


async def test_dnsbl_listed_client_is_refused_naming_the_list_and_reason() -> None:
    check = DnsblCheck(listing(), ["bl.example"], timeout=5)
    verdict = await check.run(client("127.0.0.2"))
    assert verdict is not None and verdict.action == "reject" and verdict.reply is not None
    assert str(verdict.reply) == ("554 5.7.1 Service unavailable; client [127.0.0.2] listed by "
                                  "bl.example; Listed; see https://bl.example/lookup")


async def test_dnsbl_listing_without_txt_still_refuses() -> None:
    r = FakeResolver()
    r.add_a("5.2.0.192.bl.example", "127.0.0.4")
    verdict = await DnsblCheck(r, ["bl.example"], timeout=5).run(client("192.0.2.5"))
    assert verdict is not None and verdict.reply is not None
    assert verdict.reply.text == "Service unavailable; client [192.0.2.5] listed by bl.example"


async def test_dnsbl_not_listed_is_no_opinion() -> None:
    r = listing()
    assert await DnsblCheck(r, ["bl.example"], timeout=5).run(client("192.0.2.7")) is None
    assert r.queries == [("7.2.0.192.bl.example", "A")]


async def test_dnsbl_tempfail_is_logged_never_a_rejection() -> None:
    r = listing()
    r.set_status("2.0.0.127.bl.example", "A", Status.TEMPFAIL)
    events = Events()
    check = DnsblCheck(r, ["bl.example"], timeout=5, log=events)
    assert await check.run(client("127.0.0.2")) is None
    [note] = events.about("dnsbl")
    assert note["zone"] == "bl.example" and "no answer" in note["error"]


async def test_dnsbl_answers_outside_127_0_0_are_not_listings() -> None:
    # Spamhaus answers 127.255.255.254 to queries through public resolvers; a wildcarded
    # zone may answer anything. Neither may refuse the client.
    r = FakeResolver()
    r.add_a("9.2.0.192.bl.example", "127.255.255.254")
    r.add_a("9.2.0.192.wild.example", "198.51.100.1")
    events = Events()
    check = DnsblCheck(r, ["bl.example", "wild.example"], timeout=5, log=events)
    assert await check.run(client("192.0.2.9")) is None
    assert len(events.about("dnsbl")) == 2


async def test_dnsbl_first_configured_list_is_named() -> None:
    r = listing("one.example")
    r.add_a("2.0.0.127.two.example", "127.0.0.3")
    check = DnsblCheck(r, ["two.example", "one.example"], timeout=5)
    verdict = await check.run(client("127.0.0.2"))
    assert verdict is not None and verdict.reply is not None
    assert "listed by two.example" in verdict.reply.text


async def test_dnsbl_ipv6_client_is_asked_by_nibbles() -> None:
    prefix = query_prefix("2001:db8::25")
    assert prefix is not None
    r = listing(ip_prefix=prefix)
    verdict = await DnsblCheck(r, ["bl.example"], timeout=5).run(client("2001:db8::25"))
    assert verdict is not None and "[2001:db8::25]" in str(verdict.reply)


async def test_dnsbl_only_on_mx_and_never_for_skipped_clients() -> None:
    r = listing()
    check = DnsblCheck(r, ["bl.example"], timeout=5, skip=trusted)
    assert await check.run(client("127.0.0.2", role="submission")) is None
    assert await check.run(client("127.0.0.1")) is None  # trusted by default
    assert r.queries == []


async def test_dnsbl_reason_cannot_inject_reply_lines() -> None:
    r = FakeResolver()
    r.add_a("2.0.0.127.bl.example", "127.0.0.2")
    r.add_txt("2.0.0.127.bl.example", "bad\r\n250 OK\x00" + "x" * 1000)
    verdict = await DnsblCheck(r, ["bl.example"], timeout=5).run(client("127.0.0.2"))
    assert verdict is not None and verdict.reply is not None
    wire = verdict.reply.to_bytes()
    assert wire.count(b"\r\n") == 1 and b"\x00" not in wire and len(wire) <= 512
    assert wire.startswith(b"554 5.7.1 ") and b"bad??250 OK?" in wire


def test_dnsbl_needs_zones() -> None:
    with pytest.raises(ValueError):
        DnsblCheck(FakeResolver(), [], timeout=5)


# --- helo -----------------------------------------------------------------------------


GOOD_HELOS = ["mail.example.org", "MAIL.Example.ORG.", "a-b.c9.example", "[192.0.2.1]",
              "[IPv6:2001:db8::1]", "[ipv6:::1]", "bücher.example", "localhost", "x"]
BAD_HELOS = ["", "!!!", "user@example.org", "exa mple.org", "-bad.example", "bad-.example",
             "a..b", ".example", "under_score.example", "192.0.2.1", "[192.0.2.300]",
             "[IPv6:not-an-address]", "[2001:db8::1]", "[tag:stuff]", "x" * 64 + ".example",
             ("a." * 130) + "org", "host\r\nRCPT TO:<x@y>"]


@pytest.mark.parametrize("name", GOOD_HELOS)
def test_helo_names_accepted(name: str) -> None:
    assert helo_problem(name, require_fqdn=False) is None


@pytest.mark.parametrize("name", BAD_HELOS)
def test_helo_garbage_refused(name: str) -> None:
    problem = helo_problem(name, require_fqdn=False)
    assert problem is not None and problem[0] == 501


async def test_helo_check_reply_for_garbage() -> None:
    verdict = await HeloCheck(timeout=1).run(client(), helo="bad name\r\n!")
    assert verdict is not None and verdict.reply is not None
    assert verdict.reply.code == 501 and verdict.reply.enhanced == "5.5.2"
    assert "Helo command rejected: invalid host name" in verdict.reply.text
    assert "\r" not in verdict.reply.text and "\n" not in verdict.reply.text


async def test_helo_bare_address_must_be_bracketed() -> None:
    verdict = await HeloCheck(timeout=1).run(client(), helo="192.0.2.1")
    assert verdict is not None and "[192.0.2.1]" in str(verdict.reply)


async def test_helo_required_fqdn_refuses_single_labels() -> None:
    lenient, strict = HeloCheck(timeout=1), HeloCheck(timeout=1, require_fqdn=True)
    assert await lenient.run(client(), helo="localhost") is None
    verdict = await strict.run(client(), helo="localhost")
    assert verdict is not None and verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.enhanced) == (504, "5.5.2")
    assert "need fully-qualified hostname" in verdict.reply.text
    assert await strict.run(client(), helo="mail.example.org") is None
    assert await strict.run(client(), helo="[192.0.2.1]") is None


async def test_helo_never_refuses_authenticated_or_trusted_clients() -> None:
    check = HeloCheck(timeout=1, require_fqdn=True, skip=trusted)
    assert await check.run(client(authenticated="alice"), helo="!!!") is None
    assert await check.run(client("127.0.0.1"), helo="Canon_MF") is None
    assert await check.run(client("::1"), helo="") is None
    assert await check.run(client("127.0.0.2"), helo="!!!") is not None


async def test_helo_falls_back_to_the_client_record() -> None:
    check = HeloCheck(timeout=1)
    assert await check.run(client(helo="ok.example")) is None
    assert await check.run(client(helo="bad!")) is not None
    assert await check.run(client()) is not None  # no name at all


# --- fcrdns ---------------------------------------------------------------------------


def reverse_zone() -> FakeResolver:
    r = FakeResolver()
    r.add_ptr("192.0.2.10", "mail.example.org")
    r.add_a("mail.example.org", "192.0.2.10")
    r.add_ptr("192.0.2.11", "liar.example.org")  # forward does not lead back
    r.add_a("liar.example.org", "198.51.100.1")
    r.add_ptr("2001:db8::10", "v6.example.org")
    r.add_aaaa("v6.example.org", "2001:db8:0:0::10")
    return r


async def test_fcrdns_confirmed_name_is_recorded() -> None:
    c = client("192.0.2.10")
    assert await FcrdnsCheck(reverse_zone(), timeout=5).run(c) is None
    assert c.ptr == "mail.example.org"
    six = client("2001:db8::10")
    await FcrdnsCheck(reverse_zone(), timeout=5).run(six)
    assert six.ptr == "v6.example.org"
    mapped = client("::ffff:192.0.2.10")
    await FcrdnsCheck(reverse_zone(), timeout=5).run(mapped)
    assert mapped.ptr == "mail.example.org"


@pytest.mark.parametrize("ip", ["192.0.2.11", "192.0.2.99", "not-an-ip"])
async def test_fcrdns_unconfirmed_is_unknown_and_no_opinion(ip: str) -> None:
    c = client(ip)
    assert await FcrdnsCheck(reverse_zone(), timeout=5).run(c) is None
    assert c.ptr == "unknown"


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
async def test_fcrdns_this_host_is_localhost_without_asking(ip: str) -> None:
    r = FakeResolver()  # knows nothing: a PTR query would be NXDOMAIN, so "unknown"
    c = client(ip)
    assert await FcrdnsCheck(r, timeout=5).run(c) is None
    assert c.ptr == "localhost"
    other = client("127.0.0.2")  # other loopback addresses are asked like anyone
    await FcrdnsCheck(r, timeout=5).run(other)
    assert other.ptr == "unknown"


async def test_fcrdns_tempfail_is_logged_and_unknown() -> None:
    r = reverse_zone()
    r.set_status("192.0.2.10", "PTR", Status.TEMPFAIL)
    events = Events()
    c = client("192.0.2.10")
    assert await FcrdnsCheck(r, timeout=5, log=events).run(c) is None
    assert c.ptr == "unknown" and "PTR lookup failed" in events.about("fcrdns")[0]["error"]


async def test_fcrdns_required_on_mx_is_450_4_7_25() -> None:
    check = FcrdnsCheck(reverse_zone(), timeout=5, require_roles=("mx",), skip=trusted)
    verdict = await check.run(client("192.0.2.11"))
    assert verdict is not None and verdict.action == "tempfail" and verdict.reply is not None
    assert (verdict.reply.code, verdict.reply.enhanced) == (450, "4.7.25")
    assert "cannot find your hostname" in verdict.reply.text
    assert await check.run(client("192.0.2.10")) is None
    assert await check.run(client("192.0.2.11", role="submission")) is None
    assert await check.run(client("127.0.0.1")) is None  # trusted, no PTR in this zone


async def test_fcrdns_bounds_forward_lookups() -> None:
    r = FakeResolver()
    for i in range(MAX_NAMES + 10):
        r.add_ptr("192.0.2.50", f"n{i}.example.org")
    r.add_a(f"n{MAX_NAMES + 5}.example.org", "192.0.2.50")  # beyond the bound
    c = client("192.0.2.50")
    await FcrdnsCheck(r, timeout=5).run(c)
    assert c.ptr == "unknown"
    assert sum(1 for _, rtype in r.queries if rtype in ("A", "AAAA")) == 2 * MAX_NAMES


# --- rate -----------------------------------------------------------------------------


async def test_rate_per_ip_trips_and_recovers_after_the_window() -> None:
    clock = Clock()
    check = RateCheck(per_ip=3, per_user=0, timeout=1, clock=clock)
    c = client("192.0.2.20")
    for _ in range(3):
        assert await check.run(c) is None
        clock.now += 60
    verdict = await check.run(c)
    assert verdict is not None and verdict.reply is not None
    assert str(verdict.reply) == ("451 4.7.1 Error: too many messages from [192.0.2.20] "
                                  "(limit 3 per hour)")
    assert await check.run(client("192.0.2.21")) is None  # another client is not affected
    clock.now += 3600 - 180  # the first message leaves the window: one more is allowed
    assert await check.run(c) is None
    assert await check.run(c) is not None
    clock.now += 3600
    for _ in range(3):
        assert await check.run(c) is None


async def test_rate_refused_attempts_do_not_count() -> None:
    clock = Clock()
    check = RateCheck(per_ip=1, per_user=0, timeout=1, clock=clock)
    assert await check.run(client()) is None
    for _ in range(50):
        clock.now += 60
        assert await check.run(client()) is not None
    clock.now = 1000 + 3600.5  # an hour after the one accepted message
    assert await check.run(client()) is None


async def test_rate_per_user_names_the_user_wherever_they_connect_from() -> None:
    clock = Clock()
    check = RateCheck(per_ip=1, per_user=2, timeout=1, clock=clock)
    assert await check.run(client("192.0.2.1", authenticated="alice")) is None
    assert await check.run(client("198.51.100.1", authenticated="alice")) is None
    verdict = await check.run(client("203.0.113.1", authenticated="alice"))
    assert verdict is not None and verdict.reply is not None
    assert verdict.reply.text == "Error: too many messages from user alice (limit 2 per hour)"
    # the user's messages did not use up the address's allowance, nor bob's
    assert await check.run(client("192.0.2.1")) is None
    assert await check.run(client("192.0.2.1", authenticated="bob")) is None


async def test_rate_ipv6_counts_per_64() -> None:
    check = RateCheck(per_ip=2, per_user=0, timeout=1, clock=Clock())
    assert await check.run(client("2001:db8:1:2::a")) is None
    assert await check.run(client("2001:db8:1:2::b")) is None
    assert await check.run(client("2001:db8:1:2:ffff::1")) is not None
    assert await check.run(client("2001:db8:1:3::a")) is None
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"


async def test_rate_exempts_trusted_addresses_but_not_their_users() -> None:
    check = RateCheck(per_ip=1, per_user=1, timeout=1, exempt=trusted, clock=Clock())
    for _ in range(5):
        assert await check.run(client("127.0.0.1")) is None
    assert await check.run(client("127.0.0.1", authenticated="web")) is None
    assert await check.run(client("127.0.0.1", authenticated="web")) is not None


def test_sliding_window_memory_is_bounded() -> None:
    clock = Clock()
    window = SlidingWindow(3, max_keys=100, clock=clock)
    for i in range(1000):
        window.add(f"k{i}")
        window.add(f"k{i}")
    assert len(window) == 100
    for _ in range(50):
        window.add("k999")
    assert window.full("k999")
    assert len(window._times["k999"]) == 3  # only the last `limit` times are kept
    assert not window.full("k0")  # pushed out: forgotten
    window.add("k900")  # recently used keys survive new ones
    for i in range(1000, 1099):
        window.add(f"k{i}")
    assert "k900" in window._times and "k901" not in window._times


# --- build_policy, config and the CLI -------------------------------------------------


def config_with(**settings: Any) -> Any:
    """A Config with a [policy] table (a stand-in until Config carries the field)."""
    return SimpleNamespace(policy=PolicyConfig(**settings), relay=RelayConfig())


def test_defaults_record_reverse_dns_and_check_helo() -> None:
    assert describe(Config()) == [
        "connect  fcrdns  required_on=none timeout=10s",
        "helo     helo    require_fqdn=no timeout=10s",
    ]


def test_everything_enabled_in_order() -> None:
    cfg = config_with(dnsbl_zones=("zen.example", "bl.example"), dnsbl_timeout=3.0,
                      helo_required_fqdn=True, require_fcrdns=True,
                      messages_per_hour_per_ip=100, messages_per_hour_per_user=0,
                      check_timeout=2.0)
    assert describe(cfg) == [
        "connect  fcrdns  required_on=mx timeout=2s",
        "connect  dnsbl   zones=zen.example,bl.example roles=mx timeout=3s",
        "helo     helo    require_fqdn=yes timeout=2s",
        "mail     rate    per_ip=100 per_user=unlimited window=3600s timeout=2s",
    ]
    assert describe(config_with(helo_checks=False)) == [
        "connect  fcrdns  required_on=none timeout=10s"]


async def test_built_policy_runs_each_phase() -> None:
    r = listing()
    r.add_ptr("127.0.0.3", "host.example.org")
    r.add_a("host.example.org", "127.0.0.3")
    clock = Clock()
    policy = build_policy(config_with(dnsbl_zones=("bl.example",), messages_per_hour_per_ip=1),
                          r, clock=clock)
    listed = client("127.0.0.2")
    verdict = await policy.run(Phase.CONNECT, listed)
    assert verdict.check == "dnsbl" and listed.ptr == "unknown"
    fine = client("127.0.0.3")
    assert await policy.run(Phase.CONNECT, fine) == ACCEPT
    assert fine.ptr == "host.example.org"
    assert (await policy.run(Phase.HELO, fine, helo="!")).check == "helo"
    assert await policy.run(Phase.HELO, fine, helo="host.example.org") == ACCEPT
    assert await policy.run(Phase.MAIL, fine, sender="a@example.org") == ACCEPT
    assert (await policy.run(Phase.MAIL, fine, sender="a@example.org")).check == "rate"
    # the loopback default trusted network is exempt from DNSBL, HELO and address rates
    me = client("127.0.0.1")
    assert await policy.run(Phase.CONNECT, me) == ACCEPT
    assert await policy.run(Phase.HELO, me, helo="!") == ACCEPT
    assert await policy.run(Phase.MAIL, me) == ACCEPT
    assert await policy.run(Phase.MAIL, me) == ACCEPT


HAS_TABLE = "policy" in {f.name for f in dataclasses.fields(Config)}
needs_table = pytest.mark.skipif(not HAS_TABLE, reason="Config has no policy field yet "
                                 "(the lead adds it to config/schema.py)")


@needs_table
def test_policy_table_loads_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text('[policy]\ndnsbl_zones = ["ZEN.example"]\ndnsbl_timeout = "3s"\n'
                    "messages_per_hour_per_user = 50\nrequire_fcrdns = true\n", "utf-8")
    cfg = load(path)
    table = cfg.policy  # type: ignore[attr-defined]
    assert table.dnsbl_zones == ("zen.example",) and table.dnsbl_timeout == 3.0
    assert describe(cfg)[1] == "connect  dnsbl   zones=zen.example roles=mx timeout=3s"


@needs_table
@pytest.mark.parametrize("line", ['dnsbl_zones = ["not a domain"]', "dnsbl_timeout = 0",
                                  "messages_per_hour_per_ip = -1", 'helo_checks = "yes"',
                                  "nonsense = 1"])
def test_bad_policy_settings_are_refused(tmp_path: Path, line: str) -> None:
    from albatross.errors import ConfigError

    path = tmp_path / "a.toml"
    path.write_text(f"[policy]\n{line}\n", "utf-8")
    with pytest.raises(ConfigError):
        load(path)


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    policy_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def test_cli_policy_show_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["policy", "show"]) == 0
    assert capsys.readouterr().out.splitlines() == describe(Config())


@needs_table
def test_cli_policy_show_from_config(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.toml"
    path.write_text('[policy]\ndnsbl_zones = ["zen.example"]\n', "utf-8")
    assert cli(["policy", "show", "--config", str(path)]) == 0
    assert "connect  dnsbl   zones=zen.example roles=mx timeout=5s" in capsys.readouterr().out


def test_cli_policy_show_bad_config(tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.toml"
    path.write_text("hostname = 5\n", "utf-8")
    assert cli(["policy", "show", "--config", str(path)]) == 78
    assert "hostname" in capsys.readouterr().err


# --- against a real DNS server ---------------------------------------------------------


def block_list() -> Zone:
    return Zone("bl.test", [
        "2.0.0.127 A 127.0.0.2",
        '2.0.0.127 TXT "Listed by the test list, see http://bl.test/127.0.0.2"',
        "4.0.0.127 A 127.255.255.254",  # an error code, not a listing
        f"{query_prefix('::2')} A 127.0.0.3",
    ])


@pytest.fixture(scope="module")
def nsd() -> Iterator[AuthServer]:
    require_dns_server()
    with AuthServer([*standard_zones(), block_list()]) as server:
        yield server


async def test_nsd_dnsbl_listed_and_not_listed(nsd: AuthServer) -> None:
    resolver = DnsResolver(nsd.nameservers, timeout=5)
    policy = Policy([DnsblCheck(resolver, ["bl.test"], timeout=5)])
    verdict = await policy.run(Phase.CONNECT, client("127.0.0.2"))
    assert verdict.action == "reject" and verdict.reply is not None
    assert str(verdict.reply) == ("554 5.7.1 Service unavailable; client [127.0.0.2] listed "
                                  "by bl.test; Listed by the test list, see "
                                  "http://bl.test/127.0.0.2")
    assert (await policy.run(Phase.CONNECT, client("::2"))).action == "reject"
    for ip in ("127.0.0.3", "127.0.0.4", "::3"):
        assert await policy.run(Phase.CONNECT, client(ip)) == ACCEPT, ip


async def test_nsd_forward_confirmed_reverse_dns(nsd: AuthServer) -> None:
    # standard_zones: 127.0.0.2 -> mx1.example.test -> 127.0.0.2, and 127.0.0.3 ->
    # mx2.example.test whose A is 127.0.0.3; 127.0.0.9 has no PTR at all.
    resolver = DnsResolver(nsd.nameservers, timeout=5)
    check = FcrdnsCheck(resolver, timeout=5)
    for ip, name in (("127.0.0.2", "mx1.example.test"), ("127.0.0.3", "mx2.example.test"),
                     ("127.0.0.9", "unknown")):
        c = client(ip)
        assert await check.run(c) is None
        assert c.ptr == name


@contextlib.contextmanager
def silent_list() -> Iterator[FaultServer]:
    with FaultServer([block_list()], address="127.0.0.55") as s:
        s.set_fault("2.0.0.127.bl.test", "timeout")
        yield s


async def test_dnsbl_that_never_answers_is_no_opinion_when_dns_gives_up_first() -> None:
    with silent_list() as server:
        events = Events()
        resolver = DnsResolver(server.nameservers, timeout=0.3)
        policy = Policy([DnsblCheck(resolver, ["bl.test"], timeout=5, log=events)], log=events)
        assert await policy.run(Phase.CONNECT, client("127.0.0.2")) == ACCEPT
        assert events.about("dnsbl")[0]["zone"] == "bl.test"


async def test_dnsbl_list_slower_than_the_check_is_ignored_not_451() -> None:
    # The resolver would wait 5s; the check stops asking at 80% of its 0.5s, so a list
    # that hangs is ignored (and logged), while a list that answers still counts.
    with silent_list() as server:
        events = Events()
        resolver = DnsResolver(server.nameservers, timeout=5)
        policy = Policy([DnsblCheck(resolver, ["bl.test"], timeout=0.5, log=events)],
                        log=events)
        started = time.monotonic()
        assert await policy.run(Phase.CONNECT, client("127.0.0.2")) == ACCEPT
        assert time.monotonic() - started < 2
        assert "in time" in events.about("dnsbl")[0]["error"]
        assert (await policy.run(Phase.CONNECT, client("::2"))).action == "reject"


async def test_reverse_dns_slower_than_the_check_is_unknown_not_451() -> None:
    with FaultServer([Zone("0.0.127.in-addr.arpa", ["2 PTR mx1.example.test."])],
                     faults={"2.0.0.127.in-addr.arpa": "timeout"}, address="127.0.0.55") as s:
        events = Events()
        policy = Policy([FcrdnsCheck(DnsResolver(s.nameservers, timeout=5), timeout=0.5,
                                     log=events)], log=events)
        c = client("127.0.0.2")
        assert await policy.run(Phase.CONNECT, c) == ACCEPT
        assert c.ptr == "unknown" and "in time" in events.about("fcrdns")[0]["error"]


# --- inline decisions (what the session asks at EHLO and MAIL) -----------------------------


def test_instant_phases_are_those_whose_checks_all_decide_without_io() -> None:
    r = listing()
    policy = build_policy(config_with(dnsbl_zones=("bl.example",), messages_per_hour_per_ip=1),
                          r)
    assert policy.instant(Phase.HELO) and policy.instant(Phase.MAIL)
    assert not policy.instant(Phase.CONNECT)  # fcrdns and dnsbl ask the DNS
    assert policy.instant(Phase.RCPT)  # no checks at all: trivially instant


def test_decide_gives_the_same_answers_as_run() -> None:
    clock = Clock()
    policy = build_policy(config_with(messages_per_hour_per_ip=1, helo_required_fqdn=True),
                          listing(), clock=clock)
    c = client("192.0.2.7")
    assert policy.decide(Phase.HELO, c, helo="pc17").reply == Reply(
        504, "5.5.2", "<pc17>: Helo command rejected: need fully-qualified hostname")
    assert policy.decide(Phase.HELO, c, helo="pc17.example.org") == ACCEPT
    assert policy.decide(Phase.MAIL, c, sender="a@example.org") == ACCEPT
    refused = policy.decide(Phase.MAIL, c, sender="a@example.org")
    assert refused.action == "tempfail" and refused.check == "rate"
    assert str(refused.reply) == ("451 4.7.1 Error: too many messages from [192.0.2.7] "
                                  "(limit 1 per hour)")


class Broken:
    name = "broken"
    phase = Phase.MAIL
    timeout = 1.0
    detail = ""

    def __init__(self, result: Any = None, error: Exception | None = None) -> None:
        self.result, self.error = result, error

    def decide(self, client: ClientInfo, **fields: Any) -> Any:
        if self.error is not None:
            raise self.error
        return self.result

    async def run(self, client: ClientInfo, **fields: Any) -> Any:
        return self.decide(client, **fields)


@pytest.mark.parametrize("check", [Broken(error=RuntimeError("bug")), Broken(result="yes")])
def test_decide_turns_a_broken_check_into_451(check: Broken) -> None:
    events = Events()
    verdict = Policy([check], log=events).decide(Phase.MAIL, client())
    assert str(verdict.reply) == ("451 4.3.0 Temporary failure in policy check broken; "
                                  "try again later")
    assert len(events.about("broken")) == 1


def test_rate_window_setting_shapes_count_and_reply() -> None:
    clock = Clock()
    policy = build_policy(config_with(messages_per_hour_per_ip=1, rate_window=600.0),
                          listing(), clock=clock)
    c = client("192.0.2.8")
    assert policy.decide(Phase.MAIL, c) == ACCEPT
    assert str(policy.decide(Phase.MAIL, c).reply).endswith("(limit 1 per 10m)")
    clock.now += 601
    assert policy.decide(Phase.MAIL, c) == ACCEPT


def test_reverse_dns_off_drops_the_lookups_unless_required() -> None:
    assert describe(config_with(reverse_dns=False)) == [
        "helo     helo  require_fqdn=no timeout=10s"]
    assert describe(config_with(reverse_dns=False, require_fcrdns=True))[0].startswith(
        "connect  fcrdns  required_on=mx")
