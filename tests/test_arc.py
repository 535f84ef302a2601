"""msgauth/arc.py: ARC sets we seal, checked by dkimpy and Perl's Mail::DKIM::ARC with keys from
nsd, and the chain results our arc_verify gives (none, pass, fail, temperror)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dkim as dkimpy
import pytest

from albatross.dns import DnsResolver, FakeResolver, Status
from albatross.msgauth.arc import ArcResult, arc_seal, arc_verify
from albatross.msgauth.dkim import sign, txt_value
from albatross.msgauth.dkimkey import DkimKey
from tests.dkimtools import DOMAIN, dkimpy_dnsfunc, golden_key, key_zone, perl_verify
from tests.dnszone import AuthServer, Zone, require_dns_server

RSA = golden_key("rsa", "s202611")
ED = golden_key("ed25519", "e202611")
# The forwarder seals with its own key in its own domain.
FWD = golden_key("rsa", "arc1", domain="forward.test")
AUTHSERV = "mx.forward.test"

MESSAGE = (b"From: Alice <alice@dkim.test>\r\nTo: list@forward.test\r\n"
           b"Subject: ARC me\r\nDate: Sat, 28 Nov 2026 08:00:00 +0000\r\n"
           b"Message-ID: <arc@dkim.test>\r\n\r\nForwarded with care.\r\n")


def results(cv: str) -> str:
    return (f"{AUTHSERV}; dkim=pass header.d={DOMAIN} header.s={RSA.selector}; "
            f"spf=pass smtp.mailfrom=alice@dkim.test; arc={cv}")


def fake(*keys: DkimKey) -> FakeResolver:
    resolver = FakeResolver()
    for key in keys:
        resolver.add_txt(f"{key.selector}._domainkey.{key.domain}", txt_value(key))
    return resolver


def signed() -> bytes:
    return sign(MESSAGE, [RSA]) + MESSAGE


def sealed_once() -> bytes:
    message = signed()
    return arc_seal(message, FWD, AUTHSERV, results("none")) + message


@pytest.fixture
def nsd() -> Iterator[AuthServer]:
    require_dns_server()
    zones = [Zone("test", []), key_zone([RSA, ED]), key_zone([FWD], origin="forward.test")]
    with AuthServer(zones) as server:
        yield server


def test_seal_has_the_three_fields_of_instance_one() -> None:
    seal = arc_seal(signed(), FWD, AUTHSERV, results("none"))
    lines = [line for line in seal.split(b"\r\n") if line and line[0] not in b" \t"]
    assert [line.split(b":")[0] for line in lines] == [
        b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results"]
    assert b"i=1; cv=none" in seal and f"d={FWD.domain}".encode() in seal
    assert f"i=1; {AUTHSERV};".encode() in seal and b"spf=pass" in seal
    assert seal.endswith(b"\r\n")


def test_dkimpy_verifies_our_seal_with_keys_from_nsd(nsd: AuthServer) -> None:
    dnsfunc = dkimpy_dnsfunc(nsd)
    cv, _details, reason = dkimpy.arc_verify(sealed_once(), dnsfunc=dnsfunc)
    assert cv == dkimpy.CV_Pass, reason
    # a second forwarder extends the chain
    first = sealed_once()
    second = arc_seal(first, FWD, AUTHSERV, results("pass")) + first
    assert b"i=2; cv=pass" in second
    cv, _details, reason = dkimpy.arc_verify(second, dnsfunc=dnsfunc)
    assert cv == dkimpy.CV_Pass, reason


def test_mail_dkim_arc_verifies_our_seal(nsd: AuthServer, tmp_path: Path) -> None:
    lines = perl_verify(sealed_once(), nsd, tmp_path, mode="arc")
    assert lines and lines[0].split()[1] == "pass", lines
    tampered = sealed_once().replace(b"with care", b"without care")
    lines = perl_verify(tampered, nsd, tmp_path, mode="arc")
    assert lines[0].split()[1] == "fail", lines


async def test_our_arc_verify_through_nsd(nsd: AuthServer) -> None:
    resolver = DnsResolver(nsd.nameservers, timeout=3.0)
    assert await arc_verify(sealed_once(), resolver) == ArcResult("pass", "", 1)


async def test_no_arc_is_none() -> None:
    result = await arc_verify(signed(), fake(RSA))
    assert result.result == "none" and result.cv == "none"


async def test_tampered_chain_fails() -> None:
    resolver = fake(RSA, FWD)
    body = sealed_once().replace(b"with care", b"without care")
    assert (await arc_verify(body, resolver)).result == "fail"
    header = sealed_once().replace(b"Subject: ARC me", b"Subject: ARC you")
    assert (await arc_verify(header, resolver)).result == "fail"
    dropped = b"\r\n".join(line for line in sealed_once().split(b"\r\n")
                           if not line.startswith(b"ARC-Authentication-Results"))
    assert (await arc_verify(dropped, resolver)).result == "fail"


async def test_missing_key_fails_and_dns_failure_is_temperror() -> None:
    assert (await arc_verify(sealed_once(), fake(RSA))).result == "fail"
    resolver = fake(RSA, FWD)
    resolver.set_status(f"{FWD.selector}._domainkey.{FWD.domain}", "TXT", Status.TEMPFAIL)
    result = await arc_verify(sealed_once(), resolver)
    assert result.result == "temperror" and result.cv == "fail"


async def test_a_chain_declared_failed_is_not_extended() -> None:
    first = sealed_once()
    failed = arc_seal(first, FWD, AUTHSERV, results("fail")) + first
    assert b"i=2; cv=fail" in failed
    assert (await arc_verify(failed, fake(RSA, FWD))).result == "fail"
    assert arc_seal(failed, FWD, AUTHSERV, results("fail")) == b""


def test_seal_refuses_ed25519_and_a_foreign_authserv_id() -> None:
    with pytest.raises(ValueError, match="rsa-sha256"):
        arc_seal(signed(), ED, AUTHSERV, results("none"))
    with pytest.raises(ValueError, match="must start with"):
        arc_seal(signed(), FWD, AUTHSERV, "other.example; arc=none")
