"""DMARC (msgauth/dmarc.py) and the end-of-data decision (msgauth/inbound.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from albatross.dns import Answer, DnsResolver, FakeResolver, Status
from albatross.msgauth.dmarc import (
    Dmarc,
    Policy,
    RecordError,
    aligned,
    author_domain,
    evaluate,
    organizational_domain,
    parse_record,
)
from albatross.msgauth.inbound import AuthResults, check_message
from tests.dnszone import AuthServer, FaultServer, Zone, require_dns_server


def dns(**records: str) -> FakeResolver:
    r = FakeResolver()
    for name, text in records.items():
        r.add_txt(name, text)
    return r


REJECT = dns(**{"_dmarc.example.org":
                "v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@example.org"})


# --- records ------------------------------------------------------------------------------


def test_record_defaults_and_tags() -> None:
    rec = parse_record("v=DMARC1; p=quarantine")
    assert (rec.p, rec.sp, rec.pct, rec.adkim, rec.aspf, rec.fo) == (
        Policy.QUARANTINE, Policy.QUARANTINE, 100, "r", "r", ("0",))
    rec = parse_record("v=DMARC1;p=Reject;sp=none;pct=20;adkim=s;aspf=s;fo=1:d;"
                       " rua=mailto:a@example.org,mailto:b@example.net!10m; ruf=mailto:f@x.org;"
                       " future=whatever;")
    assert (rec.p, rec.sp, rec.pct, rec.adkim, rec.aspf, rec.fo) == (
        Policy.REJECT, Policy.NONE, 20, "s", "s", ("1", "d"))
    assert rec.rua == ("mailto:a@example.org", "mailto:b@example.net!10m")
    assert rec.ruf == ("mailto:f@x.org",)


@pytest.mark.parametrize("text", [
    "p=reject; v=DMARC1", "v=DMARC1; p=block", "v=DMARC1; p=reject; pct=101",
    "v=DMARC1; p=reject; pct=-1", "v=DMARC1; p=reject; adkim=x", "v=DMARC1; p=reject; fo=2",
    "v=DMARC1; p=reject; p=none", "v=DMARC1; p=reject; rua=not a uri", "v=DMARC1",
    "v=DMARC1; p=reject; sp=maybe", "v=DMARC1; p=r\u00e9ject", "v=DMARC1; garbage",
])
def test_record_errors(text: str) -> None:
    with pytest.raises(RecordError):
        parse_record(text)


def test_invalid_p_with_rua_reads_as_none() -> None:  # RFC 7489 §6.6.3 step 6
    rec = parse_record("v=DMARC1; p=bogus; rua=mailto:d@example.org")
    assert rec.p is Policy.NONE and rec.p_invalid


def test_organizational_domain_and_alignment() -> None:
    assert organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert organizational_domain("mail.example.org") == "example.org"
    assert organizational_domain("co.uk") == "co.uk"
    assert aligned("mail.example.org", "example.org", "r")
    assert aligned("a.example.org", "b.example.org", "r")
    assert not aligned("mail.example.org", "example.org", "s")
    assert aligned("Example.ORG", "example.org", "s")
    # a public suffix is nobody's organisation; private PSL entries separate users
    assert not aligned("co.uk", "victim.co.uk", "r")
    assert not aligned("evil.github.io", "victim.github.io", "r")


# --- the From domain ----------------------------------------------------------------------


@pytest.mark.parametrize(("headers", "domain", "problem"), [
    (b"From: Alice <alice@Example.ORG>\r\n", "example.org", ""),
    (b"from:\r\n  \"Al, ice\" <alice@example.org>\r\n", "example.org", ""),
    (b"From: a@example.org, b@example.org\r\n", "example.org", ""),
    (b"Subject: x\r\n", "", "no From"),
    (b"From: a@example.org\r\nFrom: b@evil.example\r\n", "", "2 From"),
    (b"From: a@example.org, b@evil.example\r\n", "", "several domains"),
    (b"From: undisclosed-recipients:;\r\n", "", "no address"),
    (b"From: alice\r\n", "", "has no domain"),
    # obsolete syntax (RFC 5322 §4.5.1: white space before the colon) is still a From
    (b"From : a@example.org\r\nFROM:b@evil.example\r\n", "", "2 From"),
])
def test_author_domain(headers: bytes, domain: str, problem: str) -> None:
    author = author_domain(headers + b"To: b@example.net\r\n\r\nFrom: body@not.header\r\n")
    assert author.domain == domain
    assert problem in author.problem and bool(author.problem) == bool(problem)


# --- evaluation ---------------------------------------------------------------------------


async def test_aligned_spf_passes_relaxed_not_strict() -> None:
    res = await evaluate(REJECT, "example.org", spf=("bounce.example.org", "pass"), dkim=[])
    assert (res.result, res.spf_aligned, res.dkim_aligned) == (Dmarc.PASS, True, False)
    strict = dns(**{"_dmarc.example.org": "v=DMARC1; p=reject; aspf=s"})
    res = await evaluate(strict, "example.org", spf=("bounce.example.org", "pass"), dkim=[])
    assert (res.result, res.disposition) == (Dmarc.FAIL, Policy.REJECT)
    res = await evaluate(strict, "example.org", spf=("example.org", "pass"), dkim=[])
    assert res.result is Dmarc.PASS


async def test_aligned_dkim_passes_relaxed_not_strict() -> None:
    res = await evaluate(REJECT, "example.org", spf=None, dkim=[("mail.example.org", "pass")])
    assert (res.result, res.dkim_aligned) == (Dmarc.PASS, True)
    strict = dns(**{"_dmarc.example.org": "v=DMARC1; p=reject; adkim=s"})
    res = await evaluate(strict, "example.org", spf=None, dkim=[("mail.example.org", "pass")])
    assert res.result is Dmarc.FAIL


async def test_unaligned_passes_fail() -> None:
    res = await evaluate(REJECT, "example.org", spf=("esp.example.net", "pass"),
                         dkim=[("esp.example.net", "pass")])
    assert (res.result, res.policy, res.disposition) == (Dmarc.FAIL, Policy.REJECT,
                                                         Policy.REJECT)


async def test_failing_third_party_signature_above_passing_author_signature() -> None:
    res = await evaluate(REJECT, "example.org", spf=("esp.example.net", "fail"),
                         dkim=[("list.example.net", "fail"), ("example.org", "pass")])
    assert res.result is Dmarc.PASS
    # and a failing author signature does not spoil a passing one for the same domain
    res = await evaluate(REJECT, "example.org", spf=None,
                         dkim=[("example.org", "fail"), ("example.org", "pass")])
    assert res.result is Dmarc.PASS


async def test_no_signature_at_all() -> None:
    # no DKIM result is not a DKIM fail: DMARC fails only because SPF does not align
    res = await evaluate(REJECT, "example.org", spf=("example.org", "pass"), dkim=[])
    assert res.result is Dmarc.PASS
    res = await evaluate(REJECT, "example.org", spf=("example.net", "pass"), dkim=[])
    assert res.result is Dmarc.FAIL


async def test_subdomain_policy_from_the_organisational_record() -> None:
    res = await evaluate(REJECT, "news.example.org", spf=None, dkim=[])
    assert (res.result, res.policy_domain, res.policy) == (
        Dmarc.FAIL, "example.org", Policy.QUARANTINE)
    # a subdomain with its own record uses its own p=
    own = dns(**{"_dmarc.example.org": "v=DMARC1; p=reject; sp=none",
                 "_dmarc.news.example.org": "v=DMARC1; p=quarantine"})
    res = await evaluate(own, "news.example.org", spf=None, dkim=[])
    assert (res.policy_domain, res.policy) == ("news.example.org", Policy.QUARANTINE)


async def test_no_record_is_none_and_two_records_are_none() -> None:
    res = await evaluate(dns(**{"_dmarc.example.org": "not dmarc"}), "example.org",
                         spf=None, dkim=[])
    assert res.result is Dmarc.NONE
    two = FakeResolver()
    two.add_txt("_dmarc.example.org", "v=DMARC1; p=reject")
    two.add_txt("_dmarc.example.org", "v=DMARC1; p=none")
    assert (await evaluate(two, "example.org", spf=None, dkim=[])).result is Dmarc.NONE


async def test_bad_record_is_permerror() -> None:
    res = await evaluate(dns(**{"_dmarc.example.org": "v=DMARC1; p=reject; pct=abc"}),
                         "example.org", spf=None, dkim=[])
    assert res.result is Dmarc.PERMERROR and "pct" in res.reason


async def test_dns_failures_are_temperror() -> None:
    r = FakeResolver()
    r.set_status("_dmarc.example.org", "TXT", Status.TEMPFAIL)
    assert (await evaluate(r, "example.org", spf=None, dkim=[])).result is Dmarc.TEMPERROR
    r2 = FakeResolver()
    r2.set_status("_dmarc.example.org", "TXT", Status.TEMPFAIL)
    res = await evaluate(r2, "news.example.org", spf=None, dkim=[])
    assert res.result is Dmarc.TEMPERROR
    # an aligned check that failed temporarily cannot make DMARC fail
    res = await evaluate(REJECT, "example.org", spf=("example.org", "temperror"),
                         dkim=[("example.org", "temperror")])
    assert (res.result, res.disposition) == (Dmarc.TEMPERROR, Policy.NONE)


async def test_pct_sampling_uses_the_next_less_strict_policy() -> None:
    r = dns(**{"_dmarc.example.org": "v=DMARC1; p=reject; pct=25"})
    inside = await evaluate(r, "example.org", spf=None, dkim=[], random=lambda: 0.2)
    outside = await evaluate(r, "example.org", spf=None, dkim=[], random=lambda: 0.25)
    assert (inside.disposition, inside.sampled_out) == (Policy.REJECT, False)
    assert (outside.disposition, outside.sampled_out) == (Policy.QUARANTINE, True)
    q = dns(**{"_dmarc.example.org": "v=DMARC1; p=quarantine; pct=0"})
    res = await evaluate(q, "example.org", spf=None, dkim=[], random=lambda: 0.0)
    assert res.disposition is Policy.NONE


# --- check_message ------------------------------------------------------------------------


@dataclass(frozen=True)
class Dkim:
    result: str
    domain: str
    selector: str = "s1"
    algorithm: str = "rsa-sha256"
    reason: str = ""


MESSAGE = b"From: Alice <alice@example.org>\r\nSubject: hi\r\n\r\nbody\r\n"


def world(policy: str = "reject") -> FakeResolver:
    r = FakeResolver()
    r.add_txt("example.org", "v=spf1 ip4:192.0.2.0/24 -all")
    r.add_txt("_dmarc.example.org", f"v=DMARC1; p={policy}")
    r.add_txt("mx.example.org", "v=spf1 a -all")
    r.add_a("mx.example.org", "192.0.2.1")
    return r


async def check(resolver: FakeResolver, ip: str = "192.0.2.1", dkim: list[Dkim] | None = None,
                **kw: object) -> AuthResults:
    return await check_message(MESSAGE, client_ip=ip, helo="mx.example.org",
                               mail_from="alice@example.org", ptr="mx.example.org",
                               resolver=resolver, authserv_id="mx.example.net",
                               dkim_results=dkim or [], **kw)  # type: ignore[arg-type]


async def test_check_message_pass() -> None:
    res = await check(world(), enforce=True)
    assert res.action == "accept" and res.reply is None
    header = res.header.decode()
    assert header.startswith("Authentication-Results: mx.example.net;\r\n")
    for part in ("spf=pass", "smtp.mailfrom=alice@example.org", "smtp.helo=mx.example.org",
                 "dkim=none", "dmarc=pass", "header.from=example.org", "iprev=pass",
                 "policy.iprev=192.0.2.1"):
        assert part in header


async def test_check_message_reject_only_when_enforced() -> None:
    res = await check(world(), ip="203.0.113.5", enforce=True)
    assert res.action == "reject"
    assert str(res.reply) == "550 5.7.1 Email rejected per DMARC policy for example.org"
    res = await check(world(), ip="203.0.113.5")
    assert res.action == "accept"
    assert "dmarc=fail" in res.header.decode()


@pytest.mark.parametrize("setting", ["hold", "mark", "accept"])
async def test_check_message_quarantine_setting(setting: str) -> None:
    res = await check(world("quarantine"), ip="203.0.113.5", enforce=True, quarantine=setting)
    assert res.action == setting


async def test_check_message_temporary_dns_failure_never_rejects() -> None:
    r = world()
    r.set_status("example.org", "TXT", Status.TEMPFAIL)
    res = await check(r, ip="203.0.113.5", enforce=True,
                      dkim=[Dkim("temperror", "example.org", reason="key lookup failed")])
    assert res.spf.result == "temperror"
    assert res.dmarc.result is Dmarc.TEMPERROR
    assert res.action == "accept"
    r2 = world()
    r2.set_status("_dmarc.example.org", "TXT", Status.TEMPFAIL)
    res = await check(r2, ip="203.0.113.5", enforce=True)
    assert (res.dmarc.result, res.action) == (Dmarc.TEMPERROR, "accept")


class Stuck(FakeResolver):
    """A resolver whose TXT lookups never end (a server that drops every query)."""

    async def txt(self, name: str, *, domain_spec: bool = False) -> Answer[str]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_check_message_timeout_is_temperror_and_accept() -> None:
    res = await check(Stuck(), ip="203.0.113.5", enforce=True, timeout=0.05)
    assert res.spf.result == "temperror" and "within" in res.spf.reason
    assert res.dmarc.result is Dmarc.TEMPERROR
    assert res.action == "accept"


async def test_check_message_null_sender_uses_helo_for_dmarc() -> None:
    r = world()
    msg = b"From: mailer-daemon@mx.example.org\r\n\r\n"
    r.add_txt("_dmarc.mx.example.org", "v=DMARC1; p=reject")
    res = await check_message(msg, client_ip="192.0.2.1", helo="mx.example.org", mail_from="",
                              ptr="unknown", resolver=r, authserv_id="mx.example.net",
                              dkim_results=[], enforce=True)
    assert res.spf.identity == "helo" and res.spf_helo is None
    assert res.dmarc.result is Dmarc.PASS and res.action == "accept"
    assert res.iprev is not None and res.iprev.result == "fail"


# --- against nsd --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nsd() -> Iterator[AuthServer]:
    require_dns_server()
    zone = Zone("dmarc.test", [
        '_dmarc TXT "v=DMARC1; p=reject; sp=quarantine; pct=100; rua=mailto:r@dmarc.test"',
        '@ TXT "v=spf1 ip4:127.0.0.2 -all"',
    ])
    with AuthServer([zone]) as server:
        yield server


async def test_nsd_organisational_record_and_spf(nsd: AuthServer) -> None:
    resolver = DnsResolver(nsd.nameservers, timeout=5)
    res = await evaluate(resolver, "news.dmarc.test", spf=("dmarc.test", "pass"), dkim=[])
    assert (res.result, res.policy_domain) == (Dmarc.PASS, "dmarc.test")
    msg = b"From: a@news.dmarc.test\r\n\r\n"
    out = await check_message(msg, client_ip="127.0.0.9", helo="h.dmarc.test",
                              mail_from="a@dmarc.test", ptr=None, resolver=resolver,
                              authserv_id="mx.test", dkim_results=[], enforce=True)
    assert out.spf.result == "fail" and out.dmarc.policy is Policy.QUARANTINE
    assert out.action == "mark" and out.iprev is None


async def test_servfail_on_the_dmarc_record_is_temperror_not_reject() -> None:
    zone = Zone("dmarc.test", ['_dmarc TXT "v=DMARC1; p=reject"'])
    with FaultServer([zone], faults={"_dmarc.dmarc.test": "servfail"},
                     address="127.0.0.55") as server:
        resolver = DnsResolver(server.nameservers, timeout=2)
        out = await check_message(b"From: a@dmarc.test\r\n\r\n", client_ip="127.0.0.9",
                                  helo="h.example", mail_from="a@dmarc.test", ptr="unknown",
                                  resolver=resolver, authserv_id="mx.test", dkim_results=[],
                                  enforce=True)
        assert (out.dmarc.result, out.action) == (Dmarc.TEMPERROR, "accept")
