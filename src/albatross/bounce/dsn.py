"""Building a delivery status notification: the RFC 3464 report, its human-readable words
and the returned message, as one multipart/report (RFC 6522) message.

build_dsn() is a pure function of its arguments: the clock (`now`) is injected and the MIME
boundary is derived from the queue id, so the same inputs always give the same bytes (the
golden files in tests/golden/bounce/ rely on it). Every line ends in CRLF, no line exceeds
998 octets, and every value that came from the wire goes through fields.py first.

Three parts (RFC 6522 §3, RFC 3464 §2):
1. text/plain, UTF-8: what happened to which address, in plain words, the remote reply
   quoted, and what the sender can do. Quoted-printable when not pure ASCII.
2. message/delivery-status: the machine-readable report. Under SMTPUTF8 it becomes
   message/global-delivery-status (RFC 6533 §6), where fields may carry UTF-8.
3. the returned message: the whole of it as message/rfc822 (message/global under
   SMTPUTF8, RFC 6532 §3.7) only when some recipient failed, the sender did not ask for
   RET=HDRS, and it fits within `max_returned`; otherwise its header alone, as
   text/rfc822-headers (message/global-headers under SMTPUTF8).
"""

from __future__ import annotations

import binascii
import hashlib
import re
import textwrap
from dataclasses import dataclass

from albatross.bounce import fields
from albatross.bounce.report import Report, is_mailbox, postmaster_address
from albatross.bounce.wording import explain
from albatross.model import Envelope, Reply

KINDS = ("failure", "delay", "success")

SUBJECTS: dict[str, str] = {
    "failure": "Undelivered Mail Returned to Sender",
    "delay": "Delayed Mail (still being retried)",
    "success": "Successful Mail Delivery Report",
    "postmaster": "Postmaster notice: undeliverable delivery report",
}

# Caps on what a remote server can make us write (RFC 5321 §4.5.3.1.5 lets a reply line
# be 512 octets; a multi-line reply has no limit at all).
MAX_DIAGNOSTIC_CHARS = 1000  # the text of one Diagnostic-Code
MAX_ADDRESS_CHARS = 320  # RFC 5321 §4.5.3.1.3 paths are 256; ORCPT may be longer
MAX_ORCPT_CHARS = 500  # RFC 3461 §4.2
MAX_HOST_CHARS = 255
MAX_QUOTED_LINES = 20  # lines of a remote reply quoted in the human-readable part
MAX_QUOTED_LINE_CHARS = 300
# RFC 5322 §2.1.1: a line is at most 998 octets before its CRLF.
MAX_LINE_OCTETS = 998
# Long header lines in a returned header block are folded into pieces of this many octets.
_FOLD_OCTETS = 900
_WIDTH = 72

_QID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_MTA_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
_STATUS_RE = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
_ADDR_TYPE_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,40}")
_EOL_RE = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class _Returned:
    """What goes back in part 3, and why it is what it is."""

    content: bytes
    full: bool
    reason: str  # "full", "no-failure", "hdrs", "size", "unsafe"
    size: int
    headers_cut: bool


def build_dsn(envelope: Envelope, qid: str, message: bytes, reports: list[Report], *,
              reporting_mta: str, now: float, kind: str = "failure",
              max_returned: int = 100_000, postmaster: str = "postmaster") -> tuple[str, bytes]:
    """Build the DSN for `reports` about the message `qid`; return (recipient, message).

    The recipient is the envelope sender. For a message from the null sender (whose
    failure must not go back to its sender, RFC 5321 §4.5.5) it is the postmaster instead
    (`postmaster`, qualified with `reporting_mta` when it has no domain), and `kind` must
    be "failure". The scheduler sends that notice for a DSN of its own, and never reports
    the notice's own failure, so the postmaster hears of it once.

    `kind` is "failure", "delay" or "success" and picks the subject and opening words;
    the reports may mix actions (failed and delayed recipients in one failure report).
    `now` is the POSIX time of the report (Date, Message-ID). `message` is the stored
    message; more than `max_returned` octets of it are never returned.

    Raises ValueError for arguments that are our own bug rather than wire data: an
    unknown kind, no reports, a malformed queue id or reporting MTA, a sender that
    should_bounce() refuses, a negative max_returned, a time that cannot be written.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown DSN kind {kind!r}")
    if not reports:
        raise ValueError("a DSN needs at least one report")
    if not _QID_RE.fullmatch(qid):
        raise ValueError(f"malformed queue id {qid!r}")
    if not _MTA_RE.fullmatch(reporting_mta):
        raise ValueError(f"reporting MTA is not a host name: {reporting_mta!r}")
    if max_returned < 0:
        raise ValueError("max_returned must not be negative")
    to_postmaster = envelope.sender in ("", "<>")
    if to_postmaster:
        if kind != "failure":
            raise ValueError("only failures of null-sender mail are reported (to postmaster)")
        to = postmaster_address(postmaster, reporting_mta)
    else:
        to = envelope.sender
    if not is_mailbox(to):
        raise ValueError(f"cannot send a DSN to {to!r}")

    utf8 = envelope.smtputf8
    returned = _returned(envelope, message, reports, max_returned)
    text = _human_text(envelope, qid, reports, returned, kind=kind, now=now,
                       reporting_mta=reporting_mta, max_returned=max_returned,
                       to_postmaster=to_postmaster)
    status = _delivery_status(envelope, qid, reports, reporting_mta=reporting_mta, utf8=utf8)
    parts = [_text_part(text), _status_part(status, utf8), _returned_part(returned, utf8)]

    boundary = _boundary(f"=_{qid}.{kind}", parts)

    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        fields.field("To", f"<{to}>"),
        f"Subject: {SUBJECTS['postmaster' if to_postmaster else kind]}",
        f"Date: {fields.date(now)}",
        f"Message-ID: <{qid}.{int(now * 1_000_000)}@{reporting_mta}>",
        # RFC 3834 §5: automatic responders (and bounces to them) look for this.
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
    ]
    out = bytearray("\r\n".join(head).encode("utf-8"))
    out += b"\r\n\r\nThis is a MIME-encapsulated message.\r\n"
    delimiter = f"\r\n--{boundary}\r\n".encode()
    for part in parts:
        out += delimiter
        out += part
    out += f"\r\n--{boundary}--\r\n".encode()
    return to, bytes(out)


def _boundary(base: str, parts: list[bytes]) -> str:
    """`base`, or when some part holds "--" + base (a returned message can hold anything,
    even a guess at our boundary), `base` and a digest of the parts: content cannot contain
    a digest of itself, so the output stays deterministic and the structure intact."""
    boundary = base
    n = 0
    while any(f"--{boundary}".encode() in part for part in parts):
        n += 1
        digest = hashlib.sha256(b"".join(parts)).hexdigest()[:20]
        boundary = f"{base}.{digest}" + (f".{n}" if n > 1 else "")
    return boundary


def mail_params_for(recipient: str, dsn: bytes) -> dict[str, str | None]:
    """The MAIL FROM parameters the DSN needs when it is sent: BODY=8BITMIME when it holds
    8-bit octets (a returned 8-bit message, UTF-8 fields), SMTPUTF8 when its recipient
    (and so its To field) is not ASCII (RFC 6531 §3.4)."""
    params: dict[str, str | None] = {}
    if not dsn.isascii():
        params["BODY"] = "8BITMIME"
    if not recipient.isascii():
        params["SMTPUTF8"] = None
    return params


# --- part 3: the returned message ---------------------------------------------------------

def _split_header(message: bytes) -> tuple[bytes, int]:
    """The header block of `message` with CRLF line ends (ending in CRLF, or empty), and the
    offset where the body starts. Reads no further than the first empty line."""
    lines: list[bytes] = []
    start = 0
    for eol in _EOL_RE.finditer(message):
        line = message[start:eol.start()]
        start = eol.end()
        if not line:
            return b"".join(lines), start
        lines.append(line + b"\r\n")
    if start < len(message):
        lines.append(message[start:] + b"\r\n")
    return b"".join(lines), len(message)


def _cut_header(header: bytes, limit: int) -> tuple[bytes, bool]:
    """`header` cut to at most `limit` octets at the start of a field, never inside one."""
    if len(header) <= limit:
        return header, False
    cut = 0
    for m in re.finditer(rb"\r\n(?=[^ \t])", header[: limit + 1]):
        if m.end() <= limit:
            cut = m.end()
    return header[:cut], True


def _fold_long_lines(data: bytes) -> bytes:
    """Header lines longer than 998 octets folded (a CRLF and a space inserted, RFC 5322
    §2.2.3) without splitting a UTF-8 sequence; NULs dropped."""
    data = data.replace(b"\0", b"")
    out: list[bytes] = []
    for line in data.split(b"\r\n"):
        while len(line) > MAX_LINE_OCTETS:
            at = _FOLD_OCTETS
            while at > 1 and 0x80 <= line[at] <= 0xBF:  # a UTF-8 continuation octet
                at -= 1
            out.append(line[:at])
            line = b" " + line[at:]
        out.append(line)
    return b"\r\n".join(out)


def _returned(envelope: Envelope, message: bytes, reports: list[Report],
              max_returned: int) -> _Returned:
    header, _ = _split_header(message)
    failed = any(r.action == "failed" for r in reports)
    ret = (envelope.mail_params.get("RET") or "").upper()
    size = len(message)
    if not failed:
        # RFC 3461 §4.3: a DSN that reports no failure returns the header only.
        reason = "no-failure"
    elif ret == "HDRS":
        reason = "hdrs"
    elif size > max_returned:
        reason = "size"
    else:
        full = _EOL_RE.sub(b"\r\n", message)
        if full and not full.endswith(b"\r\n"):
            full += b"\r\n"
        # NUL and over-long lines are not allowed in a message/rfc822 part sent as 8bit
        # (RFC 2045 §2.8, RFC 5322 §2.1.1); such a message goes back as its header.
        if b"\0" in full or any(len(x) > MAX_LINE_OCTETS for x in full.split(b"\r\n")):
            reason = "unsafe"
        else:
            return _Returned(full, True, "full", size, False)
    cut, was_cut = _cut_header(header, max_returned)
    return _Returned(_fold_long_lines(cut), False, reason, size, was_cut)


def _returned_part(returned: _Returned, utf8: bool) -> bytes:
    if returned.full:
        ctype = "message/global" if utf8 else "message/rfc822"
        description = "Undelivered message"
    else:
        ctype = "message/global-headers" if utf8 else "text/rfc822-headers"
        description = "Message headers"
    cte = "7bit" if returned.content.isascii() else "8bit"
    head = (f"Content-Description: {description}\r\nContent-Type: {ctype}\r\n"
            f"Content-Transfer-Encoding: {cte}\r\n\r\n")
    return head.encode() + returned.content


# --- part 2: the delivery-status report ---------------------------------------------------

def _status(report: Report) -> str:
    """The Status value: the report's code when it is one, else the reply's, else a
    generic code for the action (RFC 3464 §2.3.4 makes the field mandatory)."""
    for code in (report.status, report.reply.enhanced if report.reply else ""):
        if _STATUS_RE.fullmatch(code):
            return code
    return {"failed": "5.0.0", "delayed": "4.0.0"}.get(report.action, "2.0.0")


def _address_field(name: str, addr_type: str, address: str, utf8: bool) -> str:
    if addr_type.lower() == "utf-8" or not address.isascii():
        # RFC 6533 §3: utf-8 addresses, 7-bit escaped unless the part may carry UTF-8.
        return fields.field(name, "utf-8; " + fields.utf8_address(address, unitext=utf8))
    return fields.field(name, f"{addr_type}; {fields.original(address, utf8=utf8)}")


def _diagnostic(reply: Reply, utf8: bool) -> str:
    code = str(reply.code) if 200 <= reply.code <= 599 else ""
    enhanced = reply.enhanced if _STATUS_RE.fullmatch(reply.enhanced) else ""
    text = fields.plain(reply.text, MAX_DIAGNOSTIC_CHARS, ascii_only=not utf8)
    words = " ".join(w for w in (code, enhanced, text) if w)
    return fields.field("Diagnostic-Code", f"smtp; {words}")


def _recipient_block(report: Report, utf8: bool) -> list[str]:
    block: list[str] = []
    if report.orcpt:
        # RFC 3461 §6.3 (d): Original-Recipient exactly when ORCPT was given, with its
        # value (see fields.original()).
        addr_type, semi, address = report.orcpt.partition(";")
        if not semi or not _ADDR_TYPE_RE.fullmatch(addr_type):
            addr_type, address = "rfc822", report.orcpt
        block.append(_address_field("Original-Recipient", addr_type,
                                    address[:MAX_ORCPT_CHARS], utf8))
    recipient = report.recipient[:MAX_ADDRESS_CHARS]
    if recipient.isascii():
        final = "rfc822; " + fields.plain(recipient, MAX_ADDRESS_CHARS * 5, ascii_only=True)
        block.append(fields.field("Final-Recipient", final))
    else:
        block.append(_address_field("Final-Recipient", "utf-8", recipient, utf8))
    block.append(f"Action: {report.action}")
    block.append(f"Status: {_status(report)}")
    if report.remote_mta:
        block.append(fields.field(
            "Remote-MTA", "dns; " + fields.host(report.remote_mta[:MAX_HOST_CHARS],
                                                ascii_only=not utf8)))
    if report.reply is not None:
        block.append(_diagnostic(report.reply, utf8))
    if report.last_attempt is not None:
        block.append(f"Last-Attempt-Date: {fields.date(report.last_attempt)}")
    if report.action == "delayed" and report.will_retry_until is not None:
        # RFC 3464 §2.3.9: only meaningful for delayed recipients.
        block.append(f"Will-Retry-Until: {fields.date(report.will_retry_until)}")
    return block


def _delivery_status(envelope: Envelope, qid: str, reports: list[Report], *,
                     reporting_mta: str, utf8: bool) -> str:
    head: list[str] = []
    envid = envelope.mail_params.get("ENVID")
    if envid:
        # RFC 3461 §6.3 (a), RFC 3464 §2.2.1: the ENVID, case and spelling preserved.
        head.append(fields.field("Original-Envelope-Id",
                                 fields.original(envid[:MAX_ORCPT_CHARS], utf8=utf8)))
    head.append(f"Reporting-MTA: dns; {reporting_mta}")
    if envelope.arrival > 0:
        head.append(f"Arrival-Date: {fields.date(envelope.arrival)}")
    head.append(f"X-Albatross-Queue-ID: {qid}")
    blocks = ["\r\n".join(head)]
    blocks.extend("\r\n".join(_recipient_block(r, utf8)) for r in reports)
    return "\r\n\r\n".join(blocks) + "\r\n"


def _status_part(status: str, utf8: bool) -> bytes:
    ctype = "message/global-delivery-status" if utf8 else "message/delivery-status"
    body = status.encode("utf-8")
    cte = "" if body.isascii() else "Content-Transfer-Encoding: 8bit\r\n"
    return (f"Content-Description: Delivery report\r\nContent-Type: {ctype}\r\n{cte}\r\n"
            .encode() + body)


# --- part 1: the words for a human ----------------------------------------------------------

def _text_part(text: str) -> bytes:
    raw = text.encode("utf-8")
    if raw.isascii():
        cte = "7bit"
        body = raw
    else:
        # Quoted-printable keeps the text readable and the message 7-bit (RFC 2045 §6.7).
        cte = "quoted-printable"
        body = binascii.b2a_qp(raw.replace(b"\r\n", b"\n"), istext=True)
        body = body.replace(b"\n", b"\r\n")
    head = ("Content-Description: Notification\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: {cte}\r\n\r\n")
    return head.encode() + body


def _wrap(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, _WIDTH, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False) or [""]


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{round(seconds / 86400)} days"
    if seconds >= 2 * 3600:
        return f"{round(seconds / 3600)} hours"
    minutes = max(round(seconds / 60), 1)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def _quoted_reply(report: Report) -> list[str]:
    reply = report.reply
    if reply is None:
        return []
    server = fields.host(report.remote_mta, ascii_only=False) if report.remote_mta else ""
    who = f"The receiving server {server} replied:" if server else "The server replied:"
    lines = _wrap(who, "    ")
    code = str(reply.code) if 200 <= reply.code <= 599 else "???"
    enhanced = reply.enhanced if _STATUS_RE.fullmatch(reply.enhanced) else ""
    texts = reply.text.split("\n")
    shown = texts[:MAX_QUOTED_LINES]
    for i, raw in enumerate(shown):
        line = fields.plain(raw, MAX_QUOTED_LINE_CHARS, ascii_only=False)
        # As on the wire (RFC 5321 §4.2.1): "550-" on every line but the last.
        said = " ".join(w for w in (enhanced, line) if w)
        lines.extend(textwrap.wrap(f"{code}{' ' if i == len(shown) - 1 else '-'}{said}", _WIDTH,
                                   initial_indent="        ",
                                   subsequent_indent="          ") or [""])
        if i == MAX_QUOTED_LINES - 1 and len(texts) > MAX_QUOTED_LINES:
            lines.append(f"        ({len(texts) - MAX_QUOTED_LINES} more lines not shown)")
    return lines


def _recipient_words(report: Report, *, envelope: Envelope, now: float) -> list[str]:
    address = fields.plain(report.recipient, MAX_ADDRESS_CHARS, ascii_only=False)
    status = _status(report)
    why = explain(status)
    lines = [f"<{address}>"]
    if report.action == "failed":
        if status.startswith("4."):
            # A temporary problem that lasted until the message expired.
            tried = (f" for {_duration(now - envelope.arrival)}"
                     if 0 < envelope.arrival <= now else "")
            said = f"We kept trying{tried} and have now given up."
            if status != "4.4.7":
                said += f" The last problem was: {why.what}"
            lines += _wrap("Could not be delivered. " + said, "    ")
        else:
            lines += _wrap(f"Could not be delivered. {why.what}", "    ")
        lines += _wrap(f"What you can do: {why.advice}", "    ")
    elif report.action == "delayed":
        lines += _wrap(f"Not delivered yet. {why.what}", "    ")
        if report.will_retry_until is not None:
            until = fields.date(report.will_retry_until)
            lines += _wrap(f"We will keep trying until {until}.", "    ")
    elif report.action == "delivered":
        lines += _wrap("Delivered.", "    ")
    elif report.action == "relayed":
        lines += _wrap("Handed on to a mail server that does not send delivery reports, so "
                       "you will not hear more about this recipient.", "    ")
    else:  # expanded
        lines += _wrap("Delivered to a mailing list or forwarding address, which passes "
                       "it on to its own recipients. You will not hear more about it.",
                       "    ")
    return lines + _quoted_reply(report)


def _opening(kind: str, reports: list[Report], to_postmaster: bool) -> str:
    failed = sum(r.action == "failed" for r in reports)
    delayed = sum(r.action == "delayed" for r in reports)

    def them(n: int) -> str:
        return "the recipient below" if n == 1 else f"the {n} recipients below"

    if to_postmaster:
        return ("A message from the null sender <> (a delivery report or another automatic "
                "notice) could not be delivered. Such messages are never returned to "
                "their sender, so this notice comes to you, the postmaster, instead.")
    if kind == "failure":
        if failed in (0, len(reports)):
            words = (f"Your message could not be delivered to {them(len(reports))}, and the "
                     "mail system has stopped trying.")
        else:
            words = (f"Your message could not be delivered to {failed} of the "
                     f"{len(reports)} recipients below, and the mail system has stopped "
                     f"trying for {'it' if failed == 1 else 'them'}.")
        if delayed:
            words += (" Delivery to those marked \"Not delivered yet\" is still being "
                      "tried; you do not need to send the message to them again.")
        return words
    if kind == "delay":
        return (f"Your message has not been delivered yet to {them(delayed or len(reports))}. "
                "This is only a warning: you do not need to send it again. The mail "
                "system keeps trying, and will write to you again if it has to give up.")
    return (f"Your message was delivered to {them(len(reports))}. You are receiving this "
            "report because you asked for one.")


def _returned_words(returned: _Returned, max_returned: int) -> str:
    if returned.reason == "full":
        words = "Your message is attached below."
    elif returned.reason == "hdrs":
        words = "As you asked (RET=HDRS), only the headers of your message are attached."
    elif returned.reason == "size":
        words = (f"Your message is {returned.size} bytes, more than the {max_returned} "
                 "bytes returned in these reports, so only its headers are attached.")
    elif returned.reason == "unsafe":
        words = ("Your message contains NUL characters or lines longer than 998 bytes and "
                 "cannot be returned as it is, so only its headers are attached.")
    else:
        words = "The headers of your message are attached below."
    if returned.headers_cut:
        words += " The headers were too long themselves and have been cut short."
    return words


def _human_text(envelope: Envelope, qid: str, reports: list[Report], returned: _Returned, *,
                kind: str, now: float, reporting_mta: str, max_returned: int,
                to_postmaster: bool) -> str:
    lines = [f"This is the mail system at {reporting_mta}.", ""]
    lines += _wrap(_opening(kind, reports, to_postmaster))
    for report in reports:
        lines.append("")
        lines += _recipient_words(report, envelope=envelope, now=now)
    lines.append("")
    returned_words = _returned_words(returned, max_returned)
    if to_postmaster:
        returned_words = returned_words.replace("Your message", "The message").replace(
            "your message", "the message")
        closing = f"The queue ID of the message on {reporting_mta} is {qid}."
    else:
        closing = ("If you need help, forward this whole report to your mail administrator. "
                   f"The queue ID of your message on {reporting_mta} is {qid}.")
    lines += _wrap(returned_words)
    lines.append("")
    lines += _wrap(closing)
    return "\r\n".join(lines) + "\r\n"
