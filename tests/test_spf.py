"""SPF (msgauth/spf.py): the openspf RFC 7208 test suite, unit cases, and nsd end to end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from albatross.dns import DnsResolver, FakeResolver, Status
from albatross.msgauth.spf import (
    Spf,
    check_helo,
    check_host,
    check_mail_from,
    is_spf_record,
)
from tests import spfsuite
from tests.dnszone import AuthServer, FaultServer, Zone, require_dns_server

# Every scenario must pass: none is skipped or marked as an expected failure. Nothing in the
# suite tests what RFC 7208 leaves optional in a way we would have to skip: the type-SPF (99)
# scenarios are written so that TXT-only checkers pass them, the Received-SPF header is not
# compared (we report in Authentication-Results, RFC 8601), and where the RFC allows two
# results the suite lists both.
SCENARIOS = spfsuite.load()


def _param(s: spfsuite.Scenario) -> object:
    return pytest.param(s, id=f"{s.section}:{s.name}")


def test_suite_is_complete() -> None:
    # The file holds 203 scenarios in 16 sections; a loader bug must not shrink it.
    assert len(SCENARIOS) == 203
    assert len({s.section for s in SCENARIOS}) == 16


@pytest.mark.parametrize("scenario", [_param(s) for s in SCENARIOS])
async def test_rfc7208_suite(scenario: spfsuite.Scenario) -> None:
    result = await check_mail_from(scenario.zone, scenario.host, scenario.mailfrom,
                                   scenario.helo, default_explanation="DEFAULT",
                                   receiver="receiver.com")
    assert result.result.value in scenario.results, result
    if scenario.explanation is not None:
        assert result.explanation == scenario.explanation


# --- unit cases on FakeResolver ---------------------------------------------------------


def zone(**txt: str) -> FakeResolver:
    r = FakeResolver()
    for name, text in txt.items():
        r.add_txt(name.replace("_", "."), text)
    return r


async def test_pass_names_the_mechanism_and_counts_lookups() -> None:
    r = FakeResolver()
    r.add_txt("example.org", "v=spf1 a:mail.example.org ip4:192.0.2.0/24 -all")
    r.add_a("mail.example.org", "198.51.100.7")
    res = await check_mail_from(r, "192.0.2.9", "alice@example.org", "mx.example.net")
    assert (res.result, res.mechanism, res.identity, res.domain) == (
        Spf.PASS, "ip4:192.0.2.0/24", "mailfrom", "example.org")
    assert res.lookups == 1 and res.void_lookups == 0
    res = await check_mail_from(r, "198.51.100.7", "alice@example.org", "mx.example.net")
    assert (res.result, res.mechanism) == (Spf.PASS, "a:mail.example.org")
    res = await check_mail_from(r, "203.0.113.1", "alice@example.org", "mx.example.net",
                                default_explanation="not allowed")
    assert (res.result, res.mechanism, res.explanation) == (Spf.FAIL, "-all", "not allowed")


async def test_exp_explanation_is_expanded_for_a_fail() -> None:
    r = FakeResolver()
    r.add_txt("example.org", "v=spf1 -all exp=why.example.org")
    r.add_txt("why.example.org", "%{i} may not send for %{d} (%{l})")
    res = await check_mail_from(r, "203.0.113.1", "bob@example.org", "h.example.net")
    assert res.explanation == "203.0.113.1 may not send for example.org (bob)"


async def test_null_sender_checks_the_helo_identity() -> None:
    r = FakeResolver()
    r.add_txt("mx.example.net", "v=spf1 ip4:192.0.2.1 -all")
    res = await check_mail_from(r, "192.0.2.1", "", "mx.example.net")
    assert (res.result, res.identity, res.sender) == (
        Spf.PASS, "helo", "postmaster@mx.example.net")
    assert (await check_helo(r, "192.0.2.2", "mx.example.net")).result is Spf.FAIL
    # an address literal or a single label cannot be checked
    assert (await check_helo(r, "192.0.2.1", "[192.0.2.1]")).result is Spf.NONE
    assert (await check_helo(r, "192.0.2.1", "localhost")).result is Spf.NONE


async def test_ten_lookup_limit() -> None:
    r = FakeResolver()
    names = [f"n{i}.example.org" for i in range(11)]
    r.add_txt("example.org", "v=spf1 " + " ".join(f"a:{n}" for n in names) + " -all")
    for n in names:
        r.add_a(n, "198.51.100.1")
    res = await check_mail_from(r, "192.0.2.1", "a@example.org", "h.example.net")
    assert res.result is Spf.PERMERROR and "more than 10" in res.reason
    # exactly ten is allowed
    r2 = FakeResolver()
    r2.add_txt("example.org", "v=spf1 " + " ".join(f"a:{n}" for n in names[:10]) + " -all")
    for n in names:
        r2.add_a(n, "198.51.100.1")
    res = await check_mail_from(r2, "192.0.2.1", "a@example.org", "h.example.net")
    assert (res.result, res.lookups) == (Spf.FAIL, 10)


async def test_include_chains_count_towards_the_same_limit() -> None:
    r = FakeResolver()
    for i in range(12):
        r.add_txt(f"i{i}.example.org", f"v=spf1 include:i{i + 1}.example.org -all")
    res = await check_mail_from(r, "192.0.2.1", "a@i0.example.org", "h.example.net")
    assert res.result is Spf.PERMERROR


async def test_include_loop_ends_in_permerror() -> None:
    r = FakeResolver()
    r.add_txt("example.org", "v=spf1 include:example.org -all")
    res = await check_mail_from(r, "192.0.2.1", "a@example.org", "h.example.net")
    assert res.result is Spf.PERMERROR


async def test_two_void_lookups_allowed_a_third_is_permerror() -> None:
    r = FakeResolver()
    r.add_txt("two.example.org", "v=spf1 a:x1.example.org a:x2.example.org ?all")
    r.add_txt("three.example.org",
              "v=spf1 a:x1.example.org a:x2.example.org mx:x3.example.org ?all")
    res = await check_mail_from(r, "192.0.2.1", "a@two.example.org", "h.example.net")
    assert (res.result, res.void_lookups) == (Spf.NEUTRAL, 2)
    res = await check_mail_from(r, "192.0.2.1", "a@three.example.org", "h.example.net")
    assert res.result is Spf.PERMERROR and "void" in res.reason


async def test_dns_failure_is_temperror_never_fail() -> None:
    r = FakeResolver()
    r.set_status("example.org", "TXT", Status.TEMPFAIL)
    res = await check_mail_from(r, "192.0.2.1", "a@example.org", "h.example.net")
    assert res.result is Spf.TEMPERROR
    r2 = FakeResolver()
    r2.add_txt("example.org", "v=spf1 a:slow.example.org -all")
    r2.set_status("slow.example.org", "A", Status.TEMPFAIL)
    res = await check_mail_from(r2, "192.0.2.1", "a@example.org", "h.example.net")
    assert res.result is Spf.TEMPERROR


async def test_no_record_none_and_two_records_permerror() -> None:
    r = FakeResolver()
    r.add_txt("plain.example.org", "google-site-verification=abc")
    r.add_txt("two.example.org", "v=spf1 -all")
    r.add_txt("two.example.org", "v=spf1 +all")
    res = await check_mail_from(r, "192.0.2.1", "a@plain.example.org", "h.example.net")
    assert res.result is Spf.NONE
    res = await check_mail_from(r, "192.0.2.1", "a@nx.example.org", "h.example.net")
    assert res.result is Spf.NONE
    res = await check_mail_from(r, "192.0.2.1", "a@two.example.org", "h.example.net")
    assert res.result is Spf.PERMERROR


@pytest.mark.parametrize("record", [
    "v=spf1 ip4:192.0.2.300", "v=spf1 ip4:192.0.2.1/33", "v=spf1 a//129", "v=spf1 foo",
    "v=spf1 include", "v=spf1 a:example.123", "v=spf1 %{x}.example.org", "v=spf1 exists:%",
    "v=spf1 redirect=a.example.org redirect=b.example.org", "v=spf1 a:%{c}.example.org",
    "v=spf1 exists:%{l0}.example.org", "v=spf1 ip4:192.0.2.01",
])
async def test_syntax_errors_are_permerror(record: str) -> None:
    r = FakeResolver()
    r.add_txt("example.org", record)
    res = await check_host(r, "192.0.2.1", "example.org", "a@example.org")
    assert res.result is Spf.PERMERROR, res


async def test_ipv6_client_and_mapped_ipv4_client() -> None:
    r = FakeResolver()
    r.add_txt("example.org", "v=spf1 ip6:2001:db8::/32 a -all")
    r.add_a("example.org", "192.0.2.1")
    assert (await check_host(r, "2001:db8::5", "example.org", "a@example.org")).result \
        is Spf.PASS
    assert (await check_host(r, "::ffff:192.0.2.1", "example.org", "a@example.org")).result \
        is Spf.PASS
    assert (await check_host(r, "2001:db9::5", "example.org", "a@example.org")).result \
        is Spf.FAIL


async def test_ptr_mechanism_needs_a_forward_confirmed_name() -> None:
    r = FakeResolver()
    r.add_txt("example.org", "v=spf1 ptr -all")
    r.add_ptr("192.0.2.1", "mail.example.org")
    r.add_a("mail.example.org", "192.0.2.1")
    r.add_ptr("192.0.2.2", "liar.example.org")  # its A record does not lead back
    r.add_a("liar.example.org", "192.0.2.99")
    assert (await check_host(r, "192.0.2.1", "example.org", "a@example.org")).result \
        is Spf.PASS
    assert (await check_host(r, "192.0.2.2", "example.org", "a@example.org")).result \
        is Spf.FAIL


def test_is_spf_record() -> None:
    assert is_spf_record("v=spf1") and is_spf_record("V=SPF1 -all")
    assert not is_spf_record("v=spf10") and not is_spf_record("v=spf1-all")


# --- against nsd ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nsd() -> Iterator[AuthServer]:
    require_dns_server()
    zone = Zone("spf.test", [
        '@ TXT "v=spf1 include:_spf.spf.test mx -all"',
        '_spf TXT "v=spf1 ip4:127.0.0.8/29 " "ip6:2001:db8::/32 ~all"',
        "@ MX 10 mx1",
        "mx1 A 127.0.0.2",
        '@ TXT "unrelated verification text"',
        # RFC 7208 §7.1 domain-specs with characters no host name holds
        'colon TXT "v=spf1 a:foo:bar/baz.spf.test -all"',
        "foo:bar/baz A 127.0.0.20",
        'foo:bar/baz TXT "v=spf1 +all"',
        'colonmx TXT "v=spf1 mx:colonmx.spf.test -all"',
        "colonmx MX 10 foo:bar/baz",
        'mania TXT "v=spf1 exists:macro%%percent%_space.spf.test -all"',
        "macro%percent\\032space A 127.0.0.1",
    ])
    with AuthServer([zone]) as server:
        yield server


async def test_nsd_include_split_strings_and_mx(nsd: AuthServer) -> None:
    resolver = DnsResolver(nsd.nameservers, timeout=5)
    res = await check_mail_from(resolver, "127.0.0.9", "a@spf.test", "h.spf.test")
    assert (res.result, res.mechanism) == (Spf.PASS, "include:_spf.spf.test")
    res = await check_mail_from(resolver, "127.0.0.2", "a@spf.test", "h.spf.test")
    assert (res.result, res.mechanism) == (Spf.PASS, "mx")
    res = await check_mail_from(resolver, "127.0.0.3", "a@spf.test", "h.spf.test")
    assert (res.result, res.mechanism) == (Spf.FAIL, "-all")


async def test_nsd_domain_spec_names_with_colon_slash_percent_space(nsd: AuthServer) -> None:
    resolver = DnsResolver(nsd.nameservers, timeout=5)
    res = await check_mail_from(resolver, "127.0.0.20", "a@colon.spf.test", "h.spf.test")
    assert (res.result, res.mechanism) == (Spf.PASS, "a:foo:bar/baz.spf.test")
    res = await check_mail_from(resolver, "127.0.0.21", "a@colon.spf.test", "h.spf.test")
    assert (res.result, res.void_lookups) == (Spf.FAIL, 0)
    res = await check_mail_from(resolver, "127.0.0.20", "a@colonmx.spf.test", "h.spf.test")
    assert (res.result, res.mechanism) == (Spf.PASS, "mx:colonmx.spf.test")
    res = await check_mail_from(resolver, "192.0.2.1", "a@mania.spf.test", "h.spf.test")
    assert res.result is Spf.PASS, res
    # The HELO identity stays a host name: its +all record is never read.
    assert (await check_helo(resolver, "127.0.0.20", "foo:bar/baz.spf.test")).result \
        is Spf.NONE


async def test_servfail_from_a_real_server_is_temperror() -> None:
    zone = Zone("spf.test", ['@ TXT "v=spf1 a:broken.spf.test -all"', "broken A 127.0.0.2"])
    with FaultServer([zone], faults={"broken.spf.test": "servfail"},
                     address="127.0.0.55") as server:
        resolver = DnsResolver(server.nameservers, timeout=2)
        res = await check_mail_from(resolver, "127.0.0.2", "a@spf.test", "h.spf.test")
        assert res.result is Spf.TEMPERROR
