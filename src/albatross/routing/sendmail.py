"""Local submission: turn what a `sendmail` caller wrote into an envelope and message bytes.

Pure functions on bytes (plus one bounded reader of a binary stream); the command-line
front end is cli/sendmail.py. The message is never round-tripped through the email
package: the header is split and completed as bytes and the body is kept byte-exact apart
from its line endings, which become CRLF (RFC 5322 §2.3: CR and LF only occur together).

Addresses go through the same RFC 5321 mailbox grammar as SMTP's MAIL and RCPT
(albatross.smtp.address), so the command can never queue an address the server itself
would refuse, and no CR, LF or NUL can reach the envelope or a header we write.
"""

from __future__ import annotations

import os
import pwd
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.header import Header
from email.utils import formatdate, getaddresses, make_msgid
from typing import BinaryIO

from albatross.model import Envelope, Recipient
from albatross.smtp import address as smtp_address

# Bounds on what one invocation reads and parses (ARCHITECTURE.md: every parser bounds what
# it reads). The header block is also what getaddresses() sees, so this bounds its work.
MAX_HEADER_BYTES = 1 << 20
MAX_FULL_NAME = 256
MAX_ENVID = 100  # RFC 3461 §4.4
_READ_LINE = 64 * 1024

_LINE_ENDING = re.compile(rb"\r\n|\r|\n")
_CRLF = b"\r\n"
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                   "!#$%&'*+-/=?^_`{|}~ ")


class SubmissionError(Exception):
    """Something the caller must fix; str() is the message for `sendmail: ...`."""


class UsageError(SubmissionError):
    """A bad option value or no recipients at all (EX_USAGE)."""


class NoRecipients(UsageError):
    """-t found no recipient in the header and none were given as arguments."""


class MessageError(SubmissionError):
    """The message itself is unacceptable (EX_DATAERR)."""


class MessageTooBig(MessageError):
    pass


class AddressError(SubmissionError):
    """A recipient address that is not a mailbox (EX_NOUSER)."""


@dataclass(frozen=True, slots=True)
class Options:
    """What the command line asked for.

    `sender` None means the invoking user; "" is the null sender. `notify`, `ret` and
    `envid` are the DSN requests of -N, -R and -V, already checked by the functions below.
    """

    recipients: tuple[str, ...] = ()
    extract: bool = False
    sender: str | None = None
    full_name: str | None = None
    dot_ends: bool = True
    notify: str | None = None
    ret: str | None = None
    envid: str | None = None


@dataclass(frozen=True, slots=True)
class Invoker:
    """Who runs the command and on which host: the default sender and the trace header."""

    login: str
    uid: int
    hostname: str


def invoking_user(hostname: str) -> Invoker:
    """The real user id's login name, from the password database, not from $USER or
    $LOGNAME, which the caller controls."""
    uid = os.getuid()
    try:
        login = pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry (containers)
        login = f"uid{uid}"
    return Invoker(login=login, uid=uid, hostname=hostname)


# --- input ----------------------------------------------------------------------------

def read_input(stream: BinaryIO, *, dot_ends: bool, limit: int) -> bytes:
    """Read the message from `stream`, at most `limit` bytes (0: no limit).

    With `dot_ends` (no -i), a line holding only "." ends the message, as in classic
    sendmail, and the rest of the stream is left unread; the dot is not part of the
    message and no dot-unstuffing happens (that belongs to SMTP's DATA, not to this
    command).
    """
    chunks: list[bytes] = []
    total = 0
    at_line_start = True
    while True:
        if dot_ends:
            piece = stream.readline(_READ_LINE)
            if at_line_start and piece in (b".", b".\n", b".\r\n"):
                break
            at_line_start = piece.endswith(b"\n")
        else:
            piece = stream.read(_READ_LINE)
        if not piece:
            break
        total += len(piece)
        if limit > 0 and total > limit:
            raise MessageTooBig(f"message is larger than the limit of {limit} bytes")
        chunks.append(piece)
    return b"".join(chunks)


def normalise_line_endings(data: bytes) -> bytes:
    """CRLF, a bare LF (scripts) and a bare CR all become CRLF.

    A bare CR or LF left in a message is what SMTP smuggling (CVE-2023-51764) exploits when
    the message is relayed, so none survives.
    """
    if b"\r" not in data:
        return data.replace(b"\n", _CRLF)
    return _LINE_ENDING.sub(_CRLF, data)


# --- the header -----------------------------------------------------------------------

def _field_name_end(line: bytes) -> int:
    """Index of the colon of a header field line, or -1 if the line is not a field.

    RFC 5322 §3.6.8: a field name is printable US-ASCII except ":"; whitespace before the
    colon is the obsolete syntax of §4.5, still accepted.
    """
    colon = line.find(b":")
    if colon <= 0:
        return -1
    name = line[:colon].rstrip(b" \t")
    if not name or any(b < 33 or b > 126 for b in name):
        return -1
    return colon


def split_message(data: bytes) -> tuple[list[bytes], bytes]:
    """Split CRLF text into header fields (each with its folded lines and final CRLF) and body.

    The header ends at the first empty line (consumed) or at the first line that is not a
    field nor a continuation, which then starts the body (Postfix does the same for mail
    that has no header at all). A leading mbox "From " line is dropped.
    """
    pos = 0
    if data.startswith(b"From "):
        end = data.find(_CRLF)
        pos = len(data) if end < 0 else end + 2
    fields: list[bytes] = []
    while pos < len(data):
        end = data.find(_CRLF, pos)
        stop = len(data) if end < 0 else end
        nxt = len(data) if end < 0 else end + 2
        line = data[pos:stop]
        if pos > MAX_HEADER_BYTES:
            raise MessageError(f"the header is larger than {MAX_HEADER_BYTES} bytes")
        if not line:
            pos = nxt
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + _CRLF
        elif _field_name_end(line) > 0:
            fields.append(line + _CRLF)
        else:
            break
        if b"\0" in line:
            raise MessageError(f"header line {len(fields)} contains a NUL byte")
        pos = nxt
    return fields, data[pos:]


def field_name(field: bytes) -> str:
    """The lower-cased name of a header field."""
    return field[:field.find(b":")].rstrip(b" \t").decode("ascii").lower()


def field_value(field: bytes) -> str:
    """The unfolded value of a header field (RFC 5322 §2.2.3), as text.

    Undecodable bytes become U+FFFD, which no address accepts, so a recipient cannot hide
    behind an invalid encoding.
    """
    raw = field[field.find(b":") + 1:]
    return raw.replace(_CRLF, b"").decode("utf-8", "replace").strip()


def _has_resent_block(fields: Sequence[bytes]) -> bool:
    return any(field_name(f).startswith("resent-") for f in fields)


def header_recipients(fields: Sequence[bytes], hostname: str) -> list[str]:
    """The recipients of `sendmail -t`: To, Cc and Bcc, or, when the message has been
    resent (RFC 5322 §3.6.6), Resent-To, Resent-Cc and Resent-Bcc instead."""
    wanted = ({"resent-to", "resent-cc", "resent-bcc"} if _has_resent_block(fields)
              else {"to", "cc", "bcc"})
    return parse_addresses((field_value(f) for f in fields if field_name(f) in wanted),
                           hostname)


def without_bcc(fields: Sequence[bytes]) -> list[bytes]:
    """The header without Bcc and Resent-Bcc: blind copies must stay blind (RFC 5322 §3.6.3)."""
    return [f for f in fields if field_name(f) not in ("bcc", "resent-bcc")]


# --- addresses ------------------------------------------------------------------------

def check_address(text: str, hostname: str) -> str:
    """A single address as an envelope mailbox; a bare local name gets "@hostname" (what
    Postfix's myorigin does). Raises AddressError."""
    if "\ufffd" in text:
        raise AddressError(f"bad address {_shown(text)}: bytes that are not UTF-8")
    candidate = text if "@" in text else f"{text}@{hostname}"
    try:
        mailbox = smtp_address.parse_mailbox(candidate, smtputf8=True)
    except smtp_address.AddressError as exc:
        raise AddressError(f"bad address {_shown(text)}: {exc.problem}") from None
    return str(mailbox)


def _scan(text: str) -> tuple[list[str], int]:
    """Split at commas outside quoted strings, comments and angle brackets; also count the
    "@" signs outside quoted strings and comments (how many addresses the text names)."""
    items, ats = [], 0
    start, quoted, comment, angle, escaped = 0, False, 0, 0, False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\" and (quoted or comment):
            escaped = True
        elif quoted:
            quoted = ch != '"'
        elif comment:
            comment += {"(": 1, ")": -1}.get(ch, 0)
        elif ch == '"':
            quoted = True
        elif ch == "(":
            comment = 1
        elif ch == "<":
            angle += 1
        elif ch == ">":
            angle = max(0, angle - 1)
        elif ch == "@":
            ats += 1
        elif ch == "," and not angle:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items, ats


def parse_addresses(values: Iterable[str], hostname: str) -> list[str]:
    """Every address in header address lists ("A <a@x>, b@y (c), grp: d@z;"), checked.

    getaddresses() is lenient and silently drops what it cannot parse ("bob@" yields
    nothing), so a list is refused when fewer addresses come out than "@" signs went in:
    a recipient must never vanish without an error.
    """
    out = []
    for value in values:
        found = [addr for _name, addr in getaddresses([value]) if addr]
        if sum(_scan(addr)[1] for addr in found) < _scan(value)[1]:
            raise AddressError(f"cannot parse the address list {_shown(value)}")
        out += [check_address(addr, hostname) for addr in found]
    return out


def argument_addresses(arguments: Iterable[str], hostname: str) -> list[str]:
    """Recipients given as arguments: each an address, "Name <address>", or a comma list
    of them (classic sendmail). Parsed strictly: a typo is an error, never a guess."""
    out = []
    for argument in arguments:
        for item in _scan(argument)[0]:
            text = item.strip()
            if text.endswith(">") and "<" in text:
                text = text[text.rindex("<") + 1:-1].strip()
            if text:
                out.append(check_address(text, hostname))
    return out


def sender_address(text: str, hostname: str) -> str:
    """The -f argument as an envelope sender: "" and "<>" are the null sender."""
    value = text.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    if not value:
        return ""
    try:
        return check_address(value, hostname)
    except AddressError as exc:
        raise UsageError(f"-f: {exc}") from None


def _shown(text: str) -> str:
    """An address for an error message, with control characters made visible."""
    return repr(text[:200])


# --- DSN options (RFC 3461) -----------------------------------------------------------

def dsn_notify(value: str) -> str:
    """-N: "never", or a comma list of success, delay, failure; upper-cased for the envelope."""
    words = [w.strip().upper() for w in value.split(",")]
    if words == ["NEVER"]:
        return "NEVER"
    if not words or any(w not in ("SUCCESS", "DELAY", "FAILURE") for w in words) \
            or len(set(words)) != len(words):
        raise UsageError(f"-N {_shown(value)}: use never, or a list of success, delay, failure")
    return ",".join(words)


def dsn_ret(value: str) -> str:
    """-R: full or hdrs."""
    if value.upper() not in ("FULL", "HDRS"):
        raise UsageError(f"-R {_shown(value)}: use full or hdrs")
    return value.upper()


def dsn_envid(value: str) -> str:
    """-V: an envelope id of printable ASCII (xtext-encoded on the wire later)."""
    if not 0 < len(value) <= MAX_ENVID or not all(33 <= ord(c) <= 126 for c in value):
        raise UsageError(f"-V: the envelope id must be 1 to {MAX_ENVID} printable "
                         "ASCII characters")
    return value


def full_name_phrase(name: str) -> str:
    """-F as the display name of a From field: plain, quoted, or RFC 2047 encoded.

    Control characters (a CR LF would start a new header field) become spaces first.
    """
    cleaned = " ".join("".join(c if c.isprintable() else " " for c in name).split())
    if len(cleaned) > MAX_FULL_NAME:
        raise UsageError(f"-F: the full name is longer than {MAX_FULL_NAME} characters")
    if not cleaned:
        return ""
    if not cleaned.isascii():
        return Header(cleaned, "utf-8").encode(linesep="\r\n")
    if all(c in _ATEXT for c in cleaned):
        return cleaned
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- building the submission ----------------------------------------------------------

def _field(name: str, value: str) -> bytes:
    return f"{name}: {value}".encode() + _CRLF


def complete_header(fields: Sequence[bytes], *, sender: str, full_name: str | None,
                    hostname: str, now: float | None = None) -> list[bytes]:
    """Add From, Date and Message-ID when missing (RFC 5322 §3.6 requires From and Date),
    and Resent-From, Resent-Date and Resent-Message-ID to a resent message lacking them."""
    names = {field_name(f) for f in fields}
    author = sender or f"MAILER-DAEMON@{hostname}"
    phrase = full_name_phrase(full_name) if full_name else ""
    from_value = f"{phrase} <{author}>" if phrase else author
    date = formatdate(now, localtime=True)
    added = []
    prefixes = [""] + (["Resent-"] if _has_resent_block(fields) else [])
    for prefix in prefixes:
        if f"{prefix}from".lower() not in names:
            added.append(_field(f"{prefix}From", from_value))
        if f"{prefix}date".lower() not in names:
            added.append(_field(f"{prefix}Date", date))
        if f"{prefix}message-id".lower() not in names:
            added.append(_field(f"{prefix}Message-ID", make_msgid(domain=hostname)))
    return [*fields, *added]


def received_field(invoker: Invoker, now: float | None = None) -> bytes:
    """The trace field naming the local user who submitted (RFC 5321 §4.4), as Postfix's
    pickup writes it, so abuse from a local account can be traced back to it."""
    return (f"Received: by {invoker.hostname} (Albatross sendmail, from userid "
            f"{invoker.uid});\r\n\t{formatdate(now, localtime=True)}").encode("ascii") + _CRLF


def check_options(options: Options, invoker: Invoker) -> None:
    """Everything about the command line that can be refused before the message is read.

    Raises UsageError or AddressError, as submission() would.
    """
    if options.sender is not None:
        sender_address(options.sender, invoker.hostname)
    if options.full_name:
        full_name_phrase(options.full_name)
    if not argument_addresses(options.recipients, invoker.hostname) and not options.extract:
        raise UsageError(_NO_ARGUMENTS)


_NO_ARGUMENTS = ("no recipient addresses given (name them as arguments, or use -t to read "
                 "them from the message header)")


def submission(raw: bytes, options: Options, invoker: Invoker, *, max_size: int,
               now: float | None = None) -> tuple[Envelope, bytes]:
    """The envelope and the final message bytes for what the caller wrote.

    Raises UsageError, NoRecipients, AddressError or MessageError (MessageTooBig when the
    final message exceeds `max_size`; 0 means no limit).
    """
    now = time.time() if now is None else now
    hostname = invoker.hostname
    if options.sender is None:
        sender = check_address(invoker.login, hostname)
    else:
        sender = sender_address(options.sender, hostname)
    fields, body = split_message(normalise_line_endings(raw))

    recipients = argument_addresses(options.recipients, hostname)
    if options.extract:
        recipients += header_recipients(fields, hostname)
    if not recipients:
        if options.extract:
            raise NoRecipients("No recipient addresses found in message header")
        raise UsageError(_NO_ARGUMENTS)
    # Bcc goes without -t too: a script that names the recipients on the command line and
    # leaves a Bcc field in the message must not disclose the blind copies to everyone.
    fields = complete_header(without_bcc(fields), sender=sender, full_name=options.full_name,
                             hostname=hostname, now=now)
    if body and not body.endswith(_CRLF):
        body += _CRLF
    message = b"".join([received_field(invoker, now), *fields, _CRLF, body])
    if max_size > 0 and len(message) > max_size:
        raise MessageTooBig(f"message is larger than the limit of {max_size} bytes")

    unique = list(dict.fromkeys(recipients))
    params: dict[str, str | None] = {}
    if not message.isascii():
        params["BODY"] = "8BITMIME"
    header_block = message[:len(message) - len(body)]
    if not (sender.isascii() and all(r.isascii() for r in unique) and header_block.isascii()):
        params["SMTPUTF8"] = None  # RFC 6531 §3.1: UTF-8 addresses or header fields
    if options.ret:
        params["RET"] = options.ret
    if options.envid:
        params["ENVID"] = options.envid
    envelope = Envelope(
        sender=sender,
        recipients=[Recipient(r, notify=options.notify) for r in unique],
        mail_params=params,
        client_ip="",
        helo="",
        protocol="local",
        arrival=now,
        source="sendmail",
    )
    return envelope, message
