"""msgauth/dkim.py: our DKIM signatures, checked by verifiers we did not write, and every result
our verification gives.

Our signatures are verified by dkimpy and by Perl's Mail::DKIM, each fetching the keys from
a real nsd with its own DNS code. The golden files in tests/golden/dkim/ pin the signatures
made with the fixed test keys there at a fixed time (RSA PKCS#1 v1.5 and Ed25519 signatures
are deterministic) for the canonicalization edge cases; regenerate them with
UPDATE_GOLDEN=1 after a deliberate change and read the diff. Verification runs against
FakeResolver for the key-record cases and against nsd and FaultServer for DNS.
"""

from __future__ import annotations

import base64
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from albatross.cli import dkim as dkim_cli
from albatross.dns import DnsResolver, FakeResolver, Status
from albatross.errors import ConfigError
from albatross.msgauth import dkimkey
from albatross.msgauth.canon import parse_fields, relaxed_body, relaxed_header, split_message
from albatross.msgauth.dkim import (
    DkimKey,
    DkimResult,
    dns_record,
    load_keys,
    sign,
    signed_header_names,
    signing_domain,
    txt_value,
    verify,
)
from tests.dkimtools import (
    DOMAIN,
    GOLDEN,
    dkimpy_dnsfunc,
    golden_key,
    key_zone,
    perl_has_ed25519,
    perl_verify,
)
from tests.dnszone import AuthServer, FaultServer, Zone, require_dns_server

ROOT = Path(__file__).resolve().parent.parent
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
NOW = 1795867200  # 2026-11-28 08:00:00 UTC: the t= of the golden signatures

RSA = golden_key("rsa", "s202611")
ED = golden_key("ed25519", "e202611")

BASE = (b"From: Alice <alice@dkim.test>\r\n"
        b"To: Bob <bob@example.net>\r\n"
        b"Subject: Quarterly numbers\r\n"
        b"Date: Sat, 28 Nov 2026 08:00:00 +0000\r\n"
        b"Message-ID: <q4@dkim.test>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"\r\n"
        b"Hello Bob,\r\n\r\nthe numbers are in.\r\n")


def fake_resolver(*keys: DkimKey) -> FakeResolver:
    resolver = FakeResolver()
    for key in keys:
        resolver.add_txt(f"{key.selector}._domainkey.{key.domain}", txt_value(key))
    return resolver


def dkimpy_verifies(message: bytes, keys: list[DkimKey]) -> list[bool]:
    """dkimpy's verdict on each signature, with keys handed over directly."""
    records = {f"{k.selector}._domainkey.{k.domain}": txt_value(k).encode() for k in keys}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name.decode().rstrip("."))

    checker = dkimpy.DKIM(message)
    count = len(re.findall(rb"(?im)^dkim-signature:", message.split(b"\r\n\r\n")[0]))
    return [bool(checker.verify(idx=i, dnsfunc=dnsfunc)) for i in range(count)]


# --- canonicalization ------------------------------------------------------------------------


def test_relaxed_header_unfolds_and_squeezes_whitespace() -> None:
    assert relaxed_header(b"SUBJECT ", b"  a\r\n\tlong \t\r\n  subject  ") == \
        b"subject:a long subject\r\n"
    assert relaxed_header(b"To", b"") == b"to:\r\n"


@pytest.mark.parametrize(("body", "expected"), [
    (b"", b""),
    (b"\r\n", b""),
    (b"\r\n\r\n\r\n", b""),
    (b"  \r\n\t\r\n", b""),
    (b"abc", b"abc\r\n"),
    (b"abc  ", b"abc\r\n"),
    (b"a  b\t\tc \r\n", b"a b c\r\n"),
    (b"x\r\n\r\n \r\ny\r\n\r\n\r\n", b"x\r\n\r\n\r\ny\r\n"),
    (b" lead\r\n", b" lead\r\n"),
    ("Grüße \r\n".encode() + b"\xe9t\xe9\r\n", "Grüße\r\n".encode() + b"\xe9t\xe9\r\n"),
])
def test_relaxed_body(body: bytes, expected: bytes) -> None:
    assert relaxed_body(body) == expected


def test_parse_fields_skips_lines_that_are_no_field() -> None:
    block = (b"From x\r\nSubject: a\r\n b\r\nNot a field\r\n continued\r\nTo : c\r\n"
             b"Bad Name: d\r\n")
    assert parse_fields(block) == [(b"Subject", b" a\r\n b"), (b"To ", b" c")]


def test_split_message() -> None:
    assert split_message(b"A: 1\r\n\r\nbody\r\n") == (b"A: 1\r\n", b"body\r\n")
    assert split_message(b"A: 1\r\n") == (b"A: 1\r\n", b"")
    assert split_message(b"\r\nbody") == (b"", b"body")


# --- golden signatures of the edge cases ------------------------------------------------------

CASES: dict[str, bytes] = {
    "plain": BASE,
    "folded-headers": (b"From: Alice\r\n <alice@dkim.test>\r\n"
                       b"To: bob@example.net,\r\n\tcarol@example.net\r\n"
                       b"Subject: a subject that goes on\r\n   and on\r\n\r\nbody\r\n"),
    "trailing-whitespace": (b"From: alice@dkim.test  \r\nSubject:\t spaced \t out \t\r\n\r\n"
                            b"line one   \r\n\tline\t\ttwo\t\r\n   \r\n\r\n"),
    "empty-body": b"From: alice@dkim.test\r\nSubject: nothing\r\n\r\n",
    "no-final-crlf": b"From: alice@dkim.test\r\nSubject: cut\r\n\r\nlast line  ",
    "8bit": ("From: Jörg <jörg@dkim.test>\r\nSubject: Grüße aus Köln\r\n"
             "Content-Type: text/plain; charset=utf-8\r\n"
             "Content-Transfer-Encoding: 8bit\r\n\r\nGrüße, 東京\r\n").encode() +
            b"latin-1: \xe9\xe8\r\n",
    "odd-case-names": (b"fROM: alice@dkim.test\r\nsUbJeCt: odd\r\nMESSAGE-id: <1@dkim.test>\r\n"
                       b"\r\nbody\r\n"),
    "duplicate-headers": (b"From: alice@dkim.test\r\nSubject: first\r\nTo: a@example.net\r\n"
                          b"Subject: second\r\nTo: b@example.net\r\nReceived: by x\r\n"
                          b"Received: by y\r\n\r\nbody\r\n"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_signature(name: str) -> None:
    message = CASES[name]
    headers = sign(message, [RSA, ED], now=NOW)
    path = GOLDEN / f"{name}.eml"
    if UPDATE:
        path.write_bytes(headers + message)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert headers + message == path.read_bytes(), f"{name}: output differs from {path}"
    # A message without a final CRLF gets one when SMTP sends it; that is what arrives.
    sent = headers + message + (b"" if message.endswith(b"\r\n") else b"\r\n")
    assert dkimpy_verifies(sent, [RSA, ED]) == [True, True]


def test_signature_field_layout() -> None:
    headers = sign(BASE, [RSA, ED], now=NOW, expire_after=7 * 86400)
    assert headers.endswith(b"\r\n")
    fields = parse_fields(headers)
    assert [name for name, _ in fields] == [b"DKIM-Signature", b"DKIM-Signature"]
    for line in headers.split(b"\r\n"):
        assert len(line) <= 78
    for (_, value), key in zip(fields, [RSA, ED], strict=True):
        tags = dict(t.strip().split("=", 1) for t in
                    value.replace(b"\r\n", b"").decode().split(";") if t.strip())
        tags = {k: re.sub(r"\s+", "", v) for k, v in tags.items()}
        assert tags["a"] == key.algorithm and tags["d"] == DOMAIN
        assert tags["s"] == key.selector and tags["c"] == "relaxed/relaxed"
        assert tags["t"] == str(NOW) and tags["x"] == str(NOW + 7 * 86400)
        assert "l" not in tags and "i" not in tags
        names = tags["h"].split(":")
        # present fields once more than they occur, absent ones once: none can be added
        assert names.count("from") == 2 and names.count("subject") == 2
        assert names.count("reply-to") == 1 and names.count("cc") == 1
        assert "received" not in names and "dkim-signature" not in names


def test_header_names_oversign_present_and_absent_fields() -> None:
    fields = parse_fields(b"From: a\r\nSubject: 1\r\nSubject: 2\r\nList-Id: <l>\r\n"
                          b"Resent-From: r\r\nX-Other: o\r\n")
    names = [n.decode() for n in signed_header_names(fields)]
    assert names.count("subject") == 3
    assert names.count("list-id") == 2
    assert names.count("resent-from") == 1
    assert "sender" not in names and "x-other" not in names
    assert names.count("in-reply-to") == 1


def test_sign_refuses_a_message_without_from() -> None:
    with pytest.raises(ValueError, match="From"):
        sign(b"Subject: x\r\n\r\nbody\r\n", [RSA])


def test_bare_lf_message_is_signed_as_crlf() -> None:
    lf = BASE.replace(b"\r\n", b"\n")
    assert sign(lf, [RSA], now=NOW) == sign(BASE, [RSA], now=NOW)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=80),
       fold=st.sampled_from(["", "\r\n ", "\r\n\t", "  \r\n  "]),
       body=st.lists(st.text(st.sampled_from("ab \t\u00e9"), max_size=20), max_size=6),
       tail=st.sampled_from(["", "\r\n", "\r\n\r\n", "  \r\n \r\n"]))
def test_dkimpy_agrees_on_any_whitespace(subject: str, fold: str, body: list[str],
                                          tail: str) -> None:
    message = (f"From: a@dkim.test\r\nSubject: x{fold}{subject}\r\n\r\n" +
               "\r\n".join(body) + tail).encode()
    if not message.endswith(b"\r\n"):
        message += b"\r\n"  # as sent
    assert dkimpy_verifies(sign(message, [ED]) + message, [ED]) == [True]


# --- our signatures, verified by others through the test DNS server --------------------------


@pytest.fixture
def nsd() -> Iterator[AuthServer]:
    require_dns_server()
    with AuthServer([Zone("test", []), key_zone([RSA, ED])]) as server:
        yield server


def test_dkimpy_verifies_rsa_and_ed25519_with_keys_from_nsd(nsd: AuthServer) -> None:
    message = sign(BASE, [RSA, ED]) + BASE
    dnsfunc = dkimpy_dnsfunc(nsd)
    checker = dkimpy.DKIM(message)
    assert checker.verify(idx=0, dnsfunc=dnsfunc)
    assert checker.verify(idx=1, dnsfunc=dnsfunc)
    tampered = message.replace(b"numbers are in", b"numbers are out")
    with pytest.raises(dkimpy.ValidationError, match="body hash"):
        dkimpy.DKIM(tampered).verify(idx=0, dnsfunc=dnsfunc)


@pytest.mark.parametrize("name", ["plain", "folded-headers", "trailing-whitespace",
                                  "empty-body", "8bit", "odd-case-names",
                                  "duplicate-headers"])
def test_mail_dkim_verifies_our_signatures(nsd: AuthServer, tmp_path: Path, name: str) -> None:
    message = sign(CASES[name], [RSA, ED]) + CASES[name]
    lines = perl_verify(message, nsd, tmp_path)
    verdicts = {line.split()[1]: line for line in lines}
    assert set(verdicts) == {RSA.selector, ED.selector}, lines
    assert verdicts[RSA.selector].split()[3] == "pass", lines
    if perl_has_ed25519():
        assert verdicts[ED.selector].split()[3] == "pass", lines
    # else: Debian 12's Mail::DKIM (1.20230212) predates its Ed25519 support; dkimpy
    # checks those signatures above.


def test_mail_dkim_sees_a_tampered_message_fail(nsd: AuthServer, tmp_path: Path) -> None:
    message = sign(BASE, [RSA]) + BASE
    lines = perl_verify(message.replace(b"Quarterly", b"Monthly"), nsd, tmp_path)
    assert len(lines) == 1 and lines[0].split()[3] == "fail", lines


async def test_our_verify_through_nsd(nsd: AuthServer) -> None:
    resolver = DnsResolver(nsd.nameservers, timeout=3.0)
    results = await verify(sign(BASE, [RSA, ED]) + BASE, resolver)
    assert [(r.result, r.selector, r.algorithm) for r in results] == [
        ("pass", RSA.selector, "rsa-sha256"), ("pass", ED.selector, "ed25519-sha256")]


# --- verification results --------------------------------------------------------------------


async def test_verify_good_and_unsigned() -> None:
    resolver = fake_resolver(RSA, ED)
    assert await verify(BASE, resolver) == []
    results = await verify(sign(BASE, [ED]) + BASE, resolver)
    assert results == [DkimResult("pass", DOMAIN, ED.selector, "ed25519-sha256", "",
                                  results[0].header_b)]
    assert len(results[0].header_b) == 12


@pytest.mark.parametrize(("change", "reason"), [
    ((b"the numbers are in", b"the numbers are out"), "body hash"),
    ((b"Subject: Quarterly numbers", b"Subject: Quarterly Numbers"), "did not verify"),
    # oversigning: a second Subject or a Reply-To cannot be slipped in
    ((b"Subject:", b"Subject: Urgent\r\nSubject:"), "did not verify"),
    ((b"Date:", b"Reply-To: mallory@evil.example\r\nDate:"), "did not verify"),
])
async def test_verify_tampered(change: tuple[bytes, bytes], reason: str) -> None:
    message = sign(BASE, [RSA, ED]) + BASE
    results = await verify(message.replace(*change), fake_resolver(RSA, ED))
    assert [r.result for r in results] == ["fail", "fail"]
    assert all(reason in r.reason for r in results)


async def test_unsigned_fields_may_be_added() -> None:
    message = sign(BASE, [RSA]) + BASE
    added = b"Received: by relay\r\nX-Spam: no\r\n" + message
    assert [r.result for r in await verify(added, fake_resolver(RSA))] == ["pass"]


async def test_verify_key_record_problems() -> None:
    resolver = FakeResolver()
    resolver.add_txt(f"{ED.selector}._domainkey.{DOMAIN}", "v=DKIM1; k=ed25519; p=")
    resolver.add_txt(f"{RSA.selector}._domainkey.{DOMAIN}", txt_value(ED))  # wrong type
    results = await verify(sign(BASE, [RSA, ED]) + BASE, resolver)
    assert [r.result for r in results] == ["permerror", "permerror"]
    assert "does not match" in results[0].reason and "revoked" in results[1].reason
    missing = await verify(sign(BASE, [RSA]) + BASE, FakeResolver())
    assert missing[0].result == "permerror" and "no key" in missing[0].reason


async def test_verify_garbage_key_record() -> None:
    resolver = FakeResolver()
    resolver.add_txt(f"{RSA.selector}._domainkey.{DOMAIN}", "v=DKIM1; k=rsa; p=AAAA!!")
    results = await verify(sign(BASE, [RSA]) + BASE, resolver)
    assert results[0].result == "permerror"


async def test_verify_rsa_sha1_is_policy() -> None:
    message = dkimpy.sign(BASE, RSA.selector.encode(), DOMAIN.encode(), RSA.pkcs1_pem(),
                          signature_algorithm=b"rsa-sha1") + BASE
    results = await verify(message, fake_resolver(RSA))
    assert results[0].result == "policy" and "RFC 8301" in results[0].reason


async def test_verify_malformed_and_expired() -> None:
    resolver = fake_resolver(RSA)
    broken = b"DKIM-Signature: v=1; a=rsa-sha256; d=dkim.test; s=s202611; b=\r\n" + BASE
    assert (await verify(broken, resolver))[0].result == "neutral"
    junk = b"DKIM-Signature: this is not a tag list\r\n" + BASE
    assert (await verify(junk, resolver))[0].result == "neutral"
    old = sign(BASE, [RSA], now=NOW - 30 * 86400, expire_after=86400) + BASE
    expired = await verify(old, resolver)
    assert expired[0].result == "permerror" and "expired" in expired[0].reason


async def test_verify_checks_at_most_ten_signatures() -> None:
    message = b"".join(sign(BASE, [ED]) for _ in range(12)) + BASE
    results = await verify(message, fake_resolver(ED))
    assert len(results) == 10 and {r.result for r in results} == {"pass"}


async def test_verify_temporary_dns_failure_is_temperror() -> None:
    resolver = fake_resolver(ED)
    resolver.set_status(f"{RSA.selector}._domainkey.{DOMAIN}", "TXT", Status.TEMPFAIL)
    results = await verify(sign(BASE, [RSA, ED]) + BASE, resolver)
    assert [r.result for r in results] == ["temperror", "pass"]


@pytest.mark.parametrize("fault", ["servfail", "timeout"])
async def test_verify_servfail_and_timeout_through_a_real_server(fault: str) -> None:
    zone = key_zone([RSA, ED])
    with FaultServer([zone], {f"{RSA.selector}._domainkey.{DOMAIN}": fault}) as server:
        resolver = DnsResolver(server.nameservers, timeout=0.6)
        results = await verify(sign(BASE, [RSA, ED]) + BASE, resolver)
    assert [r.result for r in results] == ["temperror", "pass"]


# --- which messages are signed ---------------------------------------------------------------

TABLE = {"dkim.test": ["s202611"], "xn--bcher-kva.test": ["s1"]}


@pytest.mark.parametrize(("headers", "domain"), [
    (b"From: alice@dkim.test\r\n", "dkim.test"),
    (b"from: \"Smith, Alice\" <Alice@DKIM.Test>\r\n", "dkim.test"),
    (b"From: Alice\r\n <alice@dkim.test>\r\nSubject: x\r\n\r\nFrom: x@other.test\r\n",
     "dkim.test"),
    ("From: anna@bücher.test\r\n".encode(), "xn--bcher-kva.test"),
    (b"From: alice@sub.dkim.test\r\n", None),  # exact match only
    (b"From: alice@other.test\r\n", None),
    (b"From: a@dkim.test, b@dkim.test\r\n", None),
    (b"From: a@dkim.test\r\nFrom: b@dkim.test\r\n", None),
    (b"Subject: no from\r\n", None),
    (b"From: undisclosed\r\n", None),
    (b"From: a@[192.0.2.1]\r\n", None),
])
def test_signing_domain(headers: bytes, domain: str | None) -> None:
    assert signing_domain(headers, TABLE) == domain


# --- key files -------------------------------------------------------------------------------


def test_load_keys_reports_every_bad_key_with_its_path(tmp_path: Path) -> None:
    dkimkey.write_key(tmp_path, "good.test", "s1", dkimkey.generate("ed25519"))
    ec_key = ec.generate_private_key(ec.SECP256R1())
    dkimkey.write_key(tmp_path, "bad.test", "ec", ec_key)  # type: ignore[arg-type]
    (tmp_path / "dkim" / "bad.test" / "junk.key").write_text("not a key")
    (tmp_path / "dkim" / "bad.test" / "dir.key").mkdir()
    table = {"good.test": ["s1"], "bad.test": ["ec", "junk", "dir", "gone"]}
    with pytest.raises(ConfigError) as caught:
        load_keys(table, tmp_path)
    text = str(caught.value)
    for selector in ("ec", "junk", "dir", "gone"):
        assert str(tmp_path / "dkim" / "bad.test" / f"{selector}.key") in text
    assert "EC keys cannot sign DKIM" in text and "keygen bad.test --selector gone" in text
    keys = load_keys({"good.test": ["s1"]}, tmp_path)
    assert [k.algorithm for k in keys["good.test"]] == ["ed25519-sha256"]


def test_key_names_cannot_escape_the_key_directory(tmp_path: Path) -> None:
    for domain, selector in [("../etc", "s1"), ("dkim.test", "../x"), ("dkim.test", ".s"),
                             ("dkim.test", "a/b"), ("", "s1")]:
        with pytest.raises(ValueError):
            dkimkey.key_path(tmp_path, domain, selector)


def test_dns_record_strings_are_at_most_255_octets() -> None:
    record = dns_record(RSA)
    strings = re.findall(r'"([^"]*)"', record)
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings)
    assert "".join(strings) == txt_value(RSA)
    assert record.startswith(f"{RSA.selector}._domainkey.{DOMAIN}. IN TXT ( ")


# --- albatross dkim keygen / show ------------------------------------------------------------


def _record_of(output: str) -> tuple[str, str]:
    """(owner name, joined TXT text) of the record line printed by keygen."""
    line = next(line for line in output.splitlines() if " IN TXT " in line)
    match = re.fullmatch(r'(\S+) IN TXT \( ((?:"[^"]{1,255}" ?)+)\)', line)
    assert match, line
    return match.group(1), "".join(re.findall(r'"([^"]*)"', match.group(2)))


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_keygen_writes_a_private_key_and_prints_its_record(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], algorithm: str) -> None:
    code = dkim_cli.main(["dkim", "keygen", "Dkim.Test", "--selector", "k1",
                          "--algorithm", algorithm, "--data-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    path = tmp_path / "dkim" / DOMAIN / "k1.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    owner, text = _record_of(out)
    assert owner == f"k1._domainkey.{DOMAIN}."
    tags = dict(t.strip().split("=", 1) for t in text.split(";"))
    assert tags["v"] == "DKIM1" and tags["k"] == algorithm
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    public = private.public_key()
    if algorithm == "rsa":
        assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048
        published = serialization.load_der_public_key(base64.b64decode(tags["p"]))
        assert published.public_numbers() == public.public_numbers()  # type: ignore[union-attr]
    else:
        assert isinstance(public, ed25519.Ed25519PublicKey)
        assert base64.b64decode(tags["p"]) == public.public_bytes_raw()
    assert f'sign = {{ "{DOMAIN}" = ["k1"] }}' in out


def test_keygen_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["dkim", "keygen", DOMAIN, "--selector", "k1", "--data-dir", str(tmp_path)]
    assert dkim_cli.main(args) == 0
    before = (tmp_path / "dkim" / DOMAIN / "k1.key").read_bytes()
    capsys.readouterr()
    assert dkim_cli.main(args) == dkim_cli.EX_CANTCREAT
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "dkim" / DOMAIN / "k1.key").read_bytes() == before


def test_keygen_default_selectors_rotate(tmp_path: Path) -> None:
    import datetime

    day = datetime.date(2026, 11, 28)
    assert dkim_cli.default_selector(tmp_path, DOMAIN, "rsa", day) == "s202611"
    dkimkey.write_key(tmp_path, DOMAIN, "s202611", dkimkey.generate("ed25519"))
    assert dkim_cli.default_selector(tmp_path, DOMAIN, "rsa", day) == "s202611b"
    assert dkim_cli.default_selector(tmp_path, DOMAIN, "ed25519", day) == "e202611"


def test_keygen_bad_domain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dkim_cli.main(["dkim", "keygen", "bad_domain!", "--data-dir",
                          str(tmp_path)]) == dkim_cli.EX_USAGE
    assert dkim_cli.main(["dkim", "keygen", DOMAIN, "--selector", "../x", "--data-dir",
                          str(tmp_path)]) == dkim_cli.EX_USAGE
    assert not (tmp_path / "dkim").exists() or not any((tmp_path / "dkim").rglob("*.key"))


def _albatross(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-m", "albatross", *args], capture_output=True,
                          text=True, env=env, timeout=60)


async def test_keygen_twice_publish_sign_verify(tmp_path: Path) -> None:
    """The whole operator path: two keygens (the second a new default selector), the printed
    records served by nsd, both keys loaded from the sign table, and the signatures checked
    by dkimpy and by our verify through that nsd."""
    require_dns_server()
    first = _albatross("dkim", "keygen", "example.org", "--data-dir", str(tmp_path))
    second = _albatross("dkim", "keygen", "example.org", "--algorithm", "ed25519",
                        "--data-dir", str(tmp_path))
    third = _albatross("dkim", "keygen", "example.org", "--data-dir", str(tmp_path))
    assert first.returncode == second.returncode == third.returncode == 0, first.stderr
    assert "other keys" in third.stdout
    records = [_record_of(done.stdout) for done in (first, second, third)]
    selectors = [owner.split(".")[0] for owner, _ in records]
    assert len(set(selectors)) == 3
    shown = _albatross("dkim", "show", "example.org", "--data-dir", str(tmp_path))
    assert shown.returncode == 0
    for done in (first, second, third):
        line = next(x for x in done.stdout.splitlines() if " IN TXT " in x)
        assert line in shown.stdout.splitlines()
    zone = Zone("example.org", [f'{owner.split(".")[0]}._domainkey TXT "{text[:200]}" '
                                f'"{text[200:]}"' for owner, text in records])
    keys = load_keys({"example.org": selectors}, tmp_path)["example.org"]
    message = BASE.replace(b"alice@dkim.test", b"alice@example.org")
    signed = sign(message, keys) + message
    with AuthServer([zone]) as server:
        results = await verify(signed, DnsResolver(server.nameservers, timeout=3.0))
        dnsfunc = dkimpy_dnsfunc(server)
        assert all(dkimpy.DKIM(signed).verify(idx=i, dnsfunc=dnsfunc) for i in range(3))
    assert [r.result for r in results] == ["pass", "pass", "pass"]


def test_show_without_keys(tmp_path: Path) -> None:
    done = _albatross("dkim", "show", "example.org", "--data-dir", str(tmp_path))
    assert done.returncode == dkim_cli.EX_NOINPUT and "keygen" in done.stderr


# --- the [dkim] settings ---------------------------------------------------------------------


def test_dkim_config_kinds() -> None:
    from albatross.config import values
    from albatross.config.dkim import DkimConfig

    parse = values.DKIM_SIGN.parse
    assert parse({"Example.ORG": ["s1", "e1", "s1"]}) == {"example.org": ("s1", "e1")}
    for bad in ({"example.org": []}, {"bad_domain": ["s1"]}, {"example.org": ["../x"]},
                {"example.org": "s1"}, ["example.org"], {"example.org": ["S1"]}):
        with pytest.raises(values.Invalid):
            parse(bad)
    assert values.DKIM_SIGN.show({"example.org": ("s1",)}) == '{ "example.org" = ["s1"] }'
    key = values.DKIM_KEY_NAME.parse
    assert key("Example.org/arc1") == "example.org/arc1" and key("") == ""
    for bad in ("example.org", "example.org/", "/arc1", "example.org/a/b", 3):
        with pytest.raises(values.Invalid):
            key(bad)
    assert DkimConfig(arc_seal="example.org/arc1").arc_key == ("example.org", "arc1")
    assert DkimConfig().arc_key is None and DkimConfig().sign == {}
