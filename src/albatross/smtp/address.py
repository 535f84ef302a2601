"""SMTP path syntax: the Reverse-path of MAIL and the Forward-path of RCPT, parsed into a Mailbox.

Pure functions, no I/O. The grammar is RFC 5321 §4.1.2 (with the SMTPUTF8 extensions of
RFC 6531 §3.3), the limits RFC 5321 §4.5.3.1. Everything that leaves this module has been
checked for control characters: a CR, LF or NUL in an address is how a recipient line
becomes two spool records or an extra header (Exim's 21Nails advisories), so such input is
refused outright, even inside a quoted local part where RFC 5321 already forbids it.

Hot path: this runs on every MAIL and RCPT, so it scans with str methods (`find`, `strip`,
`isascii`) and only falls back to a character loop for quoted strings and non-ASCII text.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

import idna

Role = Literal["sender", "recipient"]

# RFC 5321 §4.5.3.1.1-3: octet limits, counted on the UTF-8 wire form.
MAX_LOCAL_OCTETS = 64
MAX_DOMAIN_OCTETS = 255
MAX_PATH_OCTETS = 256  # including the angle brackets
MAX_LABEL_OCTETS = 63

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
# RFC 5322 §3.2.3 atext; RFC 5321 Dot-string is atoms joined by single dots.
_ATEXT = _ALNUM + "!#$%&'*+-/=?^_`{|}~"
_ATEXT_DOT = _ATEXT + "."
_LDH_DOT = _ALNUM + "-."
_LDH = _ALNUM + "-"


class AddressError(ValueError):
    """Bad address syntax.

    `enhanced` is the RFC 3463 code to use in the reply; str(err) is a short human reason
    without CR or LF, e.g. 'Bad sender address syntax: unbalanced quote'. `problem` is the
    bare problem ('unbalanced quote') for callers that compose their own message. Reasons
    never echo client input, so they are always safe to put in a reply.
    """

    def __init__(self, reason: str, enhanced: str = "5.1.3", problem: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.enhanced = enhanced
        self.problem = problem if problem is not None else reason


class _Syntax(Exception):
    """Internal: a problem found while scanning; parse_path adds the role's wording and code."""

    def __init__(self, problem: str, enhanced: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.enhanced = enhanced


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A mailbox from an SMTP path.

    `local` is the local part with any quoted-string unquoted (the semantic value); `domain`
    is the domain as written ("example.org", "exämple.org", "[192.0.2.1]", "[IPv6:::1]"), or
    "" only for the special recipient <Postmaster> (RFC 5321 §4.1.1.3).
    """

    local: str
    domain: str

    @property
    def needs_smtputf8(self) -> bool:
        return not (self.local.isascii() and self.domain.isascii())

    def __str__(self) -> str:
        local = self.local if _is_dot_string(self.local) else _quote(self.local)
        return f"{local}@{self.domain}" if self.domain else local


def parse_path(
    arg: str, *, smtputf8: bool, null_ok: bool, role: Role = "recipient"
) -> tuple[Mailbox | None, str]:
    """Parse a Reverse-path or Forward-path at the start of `arg`.

    `arg` is the text after 'MAIL FROM:' or 'RCPT TO:'. Returns (mailbox, rest): rest is the
    remaining text (the ESMTP parameters) with leading spaces stripped. A mailbox of None is
    the null path '<>', allowed only when `null_ok`. `role` picks the enhanced code of a
    syntax error: 5.1.7 for a sender, 5.1.3 for a recipient. Non-ASCII without `smtputf8`
    is refused with 5.6.7 (RFC 6531 §3.7.4.2).
    """
    code = "5.1.7" if role == "sender" else "5.1.3"
    try:
        return _parse_path(arg, smtputf8, null_ok, role == "recipient")
    except _Syntax as err:
        enhanced = err.enhanced or code
        if enhanced == "5.6.7":
            reason = f"Non-ASCII {role} address requires SMTPUTF8"
        else:
            reason = f"Bad {role} address syntax: {err.problem}"
        raise AddressError(reason, enhanced, err.problem) from None


def parse_mailbox(text: str, *, smtputf8: bool) -> Mailbox:
    """Parse a bare Mailbox (local@domain, no angle brackets, no route, nothing after it).

    For mailboxes that arrive outside a path, such as the RFC 4954 AUTH= parameter.
    """
    try:
        _check_chars(text, smtputf8)
        return _parse_mailbox(text, smtputf8, postmaster_ok=False)
    except _Syntax as err:
        enhanced = err.enhanced or "5.1.3"
        if enhanced == "5.6.7":
            reason = "Non-ASCII address requires SMTPUTF8"
        else:
            reason = f"Bad address syntax: {err.problem}"
        raise AddressError(reason, enhanced, err.problem) from None


def _parse_path(
    arg: str, smtputf8: bool, null_ok: bool, postmaster_ok: bool
) -> tuple[Mailbox | None, str]:
    n = len(arg)
    i = 0
    # `MAIL FROM: <a@b>` is common in the wild; tolerate spaces (not other blanks).
    while i < n and arg[i] == " ":
        i += 1
    if i == n:
        raise _Syntax("missing address")
    if arg[i] == "<":
        end = _find_unquoted(arg, i + 1, ">")
        if end < 0:
            _check_chars(arg[i:], smtputf8)
            raise _Syntax("unbalanced quote" if end == -2 else "missing closing '>'")
        inner = arg[i + 1 : end]
        rest = arg[end + 1 :]
        if rest and rest[0] != " ":
            raise _Syntax("text directly after '>'")
    else:
        # Postfix-style leniency: `MAIL FROM:user@example.org SIZE=10`; the mailbox ends at
        # the first space outside a quoted string.
        end = _find_unquoted(arg, i, " ")
        if end == -2:
            _check_chars(arg[i:], smtputf8)
            raise _Syntax("unbalanced quote")
        if end < 0:
            end = n
        inner = arg[i:end]
        rest = arg[end:]
    _check_chars(inner, smtputf8)
    octets = len(inner) if inner.isascii() else len(inner.encode("utf-8"))
    if octets + 2 > MAX_PATH_OCTETS:
        raise _Syntax(f"path longer than {MAX_PATH_OCTETS} octets")
    if not inner:
        if not null_ok:
            raise _Syntax("null path not allowed")
        return None, rest.lstrip(" ")
    if inner[0] == "@":
        # RFC 5321 §4.1.2 / Appendix C: a source route is accepted and ignored, but its
        # domains must still be well formed.
        colon = inner.find(":")
        if colon < 0:
            raise _Syntax("source route without ':'")
        for hop in inner[:colon].split(","):
            if not hop.startswith("@"):
                raise _Syntax("bad source route")
            problem = _domain_problem(hop[1:], literal_ok=False)
            if problem:
                raise _Syntax(f"bad source route: {problem}")
        inner = inner[colon + 1 :]
        if not inner:
            raise _Syntax("source route without mailbox")
    return _parse_mailbox(inner, smtputf8, postmaster_ok), rest.lstrip(" ")


def _parse_mailbox(text: str, smtputf8: bool, postmaster_ok: bool) -> Mailbox:
    """Mailbox = Local-part "@" ( Domain / address-literal ); `text` is already char-checked."""
    if not text:
        raise _Syntax("empty address")
    if text[0] == '"':
        close = _find_unquoted(text, 0, '"', start_quoted=True)
        if close < 0:
            raise _Syntax("unbalanced quote")
        raw_local = text[: close + 1]
        after = text[close + 1 :]
        if not after:
            raise _Syntax("missing '@domain'")
        if after[0] != "@":
            raise _Syntax("text after quoted local part")
        domain = after[1:]
        _check_local_octets(raw_local)
        local = _unquote(raw_local[1:-1])
    else:
        at = text.find("@")
        if at < 0:
            # RFC 5321 §4.1.1.3: RCPT TO:<Postmaster> (any case) needs no domain.
            if postmaster_ok and text.lower() == "postmaster":
                return Mailbox(text, "")
            raise _Syntax("missing '@domain'")
        local = text[:at]
        domain = text[at + 1 :]
        _check_local_octets(local)
        _check_dot_string(local)
    if not local:
        raise _Syntax("empty local part")
    problem = _domain_problem(domain, literal_ok=True)
    if problem:
        raise _Syntax(problem)
    return Mailbox(local, domain)


def _find_unquoted(s: str, start: int, stop: str, start_quoted: bool = False) -> int:
    """Index of the first `stop` at or after `start` outside a quoted string.

    Returns -1 when there is none, -2 when the text ends inside a quoted string. With
    `start_quoted`, s[start] is the opening quote and `stop` is '"': find its partner.
    """
    n = len(s)
    i = start + 1 if start_quoted else start
    while True:
        if not start_quoted:
            hit = s.find(stop, i)
            quote = s.find('"', i)
            # Fast path: no quote before the stop character (nearly every real address).
            if quote < 0 or 0 <= hit < quote:
                return hit
            i = quote + 1
        # Inside a quoted string: skip backslash pairs, stop at the closing quote.
        while i < n:
            c = s[i]
            if c == "\\":
                i += 2
            elif c == '"':
                break
            else:
                i += 1
        else:
            return -2
        if start_quoted:
            return i
        i += 1


def _check_chars(s: str, smtputf8: bool) -> None:
    """Refuse control characters anywhere (21Nails), then non-ASCII without SMTPUTF8."""
    if s.isascii():
        if s.isprintable():  # ASCII and printable: %d32-126, the common case
            return
        for c in s:
            o = ord(c)
            if o < 0x20 or o == 0x7F:
                raise _Syntax(_control_name(o))
        return
    for c in s:
        o = ord(c)
        if o < 0x20 or o == 0x7F:
            raise _Syntax(_control_name(o))
    if not smtputf8:
        raise _Syntax("non-ASCII character", "5.6.7")
    for c in s:
        o = ord(c)
        if 0x80 <= o <= 0x9F:
            # C1 controls include NEL (U+0085), which some software treats as a line break.
            raise _Syntax(f"control character U+{o:04X}")
        if o in (0x2028, 0x2029):
            # Unicode line and paragraph separators: str.splitlines() splits on them.
            raise _Syntax(f"line separator U+{o:04X}")
        if 0xD800 <= o <= 0xDFFF:
            # Lone surrogates are what undecodable bytes become under surrogateescape.
            raise _Syntax("invalid UTF-8")


def _control_name(o: int) -> str:
    names = {0x00: "NUL", 0x0D: "CR", 0x0A: "LF", 0x09: "TAB", 0x7F: "DEL"}
    if o in names:
        return f"{names[o]} character not allowed"
    return f"control character 0x{o:02X} not allowed"


def _check_local_octets(raw_local: str) -> None:
    octets = len(raw_local) if raw_local.isascii() else len(raw_local.encode("utf-8"))
    if octets > MAX_LOCAL_OCTETS:
        raise _Syntax(f"local part longer than {MAX_LOCAL_OCTETS} octets")


def _check_dot_string(local: str) -> None:
    """Dot-string = Atom *("." Atom); with SMTPUTF8 atext also takes UTF8-non-ascii."""
    if not local:
        raise _Syntax("empty local part")
    if local[0] == "." or local[-1] == "." or ".." in local:
        raise _Syntax("misplaced dot in local part")
    if local.isascii():
        # strip() removes every leading and trailing character from the set; anything left
        # over is a character outside it.
        if local.strip(_ATEXT_DOT):
            raise _Syntax("invalid character in local part")
        return
    for c in local:
        if c.isascii() and c not in _ATEXT_DOT:
            raise _Syntax("invalid character in local part")


def _is_dot_string(local: str) -> bool:
    try:
        _check_dot_string(local)
    except _Syntax:
        return False
    return True


def _unquote(body: str) -> str:
    """Undo quoted-pairSMTP (RFC 5321 §4.1.2: backslash followed by %d32-126).

    `body` is between the quotes and already char-checked, so qtextSMTP holds everywhere else.
    """
    if "\\" not in body:
        return body
    out: list[str] = []
    i = 0
    n = len(body)
    while i < n:
        c = body[i]
        if c == "\\":
            nxt = body[i + 1] if i + 1 < n else ""
            if not nxt or not (nxt.isascii() and nxt.isprintable()):
                raise _Syntax("bad backslash escape in quoted local part")
            out.append(nxt)
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _quote(local: str) -> str:
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _domain_problem(domain: str, *, literal_ok: bool) -> str | None:
    """Why `domain` is not a Domain or address-literal, or None when it is."""
    if not domain:
        return "missing domain"
    octets = len(domain) if domain.isascii() else len(domain.encode("utf-8"))
    if octets > MAX_DOMAIN_OCTETS:
        return f"domain longer than {MAX_DOMAIN_OCTETS} octets"
    if domain[0] == "[":
        if not literal_ok:
            return "address literal not allowed here"
        if domain[-1] != "]" or len(domain) < 2:
            return "unterminated address literal"
        return _literal_problem(domain[1:-1])
    if domain[-1] == ".":
        return "trailing dot in domain"
    if domain.isascii():
        if domain.strip(_LDH_DOT):
            return "invalid character in domain"
        for label in domain.split("."):
            problem = _ldh_problem(label)
            if problem:
                return problem
        return None
    for label in domain.split("."):
        if label.isascii():
            if label.strip(_LDH):
                return "invalid character in domain"
            problem = _ldh_problem(label)
        else:
            problem = _ulabel_problem(label)
        if problem:
            return problem
    return None


def _ldh_problem(label: str) -> str | None:
    if not label:
        return "empty label in domain"
    if len(label) > MAX_LABEL_OCTETS:
        return f"domain label longer than {MAX_LABEL_OCTETS} octets"
    if label[0] == "-" or label[-1] == "-":
        return "domain label starts or ends with '-'"
    return None


def _ulabel_problem(label: str) -> str | None:
    # RFC 6531 §3.3: a non-ASCII label must be a valid U-label (IDNA 2008, RFC 5891). Domains
    # are case-insensitive, so fold case first: 'Exämple' names the same label as 'exämple'.
    try:
        idna.encode(label.lower())
    except UnicodeError:  # idna.IDNAError and its subclasses
        return "invalid internationalised domain label"
    return None


def _literal_problem(content: str) -> str | None:
    """address-literal content (RFC 5321 §4.1.3): IPv4, "IPv6:" IPv6, or tag ":" dcontent."""
    if not content:
        return "empty address literal"
    if not content.isascii():
        return "non-ASCII address literal"
    colon = content.find(":")
    if colon < 0:
        try:
            ipaddress.IPv4Address(content)
        except ValueError:
            return "bad IPv4 address literal"
        return None
    tag = content[:colon]
    value = content[colon + 1 :]
    if tag.lower() == "ipv6":
        # ipaddress accepts "fe80::1%eth0" scope ids, which RFC 5321 does not.
        if "%" in value:
            return "bad IPv6 address literal"
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            return "bad IPv6 address literal"
        return None
    # General-address-literal: Standardized-tag (an Ldh-str) ":" 1*dcontent, where dcontent
    # is %d33-90 / %d94-126 (printable, no '[', '\', ']').
    if not tag or tag.strip(_LDH) or tag[0] == "-" or tag[-1] == "-":
        return "bad address literal tag"
    if not value or not value.isprintable() or " " in value:
        return "bad general address literal"
    if "[" in value or "]" in value or "\\" in value:
        return "bad general address literal"
    return None
