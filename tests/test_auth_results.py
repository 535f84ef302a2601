"""Authentication-Results (msgauth/results.py): our header field and removing forged ones."""

from __future__ import annotations

import email.parser
import email.policy
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from albatross.msgauth.dmarc import Dmarc, DmarcResult, Policy, parse_record
from albatross.msgauth.iprev import iprev
from albatross.msgauth.results import authentication_results, claimed_id, strip_ours
from albatross.msgauth.spf import Spf, SpfResult


@dataclass(frozen=True)
class Dkim:
    result: str
    domain: str
    selector: str
    algorithm: str = "rsa-sha256"
    reason: str = ""
    header_b: str = ""


@dataclass(frozen=True)
class Arc:
    result: str
    reason: str = ""


SPF = SpfResult(Spf.PASS, "mailfrom", "example.org", "alice@example.org", "ip4:192.0.2.0/24")
HELO = SpfResult(Spf.NONE, "helo", "mx.example.org", "postmaster@mx.example.org",
                 reason="mx.example.org publishes no SPF record")
DMARC = DmarcResult(Dmarc.PASS, "example.org", "example.org",
                    parse_record("v=DMARC1; p=reject"), reason="aligned SPF pass")


def test_full_header_golden() -> None:
    header = authentication_results(
        "mx.example.net", spf=[SPF, HELO],
        dkim=[Dkim("pass", "example.org", "s2026a", header_b="AbCdEfGhIjKl"),
              Dkim("fail", "list.example.com", "l1", "ed25519-sha256", "body hash mismatch")],
        dmarc=DMARC, arc=Arc("none"), iprev=iprev("192.0.2.1", "mail.example.org"))
    assert header == (
        b"Authentication-Results: mx.example.net;\r\n"
        b" spf=pass (ip4:192.0.2.0/24) smtp.mailfrom=alice@example.org;\r\n"
        b" spf=none (mx.example.org publishes no SPF record) smtp.helo=mx.example.org;\r\n"
        b" dkim=pass header.d=example.org header.s=s2026a header.a=rsa-sha256\r\n"
        b"  header.b=AbCdEfGh;\r\n"
        b" dkim=fail (body hash mismatch) header.d=list.example.com header.s=l1\r\n"
        b"  header.a=ed25519-sha256;\r\n"
        b" dmarc=pass (p=reject sp=reject dis=none) header.from=example.org;\r\n"
        b" arc=none;\r\n"
        b" iprev=pass policy.iprev=192.0.2.1 (mail.example.org)\r\n")
    # and Python's RFC 5322 parser reads it back as one field with every method
    msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(header + b"\r\n")
    values = msg.get_all("Authentication-Results")
    assert values is not None and len(values) == 1
    assert all(m in str(values[0]) for m in ("spf=pass", "dkim=fail", "iprev=pass"))


def test_no_results_says_none_and_empty_dkim_list_is_dkim_none() -> None:
    assert authentication_results("mx.example.net") == \
        b"Authentication-Results: mx.example.net; none\r\n"
    assert b"dkim=none" in authentication_results("mx.example.net", dkim=[])


def test_dmarc_fail_comment_names_policy_and_sampling() -> None:
    res = DmarcResult(Dmarc.FAIL, "example.org", "example.org",
                      parse_record("v=DMARC1; p=reject; pct=50"), Policy.REJECT,
                      Policy.QUARANTINE, sampled_out=True)
    header = authentication_results("mx.example.net", dmarc=res)
    assert b"dmarc=fail (p=reject sp=reject dis=quarantine pct=50 sampled out)" in header


@pytest.mark.parametrize("sender", [
    "evil\r\nX-Injected: yes@example.org", "a\"b@example.org", "(x)@example.org",
    "a;b=c@example.org", "j\u00f6rg@example.org", "a\x00b@example.org",
])
def test_wire_values_cannot_break_the_field(sender: str) -> None:
    spf = SpfResult(Spf.FAIL, "mailfrom", "example.org", sender, "-all",
                    reason="x)\r\nX-Evil: 1 (")
    header = authentication_results("mx.example.net", spf=spf,
                                    dkim=[Dkim("pass", "d;x=1", "s\r\nX-Evil: 2")])
    text = header.decode("utf-8")
    assert text.endswith("\r\n") and "\x00" not in text
    for line in text.split("\r\n")[1:-1]:
        assert line.startswith(" "), line  # every line after the first is a continuation
    msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(header + b"\r\n")
    assert msg.keys() == ["Authentication-Results"]


@given(st.text(max_size=80), st.text(max_size=80))
def test_any_text_stays_inside_one_field(sender: str, reason: str) -> None:
    spf = SpfResult(Spf.FAIL, "mailfrom", "example.org", sender, reason=reason)
    text = authentication_results("mx.example.net", spf=spf).decode("utf-8")
    lines = text.split("\r\n")
    assert lines[-1] == "" and all(line.startswith(" ") for line in lines[1:-1])
    assert "\r" not in text.replace("\r\n", "") and "\n" not in text.replace("\r\n", "")


# --- strip_ours ---------------------------------------------------------------------------

OURS = "mx.example.net"
BODY = b"\r\nAuthentication-Results: mx.example.net; spf=pass\r\n"  # in the body: untouched


@pytest.mark.parametrize("field", [
    b"Authentication-Results: mx.example.net; spf=pass smtp.mailfrom=a@example.org\r\n",
    b"authentication-results: MX.Example.NET; dkim=pass\r\n",
    b"AUTHENTICATION-RESULTS:mx.example.net;dmarc=pass\r\n",
    b"Authentication-Results: mx.example.net 1; spf=pass\r\n",  # a version number
    b"Authentication-Results: (forged) mx.example.net; spf=pass\r\n",
    b"Authentication-Results: (nested (comment) \\) here) mx.example.net; none\r\n",
    b"Authentication-Results:\r\n mx.example.net;\r\n\tspf=pass\r\n",  # folded
    b"Authentication-Results: \"mx.example.net\"; spf=pass\r\n",  # quoted-string
    b"Authentication-Results: mx.example.net.; spf=pass\r\n",  # trailing dot
    b"Authentication-Results : mx.example.net; spf=pass\r\n",  # obsolete space
    b"Authentication-Results: mx.example.net(c); spf=pass\r\n",
    b"Authentication-Results: mx.example.net\r\n",  # no result at all
    b"Authentication-Results: (unterminated mx.example.net; spf=pass\r\n",
    b"Authentication-Results: mx.example.net; spf=pass\n",  # bare LF
])
def test_strip_ours_removes_hostile_variants(field: bytes) -> None:
    head = b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    tail = b"Subject: hi\r\n"
    message = head + field + tail + BODY
    assert strip_ours(message, OURS) == head + tail + BODY
    # also as the first and last field
    assert strip_ours(field + tail + BODY, OURS) == tail + BODY
    assert strip_ours(head + field + BODY, "MX.EXAMPLE.NET") == head + BODY


@pytest.mark.parametrize("field", [
    b"Authentication-Results: mx.example.com; spf=pass\r\n",  # someone else's
    b"Authentication-Results: mx.example.net.evil; spf=pass\r\n",
    b"Authentication-Results: evil.mx.example.net; spf=pass\r\n",
    b"Authentication-Results: other.example; spf=pass (mx.example.net)\r\n",
    b"ARC-Authentication-Results: i=1; mx.example.net; spf=pass\r\n",
    b"X-Authentication-Results: mx.example.net; spf=pass\r\n",
])
def test_strip_ours_keeps_others(field: bytes) -> None:
    message = b"Subject: hi\r\n" + field + BODY
    assert strip_ours(message, OURS) == message


def test_strip_ours_on_a_header_block_without_body() -> None:
    block = b"Authentication-Results: mx.example.net; none\r\nSubject: x\r\n"
    assert strip_ours(block, OURS) == b"Subject: x\r\n"


def test_claimed_id() -> None:
    assert claimed_id(" (c) example.com 1; none") == "example.com"
    assert claimed_id(' "a b"; none') == "a b"
    assert claimed_id(" (never closed") is None
    assert claimed_id("   ") is None


def test_iprev_results() -> None:
    assert iprev("192.0.2.1", "mail.example.org") is not None
    assert iprev("192.0.2.1", None) is None and iprev("192.0.2.1", "") is None
    unknown = iprev("192.0.2.1", "unknown")
    assert unknown is not None and unknown.result == "fail"
    temporary = iprev("192.0.2.1", "unknown", temporary=True)
    assert temporary is not None and temporary.result == "temperror"
