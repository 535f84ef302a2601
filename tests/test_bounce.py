"""bounce/: NOTIFY, never a bounce of a bounce, and the DSN messages themselves.

Every DSN built here is parsed back with the standard library's email package
(policy=default), an implementation we did not write, and its structure checked field by
field. The golden files in tests/golden/bounce/ pin the exact bytes; regenerate them with
UPDATE_GOLDEN=1 after a deliberate change and read the diff.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
from collections.abc import Callable
from email.message import EmailMessage, Message
from email.parser import HeaderParser
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from albatross.bounce import (
    SUBJECTS,
    Report,
    build_dsn,
    explain,
    fields,
    is_mailbox,
    mail_params_for,
    postmaster_address,
    should_bounce,
    wanted,
)
from albatross.model import Envelope, Recipient, Reply

GOLDEN = Path(__file__).resolve().parent / "golden" / "bounce"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

QID = "B0ln3k2m9q8r7s6t"
MTA = "mx.albatross.test"
ARRIVAL = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 +0000
NOW = ARRIVAL + 5 * 86400 + 60

MESSAGE = (
    b"Return-Path: <alice@example.com>\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: Lunch on Friday?\r\n"
    b"Date: Tue, 14 Nov 2023 22:13:00 +0000\r\n"
    b"Message-ID: <lunch.1@example.com>\r\n"
    b"\r\n"
    b"Shall we meet at noon?\r\n"
    b"-- \r\n"
    b"Alice\r\n"
)


def envelope(sender: str = "alice@example.com", *rcpts: str, **params: str | None) -> Envelope:
    recipients = [Recipient(a) for a in (rcpts or ("bob@example.org",))]
    return Envelope(sender=sender, recipients=recipients, mail_params=dict(params),
                    arrival=ARRIVAL)


def failed(addr: str = "bob@example.org", status: str = "5.1.1", **kw: object) -> Report:
    reply = kw.pop("reply", Reply(550, status, f"<{addr}>: Recipient address rejected: "
                                  "User unknown in virtual mailbox table"))
    return Report(addr, kw.pop("orcpt", None), "failed", status, reply,  # type: ignore[arg-type]
                  kw.pop("remote_mta", "mx1.example.org"),  # type: ignore[arg-type]
                  NOW - 30, None)


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def status_blocks(part: Message, data: bytes) -> list[Message]:
    """The field blocks of a message/delivery-status or message/global-delivery-status
    part. The stdlib splits the former itself. The latter it reads as one message, with
    8-bit octets as surrogate escapes, so its raw UTF-8 text is cut out of `data` and each
    block parsed with the stdlib's header parser."""
    payload = part.get_payload()
    assert isinstance(payload, list)
    if part.get_content_type() == "message/delivery-status":
        assert all(isinstance(block, Message) for block in payload)
        return [block for block in payload if isinstance(block, Message)]
    assert part.get_content_type() == "message/global-delivery-status"
    boundary = parse(data).get_boundary()
    assert boundary
    raw = data.split(f"\r\n--{boundary}\r\n".encode())[2]
    body = raw.split(b"\r\n\r\n", 1)[1].decode("utf-8")
    return [HeaderParser(policy=email.policy.default).parsestr(chunk)
            for chunk in body.strip("\r\n").split("\r\n\r\n")]


def check_lines(data: bytes) -> None:
    """CRLF only, and no line longer than RFC 5322 §2.1.1 allows."""
    assert b"\r\n" in data
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", data) is None, "bare CR or LF"
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def check_dsn(data: bytes, reports: list[Report], *, utf8: bool = False) -> list[Message]:
    """The structure every DSN must have; returns the delivery-status blocks."""
    check_lines(data)
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["From"] == f"Mail Delivery System <MAILER-DAEMON@{MTA}>"
    assert msg["MIME-Version"] == "1.0"
    assert not msg.defects
    parts = list(msg.iter_parts())
    assert len(parts) == 3
    text, status, returned = parts
    assert text.get_content_type() == "text/plain"
    assert text.get_content_charset() == "utf-8"
    if utf8:
        assert status.get_content_type() == "message/global-delivery-status"
        assert returned.get_content_type() in ("message/global", "message/global-headers")
    else:
        assert status.get_content_type() == "message/delivery-status"
        assert returned.get_content_type() in ("message/rfc822", "text/rfc822-headers")
    blocks = status_blocks(status, data)
    assert len(blocks) == 1 + len(reports)
    assert blocks[0]["Reporting-MTA"] == f"dns; {MTA}"
    for block, report in zip(blocks[1:], reports, strict=True):
        assert block["Action"] == report.action
        assert re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", str(block["Status"]))
        assert str(block["Final-Recipient"]).split(";")[0] in ("rfc822", "utf-8")
    return blocks


def returned_message(msg: EmailMessage) -> Message:
    """The message/rfc822 part's message, as the stdlib parsed it."""
    payload = list(msg.iter_parts())[2].get_payload()
    assert isinstance(payload, list) and isinstance(payload[0], Message)
    return payload[0]


def text_of(data: bytes, *, raw: bool = False) -> str:
    part = next(iter(parse(data).iter_parts()))
    assert isinstance(part, EmailMessage)
    content = part.get_content()
    assert isinstance(content, str)
    assert "\r\n" in content
    return content if raw else " ".join(content.split())  # the words, whatever the wrapping


# --- golden files -----------------------------------------------------------------------------

def case_single_failure() -> tuple[bytes, list[Report]]:
    reports = [failed()]
    return build_dsn(envelope(), QID, MESSAGE, reports, reporting_mta=MTA, now=NOW)[1], reports


def case_mixed() -> tuple[bytes, list[Report]]:
    reports = [
        failed(),
        failed("carol@example.net", "5.2.2", reply=Reply(552, "5.2.2", "Mailbox full"),
               remote_mta="mx.example.net"),
        Report("dave@example.info", None, "delayed", "4.4.1",
               Reply(421, "4.4.1", "Connection timed out"), "mx.example.info", NOW - 60,
               ARRIVAL + 7 * 86400),
        failed("erin@example.biz", "5.4.6", reply=None, remote_mta=None),
    ]
    env = envelope("alice@example.com", "bob@example.org", "carol@example.net",
                   "dave@example.info", "erin@example.biz")
    return build_dsn(env, QID, MESSAGE, reports, reporting_mta=MTA, now=NOW)[1], reports


def case_delay() -> tuple[bytes, list[Report]]:
    reports = [
        Report("bob@example.org", None, "delayed", "4.2.2",
               Reply(452, "4.2.2", "Mailbox over quota, try again later"),
               "mx1.example.org", ARRIVAL + 4 * 3600, ARRIVAL + 5 * 86400),
        Report("frank@example.org", None, "delayed", "4.4.1", None, None,
               ARRIVAL + 4 * 3600, ARRIVAL + 5 * 86400),
    ]
    env = envelope("alice@example.com", "bob@example.org", "frank@example.org")
    return build_dsn(env, QID, MESSAGE, reports, reporting_mta=MTA, now=ARRIVAL + 4 * 3600,
                     kind="delay")[1], reports


def case_success() -> tuple[bytes, list[Report]]:
    reports = [
        Report("bob@example.org", "rfc822;bob@example.org", "delivered", "2.0.0",
               Reply(250, "2.0.0", "Ok: queued as 4SVx1r0Xz2"), "mx1.example.org",
               ARRIVAL + 2, None),
        Report("list@example.org", None, "relayed", "2.0.0",
               Reply(250, "", "OK"), "legacy.example.org", ARRIVAL + 3, None),
    ]
    env = envelope("alice@example.com", "bob@example.org", "list@example.org")
    env.recipients[0].notify = "SUCCESS,FAILURE"
    env.recipients[1].notify = "SUCCESS"
    return build_dsn(env, QID, MESSAGE, reports, reporting_mta=MTA, now=ARRIVAL + 3,
                     kind="success")[1], reports


def case_ret_hdrs() -> tuple[bytes, list[Report]]:
    reports = [failed()]
    env = envelope(RET="HDRS")
    return build_dsn(env, QID, MESSAGE, reports, reporting_mta=MTA, now=NOW)[1], reports


def large_message(size: int) -> bytes:
    line = b"All work and no play makes Jack a dull boy. " * 2 + b"\r\n"
    return MESSAGE + line * (size // len(line))


def case_truncated() -> tuple[bytes, list[Report]]:
    reports = [failed(status="5.3.4", reply=Reply(552, "5.3.4", "Message size exceeds "
                                                  "fixed limit"))]
    return build_dsn(envelope(), QID, large_message(20_000), reports, reporting_mta=MTA,
                     now=NOW, max_returned=10_000)[1], reports


UTF8_MESSAGE = (
    "From: Jörg <jörg@bücher.example>\r\n"
    "To: Zoë <zoë@例え.jp>\r\n"
    "Subject: Grüße\r\n"
    "\r\n"
    "Schöne Grüße aus Köln.\r\n"
).encode()


def case_smtputf8() -> tuple[bytes, list[Report]]:
    reports = [
        Report("zoë@例え.jp", "utf-8;zoë@例え.jp", "failed", "5.1.1",
               Reply(550, "5.1.1", "Unbekannter Empfänger «zoë»"), "mx.例え.jp",
               NOW - 30, None),
        Report("ann@example.org", None, "failed", "5.6.7",
               Reply(553, "5.6.7", "SMTPUTF8 required but not supported"),
               "mx.example.org", NOW - 30, None),
    ]
    env = Envelope(sender="jörg@bücher.example",
                   recipients=[Recipient("zoë@例え.jp", orcpt="utf-8;zoë@例え.jp"),
                               Recipient("ann@example.org")],
                   mail_params={"SMTPUTF8": None, "BODY": "8BITMIME"}, arrival=ARRIVAL)
    return build_dsn(env, QID, UTF8_MESSAGE, reports, reporting_mta=MTA, now=NOW)[1], reports


def case_envid_orcpt() -> tuple[bytes, list[Report]]:
    reports = [
        failed("bob@example.org", orcpt="rfc822;Bob.Smith+lunch@example.org"),
        failed("carol@example.net", orcpt="utf-8;carol@exämple.net"),
        failed("dan@example.net", orcpt="x-private;dan at example"),
    ]
    env = envelope("alice@example.com", ENVID="QQ314159")
    return build_dsn(env, QID, MESSAGE, reports, reporting_mta=MTA, now=NOW)[1], reports


def case_double_bounce() -> tuple[bytes, list[Report]]:
    bounce = (b"From: Mail Delivery System <MAILER-DAEMON@mx.albatross.test>\r\n"
              b"To: <gone@example.com>\r\nSubject: Undelivered Mail Returned to Sender\r\n"
              b"\r\nbody\r\n")
    reports = [failed("gone@example.com", reply=Reply(550, "5.1.1", "No such user"))]
    env = Envelope(sender="", recipients=[Recipient("gone@example.com")], arrival=ARRIVAL)
    return build_dsn(env, QID, bounce, reports, reporting_mta=MTA, now=NOW,
                     postmaster="postmaster")[1], reports


def case_hostile() -> tuple[bytes, list[Report]]:
    reports = [Report(
        "bob@example.org", "rfc822;bob@example.org\r\nX-Injected: 1", "failed",
        "5.1.1\r\nX-Injected: 2",
        Reply(550, "5.1.1\r\n", "line one\r\nX-Injected: 3\r\n\r\nX-Injected: 4\x00\u202egnp.exe"),
        "mx1.example.org\r\nX-Injected: 5", NOW - 30, None)]
    env = envelope(ENVID="id\r\nX-Injected: 6")
    return build_dsn(env, QID, MESSAGE, reports, reporting_mta=MTA, now=NOW)[1], reports


CASES: dict[str, Callable[[], tuple[bytes, list[Report]]]] = {
    "single-failure": case_single_failure,
    "mixed-failed-delayed": case_mixed,
    "delay-warning": case_delay,
    "success": case_success,
    "ret-hdrs": case_ret_hdrs,
    "truncated": case_truncated,
    "smtputf8": case_smtputf8,
    "envid-orcpt": case_envid_orcpt,
    "double-bounce": case_double_bounce,
    "hostile": case_hostile,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    data, reports = CASES[name]()
    path = GOLDEN / f"{name}.eml"
    if UPDATE:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1"
    assert data == path.read_bytes(), f"{name}: output differs from {path}"
    check_dsn(data, reports, utf8=name == "smtputf8")


def test_output_is_deterministic() -> None:
    for make in CASES.values():
        assert make()[0] == make()[0]


def test_single_failure_fields() -> None:
    data, reports = case_single_failure()
    blocks = check_dsn(data, reports)
    msg = parse(data)
    assert msg["To"].addresses[0].addr_spec == "alice@example.com"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Date"] == "Sun, 19 Nov 2023 22:14:20 +0000"
    assert msg["Message-ID"] == f"<{QID}.{int(NOW * 1_000_000)}@{MTA}>"
    assert blocks[0]["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert blocks[0]["X-Albatross-Queue-ID"] == QID
    assert blocks[0]["Original-Envelope-Id"] is None
    rcpt = blocks[1]
    assert rcpt["Final-Recipient"] == "rfc822; bob@example.org"
    assert rcpt["Original-Recipient"] is None  # RFC 3461 §6.3: only when ORCPT was given
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Remote-MTA"] == "dns; mx1.example.org"
    assert rcpt["Diagnostic-Code"] == ("smtp; 550 5.1.1 <bob@example.org>: Recipient address "
                                       "rejected: User unknown in virtual mailbox table")
    assert rcpt["Last-Attempt-Date"] == "Sun, 19 Nov 2023 22:13:50 +0000"
    assert rcpt["Will-Retry-Until"] is None
    returned = list(msg.iter_parts())[2]
    assert returned.get_content_type() == "message/rfc822"
    inner = returned_message(msg)
    assert inner["Subject"] == "Lunch on Friday?"
    assert inner.get_payload() == "Shall we meet at noon?\r\n-- \r\nAlice\r\n"
    words = text_of(data)
    assert "this mailbox does not exist" in words
    assert "Check the address" in words
    assert "550 5.1.1 <bob@example.org>: Recipient address rejected" in words
    assert "Your message is attached below." in words
    assert QID in words


def test_mixed_report_words_and_fields() -> None:
    data, reports = case_mixed()
    blocks = check_dsn(data, reports)
    assert [b["Action"] for b in blocks[1:]] == ["failed", "failed", "delayed", "failed"]
    assert blocks[3]["Will-Retry-Until"] == "Tue, 21 Nov 2023 22:13:20 +0000"
    assert blocks[1]["Will-Retry-Until"] is None
    assert blocks[4]["Remote-MTA"] is None and blocks[4]["Diagnostic-Code"] is None
    words = text_of(data)
    assert "could not be delivered to 3 of the 4 recipients below" in words
    assert 'those marked "Not delivered yet" is still being tried' in words
    assert "mailbox is full" in words
    assert "going round in a loop" in words  # 5.4.6
    assert "We will keep trying until Tue, 21 Nov 2023 22:13:20 +0000." in words


def test_delay_warning() -> None:
    data, reports = case_delay()
    blocks = check_dsn(data, reports)
    msg = parse(data)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    assert all(b["Will-Retry-Until"] == "Sun, 19 Nov 2023 22:13:20 +0000" for b in blocks[1:])
    words = text_of(data)
    assert "do not need to send it again" in words
    assert "We will keep trying until Sun, 19 Nov 2023 22:13:20 +0000." in words
    # RFC 3461 §4.3: no failure reported, so the header alone comes back.
    assert list(msg.iter_parts())[2].get_content_type() == "text/rfc822-headers"


def test_success_report() -> None:
    data, reports = case_success()
    blocks = check_dsn(data, reports)
    msg = parse(data)
    assert msg["Subject"] == "Successful Mail Delivery Report"
    assert blocks[1]["Original-Recipient"] == "rfc822; bob@example.org"
    assert blocks[1]["Diagnostic-Code"] == "smtp; 250 2.0.0 Ok: queued as 4SVx1r0Xz2"
    assert blocks[2]["Diagnostic-Code"] == "smtp; 250 OK"
    assert list(msg.iter_parts())[2].get_content_type() == "text/rfc822-headers"
    words = text_of(data)
    assert "Delivered." in words and "does not send delivery reports" in words


def test_ret_hdrs_returns_the_header_only() -> None:
    data, reports = case_ret_hdrs()
    check_dsn(data, reports)
    part = list(parse(data).iter_parts())[2]
    assert part.get_content_type() == "text/rfc822-headers"
    body = part.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert body == MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n"
    assert b"noon" not in data
    assert "As you asked (RET=HDRS)" in text_of(data)


def test_ret_hdrs_is_case_insensitive_and_ret_full_returns_all() -> None:
    lower = build_dsn(envelope(RET="hdrs"), QID, MESSAGE, [failed()], reporting_mta=MTA,
                      now=NOW)[1]
    assert b"noon" not in lower
    full = build_dsn(envelope(RET="FULL"), QID, MESSAGE, [failed()], reporting_mta=MTA,
                     now=NOW)[1]
    assert b"Shall we meet at noon?" in full


def test_truncated_large_message() -> None:
    data, reports = case_truncated()
    check_dsn(data, reports)
    assert b"Jack a dull boy" not in data
    part = list(parse(data).iter_parts())[2]
    assert part.get_content_type() == "text/rfc822-headers"
    words = text_of(data)
    assert "more than the 10000 bytes" in words
    assert "too large for the receiving mail server" in words


def test_max_returned_limit_is_inclusive() -> None:
    at = build_dsn(envelope(), QID, MESSAGE, [failed()], reporting_mta=MTA, now=NOW,
                   max_returned=len(MESSAGE))[1]
    assert b"Shall we meet at noon?" in at
    over = build_dsn(envelope(), QID, MESSAGE, [failed()], reporting_mta=MTA, now=NOW,
                     max_returned=len(MESSAGE) - 1)[1]
    assert b"Shall we meet at noon?" not in over


def test_huge_header_is_cut_at_a_field_boundary() -> None:
    header = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 50) for i in range(200))
    message = header + b"\r\nbody\r\n"
    data = build_dsn(envelope(), QID, message, [failed()], reporting_mta=MTA, now=NOW,
                     max_returned=1000)[1]
    check_dsn(data, [failed()])
    part = list(parse(data).iter_parts())[2]
    body = part.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert 0 < len(body) <= 1000
    assert body.endswith(b"\r\n") and header.startswith(body)
    assert "cut short" in text_of(data)


def test_returned_message_line_endings_are_normalised() -> None:
    message = b"From: a@example.com\nSubject: lf\r\n\nbare\rcr and lf\nend"
    data = build_dsn(envelope(), QID, message, [failed()], reporting_mta=MTA, now=NOW)[1]
    check_lines(data)
    assert b"\r\nbare\r\ncr and lf\r\nend\r\n" in data


@pytest.mark.parametrize("message", [
    b"Subject: nul\r\n\r\nbinary\x00data\r\n",
    b"Subject: long\r\n\r\n" + b"x" * 1200 + b"\r\n",
])
def test_message_that_cannot_travel_as_8bit_returns_its_header(message: bytes) -> None:
    data = build_dsn(envelope(), QID, message, [failed()], reporting_mta=MTA, now=NOW)[1]
    check_dsn(data, [failed()])
    assert list(parse(data).iter_parts())[2].get_content_type() == "text/rfc822-headers"
    assert b"binary" not in data and b"x" * 1200 not in data
    assert "cannot be returned as it is" in text_of(data)


def test_hostile_header_block_is_folded_and_nul_free() -> None:
    message = b"Subject: " + b"z" * 3000 + b"\r\nX-Nul: a\x00b\r\n\r\nbody\r\n"
    data = build_dsn(envelope(RET="HDRS"), QID, message, [failed()], reporting_mta=MTA,
                     now=NOW)[1]
    check_dsn(data, [failed()])
    assert b"\x00" not in data
    assert b"X-Nul: ab\r\n" in data


def test_eight_bit_message_is_declared_8bit() -> None:
    message = "Subject: caf\u00e9\r\n\r\ncaf\u00e9\r\n".encode("latin-1")
    data = build_dsn(envelope(BODY="8BITMIME"), QID, message, [failed()],
                     reporting_mta=MTA, now=NOW)[1]
    part = list(parse(data).iter_parts())[2]
    assert part["Content-Transfer-Encoding"] == "8bit"
    assert mail_params_for("alice@example.com", data) == {"BODY": "8BITMIME"}
    seven = case_single_failure()[0]
    assert mail_params_for("alice@example.com", seven) == {}


def test_smtputf8_uses_the_global_types() -> None:
    data, reports = case_smtputf8()
    blocks = check_dsn(data, reports, utf8=True)
    msg = parse(data)
    # The stdlib reads 8-bit header octets as surrogate escapes, so check the bytes.
    assert "\r\nTo: <jörg@bücher.example>\r\n".encode() in data
    assert blocks[1]["Final-Recipient"] == "utf-8; zoë@例え.jp"
    assert blocks[1]["Original-Recipient"] == "utf-8; zoë@例え.jp"
    assert blocks[1]["Remote-MTA"] == "dns; mx.xn--r8jz45g.jp"
    assert blocks[1]["Diagnostic-Code"] == "smtp; 550 5.1.1 Unbekannter Empfänger «zoë»"
    assert blocks[2]["Final-Recipient"] == "rfc822; ann@example.org"
    assert list(msg.iter_parts())[2].get_content_type() == "message/global"
    words = text_of(data)
    assert "<zoë@例え.jp>" in words and "internationalised (non-ASCII) addresses" in words
    text_part = next(iter(msg.iter_parts()))
    assert text_part["Content-Transfer-Encoding"] == "quoted-printable"
    assert mail_params_for("jörg@bücher.example", data) == {"BODY": "8BITMIME",
                                                            "SMTPUTF8": None}


def test_non_ascii_address_without_smtputf8_is_escaped() -> None:
    reports = [failed("zoë@example.jp", orcpt="utf-8;zoë@example.jp")]
    data = build_dsn(envelope(), QID, MESSAGE, reports, reporting_mta=MTA, now=NOW)[1]
    blocks = check_dsn(data, reports)
    status = list(parse(data).iter_parts())[1]
    assert status["Content-Transfer-Encoding"] is None  # pure 7-bit
    # RFC 6533 §3 utf-8-addr-xtext.
    assert blocks[1]["Final-Recipient"] == "utf-8; zo\\x{EB}@example.jp"
    assert blocks[1]["Original-Recipient"] == "utf-8; zo\\x{EB}@example.jp"


def test_envid_and_orcpt() -> None:
    data, reports = case_envid_orcpt()
    blocks = check_dsn(data, reports)
    assert blocks[0]["Original-Envelope-Id"] == "QQ314159"
    assert blocks[1]["Original-Recipient"] == "rfc822; Bob.Smith+lunch@example.org"
    assert blocks[2]["Original-Recipient"] == "utf-8; carol@ex\\x{E4}mple.net"
    assert blocks[3]["Original-Recipient"] == "x-private; dan at example"
    assert [b["Final-Recipient"] for b in blocks[1:]] == [
        "rfc822; bob@example.org", "rfc822; carol@example.net", "rfc822; dan@example.net"]


def test_envid_is_repeated_as_the_sender_wrote_it() -> None:
    # ENVID=QQ+2B314159 on the wire; smtp/ stores it decoded.
    data = build_dsn(envelope(ENVID="QQ+314159"), QID, MESSAGE, [failed()],
                     reporting_mta=MTA, now=NOW)[1]
    assert check_dsn(data, [failed()])[0]["Original-Envelope-Id"] == "QQ+314159"


def test_envid_outside_printable_ascii_falls_back_to_xtext() -> None:
    data = build_dsn(envelope(ENVID="a+b=c\u00e9"), QID, MESSAGE, [failed()],
                     reporting_mta=MTA, now=NOW)[1]
    blocks = check_dsn(data, [failed()])
    assert blocks[0]["Original-Envelope-Id"] == "a+2Bb+3Dc+C3+A9"


def test_double_bounce_goes_to_postmaster() -> None:
    data, reports = case_double_bounce()
    check_dsn(data, reports)
    msg = parse(data)
    assert msg["To"].addresses[0].addr_spec == f"postmaster@{MTA}"
    assert msg["Subject"] == SUBJECTS["postmaster"]
    assert "null sender" in text_of(data)
    env = Envelope(sender="", recipients=[Recipient("gone@example.com")])
    to, _ = build_dsn(env, QID, MESSAGE, reports, reporting_mta=MTA, now=NOW,
                      postmaster="hostmaster@example.com")
    assert to == "hostmaster@example.com"


def test_boundary_never_appears_in_the_content() -> None:
    evil = MESSAGE + f"--=_{QID}.failure\r\n--=_{QID}.failure.1--\r\n".encode()
    data = build_dsn(envelope(), QID, evil, [failed()], reporting_mta=MTA, now=NOW)[1]
    msg = parse(data)
    boundary = msg.get_boundary()
    assert boundary and re.fullmatch(rf"=_{QID}\.failure\.[0-9a-f]{{20}}", boundary)
    check_dsn(data, [failed()])
    inner = returned_message(msg)
    assert f"--=_{QID}.failure.1--" in inner.get_payload()


# --- hostile values from the wire ------------------------------------------------------------

def test_hostile_values_never_make_a_field() -> None:
    data, reports = case_hostile()
    blocks = check_dsn(data, reports)
    msg = parse(data)
    for block in blocks:
        assert all(not name.startswith("X-Injected") for name in block)
    for part in msg.walk():
        assert all(not name.startswith("X-Injected") for name in part)
    rcpt = blocks[1]
    assert rcpt["Status"] == "5.0.0"  # neither status nor reply.enhanced is a code
    assert "550-line one 550-X-Injected: 3 550- 550 X-Injected: 4" in text_of(data)
    assert rcpt["Diagnostic-Code"] == (
        "smtp; 550 line one X-Injected: 3 X-Injected: 4\\x{00}\\x{202E}gnp.exe")
    assert rcpt["Remote-MTA"] == "dns; mx1.example.org\\x{20}X-Injected:\\x{20}5"
    assert rcpt["Original-Recipient"] == "rfc822; bob@example.org+0D+0AX-Injected:+201"
    assert blocks[0]["Original-Envelope-Id"] == "id+0D+0AX-Injected:+206"
    assert b"\x00" not in data and "\u202e".encode() not in data


def test_huge_reply_is_capped_and_folded() -> None:
    text = ("word " * 100_000) + ("x" * 5000)
    reports = [failed(reply=Reply(550, "5.1.1", text + "\n" + "second\n" * 1000))]
    data = build_dsn(envelope(), QID, MESSAGE, reports, reporting_mta=MTA, now=NOW)[1]
    blocks = check_dsn(data, reports)
    diag = str(blocks[1]["Diagnostic-Code"])
    assert diag.startswith("smtp; 550 5.1.1 word word")
    assert diag.endswith("...")
    assert len(diag) <= len("smtp; 550 5.1.1 ") + 1000
    assert len(data) < 40_000
    assert "more lines not shown" in text_of(data)


def test_reply_with_one_giant_word_is_folded_within_998() -> None:
    reports = [failed(reply=Reply(550, "5.1.1", "y" * 20_000))]
    data = build_dsn(envelope(), QID, MESSAGE, reports, reporting_mta=MTA, now=NOW)[1]
    check_dsn(data, reports)  # check_lines: no line above 998 octets


def test_invalid_reply_code_is_left_out() -> None:
    reports = [failed(reply=Reply(9999, "9.9.9", "odd"))]
    data = build_dsn(envelope(), QID, MESSAGE, reports, reporting_mta=MTA, now=NOW)[1]
    blocks = check_dsn(data, reports)
    assert blocks[1]["Diagnostic-Code"] == "smtp; odd"
    assert blocks[1]["Status"] == "5.1.1"


@pytest.mark.parametrize(("status", "enhanced", "action", "expected"), [
    ("5.1.1", "5.7.1", "failed", "5.1.1"),
    ("junk", "5.7.1", "failed", "5.7.1"),
    ("", "", "failed", "5.0.0"),
    ("", "", "delayed", "4.0.0"),
    ("", "", "delivered", "2.0.0"),
    ("6.1.1", "", "relayed", "2.0.0"),
])
def test_status_fallbacks(status: str, enhanced: str, action: str, expected: str) -> None:
    reports = [Report("bob@example.org", None, action, status, Reply(550, enhanced, "x"))]
    data = build_dsn(envelope(), QID, MESSAGE, reports, reporting_mta=MTA, now=NOW)[1]
    assert check_dsn(data, reports)[1]["Status"] == expected


_addresses = st.builds(
    lambda local, domain: f"{local}@{domain}",
    st.text(min_size=1, max_size=40),
    st.text(min_size=1, max_size=40),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reports=st.lists(st.builds(
        Report,
        recipient=_addresses,
        orcpt=st.none() | st.text(max_size=80),
        action=st.sampled_from(["failed", "delayed", "delivered", "relayed", "expanded"]),
        status=st.text(max_size=12) | st.sampled_from(["5.1.1", "4.4.1", "2.0.0"]),
        reply=st.none() | st.builds(Reply, code=st.integers(-1000, 10_000),
                                    enhanced=st.text(max_size=12),
                                    text=st.text(max_size=2000)),
        remote_mta=st.none() | st.text(max_size=300),
        last_attempt=st.none() | st.floats(0, 4_000_000_000),
        will_retry_until=st.none() | st.floats(0, 4_000_000_000),
    ), min_size=1, max_size=5),
    utf8=st.booleans(),
    envid=st.none() | st.text(min_size=1, max_size=120),
    kind=st.sampled_from(["failure", "delay", "success"]),
    body=st.binary(max_size=3000),
)
def test_any_input_gives_a_well_formed_dsn(reports: list[Report], utf8: bool,
                                           envid: str | None, kind: str, body: bytes) -> None:
    params: dict[str, str | None] = {"SMTPUTF8": None} if utf8 else {}
    if envid is not None:
        params["ENVID"] = envid
    env = Envelope(sender="alice@example.com", mail_params=params, arrival=ARRIVAL)
    data = build_dsn(env, QID, MESSAGE + body, reports, reporting_mta=MTA, now=NOW,
                     kind=kind, max_returned=2000)[1]
    blocks = check_dsn(data, reports, utf8=utf8)
    if not utf8:
        assert data.split(b"\r\n--=_")[2].isascii()  # the delivery-status part is 7-bit
    for block in blocks:
        for name in block:
            assert name in {"Original-Envelope-Id", "Reporting-MTA", "Arrival-Date",
                            "X-Albatross-Queue-ID", "Original-Recipient", "Final-Recipient",
                            "Action", "Status", "Remote-MTA", "Diagnostic-Code",
                            "Last-Attempt-Date", "Will-Retry-Until"}


# --- argument errors -------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "words"), [
    ({"kind": "bounce"}, "unknown DSN kind"),
    ({"reports": []}, "at least one report"),
    ({"qid": "../etc"}, "malformed queue id"),
    ({"qid": ""}, "malformed queue id"),
    ({"reporting_mta": "bad host\r\n"}, "not a host name"),
    ({"reporting_mta": "-x.example"}, "not a host name"),
    ({"max_returned": -1}, "must not be negative"),
    ({"now": float("nan")}, "timestamp out of range"),
    ({"now": -1.0}, "timestamp out of range"),
    ({"envelope": envelope("a\r\nb@example.com")}, "cannot send a DSN"),
    ({"envelope": envelope("john doe@example.com")}, "cannot send a DSN"),
    ({"envelope": envelope(""), "kind": "delay"}, "only failures"),
    ({"envelope": envelope(""), "postmaster": "post\nmaster"}, "cannot send a DSN"),
])
def test_build_dsn_refuses_bad_arguments(kwargs: dict[str, object], words: str) -> None:
    args: dict[str, object] = {"envelope": envelope(), "qid": QID, "message": MESSAGE,
                               "reports": [failed()], "reporting_mta": MTA, "now": NOW}
    args.update(kwargs)
    with pytest.raises(ValueError, match=words):
        build_dsn(**args)  # type: ignore[arg-type]


def test_report_refuses_unknown_action_and_empty_recipient() -> None:
    with pytest.raises(ValueError, match="unknown DSN action"):
        Report("bob@example.org", None, "bounced", "5.1.1")
    with pytest.raises(ValueError, match="needs a recipient"):
        Report("", None, "failed", "5.1.1")


def test_bad_last_attempt_time_is_refused() -> None:
    report = Report("bob@example.org", None, "failed", "5.1.1", last_attempt=float("inf"))
    with pytest.raises(ValueError, match="timestamp out of range"):
        build_dsn(envelope(), QID, MESSAGE, [report], reporting_mta=MTA, now=NOW)


# --- NOTIFY and who gets a DSN ---------------------------------------------------------------

_ALL = {"failed", "delayed", "delivered", "relayed", "expanded"}
_SUCCESS = {"delivered", "relayed", "expanded"}


@pytest.mark.parametrize(("notify", "expected"), [
    (None, {"failed", "delayed"}),
    ("NEVER", set()),
    ("never", set()),
    ("SUCCESS", _SUCCESS),
    ("FAILURE", {"failed"}),
    ("DELAY", {"delayed"}),
    ("SUCCESS,FAILURE", _SUCCESS | {"failed"}),
    ("SUCCESS,DELAY", _SUCCESS | {"delayed"}),
    ("FAILURE,DELAY", {"failed", "delayed"}),
    ("DELAY,FAILURE,SUCCESS", _ALL),
    ("success, failure", _SUCCESS | {"failed"}),
    ("NEVER,FAILURE", set()),  # invalid, but silence is what the sender meant
])
def test_wanted_for_every_notify_combination(notify: str | None, expected: set[str]) -> None:
    rcpt = Recipient("bob@example.org", notify=notify)
    assert {a for a in _ALL if wanted(rcpt, a)} == expected


def test_wanted_delay_by_default_can_be_turned_off() -> None:
    rcpt = Recipient("bob@example.org")
    assert not wanted(rcpt, "delayed", delay_by_default=False)
    assert wanted(rcpt, "failed", delay_by_default=False)
    assert wanted(Recipient("b@example.org", notify="DELAY"), "delayed", delay_by_default=False)


def test_wanted_refuses_unknown_action() -> None:
    with pytest.raises(ValueError, match="unknown DSN action"):
        wanted(Recipient("bob@example.org"), "bounced")


@pytest.mark.parametrize(("sender", "expected"), [
    ("", False),
    ("<>", False),
    ("alice@example.com", True),
    ('"john doe"@example.com', True),
    ("jörg@bücher.example", True),
    ("john doe@example.com", False),
    ("a\r\nRCPT TO:<x@y>@example.com", False),
    ("a\x00b@example.com", False),
    ("a\u202eb@example.com", False),
    ("a" * 321, False),
])
def test_should_bounce(sender: str, expected: bool) -> None:
    assert should_bounce(envelope(sender)) is expected
    assert is_mailbox(sender) is (expected or sender == "<>")


def test_postmaster_address() -> None:
    assert postmaster_address("postmaster", MTA) == f"postmaster@{MTA}"
    assert postmaster_address("root@example.com", MTA) == "root@example.com"


# --- wording and field helpers ---------------------------------------------------------------

def test_explain_lookup_order() -> None:
    assert "does not exist" in explain("5.1.1").what
    assert explain("4.2.2") == explain("5.2.2")
    assert "too large" in explain("5.3.4").what
    assert "loop" in explain("5.4.6").what
    assert "policy" in explain("5.7.99").what  # unknown detail: the subject's words
    assert explain("5.9.9") == explain("5.0.0") == explain("nonsense")
    assert explain("2.0.0").what == "The message was delivered."


def test_every_status_word_fits_the_text_width() -> None:
    for code in ("5.1.1", "5.1.2", "5.1.10", "5.2.3", "4.4.7", "5.6.7", "5.7.26", "5.5.0"):
        data = build_dsn(envelope(), QID, MESSAGE, [failed(status=code)], reporting_mta=MTA,
                         now=NOW)[1]
        assert max(len(x) for x in text_of(data, raw=True).splitlines()) <= 80


def test_expired_failure_says_how_long() -> None:
    report = Report("bob@example.org", None, "failed", "4.4.1",
                    Reply(421, "4.4.1", "Connection timed out"), "mx1.example.org", NOW)
    words = text_of(build_dsn(envelope(), QID, MESSAGE, [report], reporting_mta=MTA,
                              now=NOW)[1])
    assert "We kept trying for 5 days and have now given up." in words
    assert "The last problem was: The receiving mail server did not answer." in words


def test_field_folds_at_spaces() -> None:
    value = " ".join(["word"] * 60)
    folded = fields.field("Diagnostic-Code", value)
    lines = folded.split("\r\n")
    assert len(lines) > 1 and all(len(x) <= 78 for x in lines)
    assert all(x.startswith(" ") for x in lines[1:])
    assert folded.replace("\r\n", "") == f"Diagnostic-Code: {value}"
    with pytest.raises(ValueError, match="not one line"):
        fields.field("X", "a\nb")


def test_plain_caps_without_cutting_an_escape() -> None:
    assert fields.plain("a\x00" * 10, 12, ascii_only=True) == "a\\x{00}a..."
    assert fields.plain("  a \r\n\t b  ", 50, ascii_only=True) == "a b"
    assert fields.plain("é", 50, ascii_only=False) == "é"
    assert fields.plain("é", 50, ascii_only=True) == "\\x{E9}"


def test_date_and_host() -> None:
    assert fields.date(0) == "Thu, 01 Jan 1970 00:00:00 +0000"
    assert fields.date(253402300799) == "Fri, 31 Dec 9999 23:59:59 +0000"
    with pytest.raises(ValueError):
        fields.date(253402300800)
    assert fields.host("MX1.Example.org.", ascii_only=True) == "MX1.Example.org"
    assert fields.host("[192.0.2.1]", ascii_only=True) == "[192.0.2.1]"
    assert fields.host("bücher.example", ascii_only=True) == "xn--bcher-kva.example"
    assert fields.host("", ascii_only=True) == "unknown"
