"""Field values of a DSN: the escapes and encodings that keep wire data inside one field.

Everything a DSN quotes came from somewhere we do not control: a remote server's reply, the
host name it was reached at, the envelope addresses, the ENVID and ORCPT a client chose.
A CR or LF in any of them could start a new header or delivery-status field (Exim's
21Nails advisories catalogue how that goes wrong), a NUL truncates the report in some
readers, and a megabyte-long reply makes a line no mail server accepts. So every value
passes through one of these functions on its way into the message: control and format
characters are escaped, runs of white space become one space, lengths are capped, and a
field is folded (RFC 5322 §2.2.3) so that no line exceeds 998 octets.

The escape for a character that may not appear is RFC 6533 §3's EmbeddedUnicodeChar,
"\\x{HEX}": readable, 7-bit, and already how utf-8 addresses are written in
message/delivery-status.
"""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import UTC, datetime

# Unicode categories never copied verbatim: controls (NUL, CR, LF, C1...), format characters
# (bidi overrides that make a reply read backwards, zero-width characters), line and
# paragraph separators, and lone surrogates (not encodable as UTF-8).
_UNSAFE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
# Characters that stand for "a new line" in some reader; each becomes one space.
_BREAKS = frozenset("\t\n\v\f\r\x1c\x1d\x1e\x85\u2028\u2029")

# RFC 5322 §2.1.1: lines "SHOULD" stay within 78 characters and "MUST" within 998.
FOLD_AT = 78
# A run without white space longer than this is split by folding inside it (only free text
# can be that long: every other value is capped well below).
MAX_WORD = 900

# The latest timestamp RFC 5322 can write with a four-digit year (9999-12-31T23:59:59Z).
_MAX_TIME = 253402300799.0

_HOST_RE = re.compile(r"[A-Za-z0-9._:\[\]-]{1,255}")


def escape(c: str) -> str:
    """RFC 6533 EmbeddedUnicodeChar for one character: 'é' -> '\\x{E9}'."""
    return f"\\x{{{ord(c):02X}}}"


def plain(text: str, limit: int, *, ascii_only: bool) -> str:
    """`text` as one line of at most `limit` characters, safe in a header field or a line
    of the human-readable part.

    Line breaks and other white space collapse to single spaces; control and format
    characters are escaped; with `ascii_only` so is everything outside US-ASCII (RFC 3464
    fields are US-ASCII; RFC 6533's global variants may carry UTF-8). Text cut at `limit`
    ends in "...".
    """
    out: list[str] = []
    size = 0
    space = False
    for c in text:
        if c in _BREAKS or c == " " or unicodedata.category(c) == "Zs":
            space = bool(out)
            continue
        if (ascii_only and ord(c) > 126) or unicodedata.category(c) in _UNSAFE:
            piece = escape(c)
        else:
            piece = c
        if space:
            piece = " " + piece
            space = False
        if size + len(piece) > limit:
            # Drop whole pieces, so that an escape is never cut in half.
            while out and size + 3 > limit:
                size -= len(out.pop())
            return ("".join(out) + "...")[:limit]
        out.append(piece)
        size += len(piece)
    return "".join(out)


def xtext(value: str) -> str:
    """RFC 3461 §4 xtext: '!'..'~' except '+' and '=' stay, any other octet is '+XX'."""
    out: list[str] = []
    for c in value:
        o = ord(c)
        if 33 <= o <= 126 and c != "+" and c != "=":
            out.append(c)
        else:
            out.extend(f"+{b:02X}" for b in c.encode("utf-8", "replace"))
    return "".join(out)


def original(value: str, *, utf8: bool) -> str:
    """An ENVID or ORCPT address as the DSN repeats it (RFC 3461 §4.2, §4.4, §6.3): the
    decoded value itself, which the sender had to keep to printable US-ASCII "due to
    limitations in the DSN format" (with `utf8`, also non-ASCII letters, RFC 6533 §3).
    A value breaking that rule is written in xtext instead, so that nothing it holds can
    reach the field unescaped."""
    for c in value:
        o = ord(c)
        if not (32 <= o <= 126 or (utf8 and o > 126 and unicodedata.category(c) not in _UNSAFE
                                   and unicodedata.category(c) != "Zs")):
            return xtext(value)
    return value


def utf8_address(value: str, *, unitext: bool) -> str:
    """An address in RFC 6533 §3 form: utf-8-addr-xtext (7-bit, for message/delivery-status)
    or, with `unitext`, utf-8-addr-unitext (UTF-8 left as is, for
    message/global-delivery-status). '+', '=', '\\', space and controls are always escaped."""
    out: list[str] = []
    for c in value:
        o = ord(c)
        qchar = 33 <= o <= 126 and c not in "+=\\"
        unichar = o > 126 and unitext and unicodedata.category(c) not in _UNSAFE
        out.append(c if qchar or unichar else escape(c))
    return "".join(out)


def host(value: str, *, ascii_only: bool) -> str:
    """A host name for a "dns;" field: kept when it looks like one, turned into its A-label
    when it is an internationalised name, escaped otherwise. At most 255 characters."""
    value = value.strip().rstrip(".") or "unknown"
    if _HOST_RE.fullmatch(value):
        return value
    if not value.isascii():
        try:
            alabel = value.encode("idna").decode("ascii")
        except UnicodeError:
            alabel = ""
        if _HOST_RE.fullmatch(alabel):
            return alabel
    return plain(value, 255, ascii_only=ascii_only).replace(" ", escape(" "))


def date(ts: float) -> str:
    """An RFC 5322 date-time in UTC for a POSIX timestamp: 'Tue, 14 Nov 2023 22:13:20 +0000'.

    Raises ValueError for a time that cannot be written (NaN, infinite, before 1970 or past
    the year 9999): these come from our own clock and scheduler, so they are a bug.
    """
    if not math.isfinite(ts) or not 0 <= ts <= _MAX_TIME:
        raise ValueError(f"timestamp out of range: {ts!r}")
    when = datetime.fromtimestamp(ts, UTC)
    days = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
              "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    return (f"{days[when.weekday()]}, {when.day:02d} {months[when.month - 1]} {when.year:04d} "
            f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} +0000")


def field(name: str, value: str) -> str:
    """'Name: value' folded before spaces (RFC 5322 §2.2.3) so that lines stay within
    FOLD_AT characters where the words allow and never exceed 998 octets.

    `value` must already be one line (see plain()). A word longer than MAX_WORD is split
    by folding inside it, which adds a space when the field is unfolded: only free text
    such as a remote reply is ever that long.
    """
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"{name} value is not one line")
    words: list[str] = []
    for word in value.split(" "):
        if not word:
            continue  # a folded line of white space alone is not allowed (RFC 5322 §3.2.2)
        while len(word) > MAX_WORD:
            words.append(word[:MAX_WORD])
            word = word[MAX_WORD:]
        words.append(word)
    lines: list[str] = []
    line = f"{name}:"
    for word in words:
        if len(line) + 1 + len(word) > FOLD_AT and line != f"{name}:":
            lines.append(line)
            line = " " + word
        else:
            line += " " + word
    lines.append(line)
    return "\r\n".join(lines)
