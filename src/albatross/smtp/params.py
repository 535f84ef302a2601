"""ESMTP parameters of MAIL and RCPT: their syntax, xtext, and the checks of each keyword.

Pure functions, no I/O. Generic syntax is RFC 5321 §4.1.2 (esmtp-param), with UTF-8 values
under SMTPUTF8 (RFC 6531 §3.3). The keywords we know: SIZE (RFC 1870), BODY (RFC 6152,
RFC 3030), SMTPUTF8 (RFC 6531), AUTH (RFC 4954 §5), RET/ENVID/NOTIFY/ORCPT (RFC 3461).

ENVID, ORCPT and AUTH are xtext-encoded on the wire and stored decoded; they later end up
in DSNs, headers and spool records. Decoding is where "+0D+0A" turns into a real line
break, so every decoded value is checked for control characters here (RFC 3461 §4, and
Exim's 21Nails advisories for what happens otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

from albatross.smtp.address import AddressError, parse_mailbox

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_KEYWORD = _ALNUM + "-"
_HEX = "0123456789ABCDEFabcdef"
# RFC 5322 atext: RFC 3461 §4.2 makes the ORCPT addr-type an atom.
_ATEXT = _ALNUM + "!#$%&'*+-/=?^_`{|}~"

MAX_ENVID_CHARS = 100  # RFC 3461 §4.4
MAX_ORCPT_CHARS = 500  # RFC 3461 §4.2
BODY_TYPES = frozenset({"7BIT", "8BITMIME", "BINARYMIME"})
RET_TYPES = frozenset({"FULL", "HDRS"})
NOTIFY_TYPES = frozenset({"SUCCESS", "FAILURE", "DELAY"})


class ParamError(ValueError):
    """A bad ESMTP parameter.

    `code` is 501 (syntax), 555 (unrecognised or unsupported parameter) or 552 (SIZE too
    large); `enhanced` the RFC 3463 code. str(err) names the parameter ('Bad NOTIFY
    parameter: ...') and never contains CR or LF.
    """

    def __init__(self, reason: str, code: int = 501, enhanced: str = "5.5.4") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.enhanced = enhanced


@dataclass(frozen=True, slots=True)
class MailParams:
    """The checked parameters of one MAIL command.

    `raw` holds every parameter as given (keys upper-cased), with ENVID and AUTH
    xtext-decoded; the other fields are the parsed values.
    """

    size: int | None
    body: str | None
    smtputf8: bool
    ret: str | None
    envid: str | None
    auth: str | None
    raw: dict[str, str | None]


def parse_params(text: str, *, utf8: bool = False) -> dict[str, str | None]:
    """Split 'SIZE=100 BODY=8BITMIME SMTPUTF8' into {'SIZE': '100', 'BODY': '8BITMIME',
    'SMTPUTF8': None}.

    Keyword: ALPHA/DIGIT then ALPHA/DIGIT/'-', returned upper-cased. Value: %d33-60 / %d62-126
    (and UTF-8 when `utf8`). A repeated keyword is a 501 (RFC 5321 §4.1.2 gives each once).
    """
    out: dict[str, str | None] = {}
    for token in text.split(" "):
        if not token:
            continue
        keyword, eq, value = token.partition("=")
        if not keyword or not keyword.isascii() or keyword[0] == "-" or keyword.strip(_KEYWORD):
            raise ParamError(f"Bad parameter keyword: {_show(keyword)}")
        key = keyword.upper()
        if key in out:
            raise ParamError(f"Duplicate {key} parameter")
        if not eq:
            out[key] = None
            continue
        if not value:
            raise ParamError(f"Bad {key} parameter: empty value")
        problem = _value_problem(value, utf8)
        if problem:
            raise ParamError(f"Bad {key} parameter: {problem}")
        out[key] = value
    return out


def _value_problem(value: str, utf8: bool) -> str | None:
    if value.isascii():
        # isprintable() on ASCII is %d32-126; the space cannot occur after split(" ").
        if not value.isprintable():
            return "control character in value"
        if "=" in value:
            return "'=' not allowed in value"
        return None
    if not utf8:
        return "non-ASCII value without SMTPUTF8"
    for c in value:
        o = ord(c)
        if o < 0x21 or o == 0x7F or 0x80 <= o <= 0x9F or o in (0x2028, 0x2029):
            return "control character in value"
        if 0xD800 <= o <= 0xDFFF:
            return "invalid UTF-8 in value"
        if c == "=":
            return "'=' not allowed in value"
    return None


def _show(text: str) -> str:
    """Client text made safe for a reply: printable ASCII in quotes, escapes, at most 32 chars."""
    return ascii(text[:32])


def xtext_decode(value: str) -> str:
    """Decode RFC 3461 §4 xtext: '+' HEXCHAR HEXCHAR stands for one octet.

    Escaped octets are read as UTF-8. Raises ParamError (501) on a bad '+' escape or a
    character that xtext does not allow. Lower-case hex digits are accepted (be liberal).
    """
    return _xtext_decode(value, "xtext", raw_utf8=False)


def xtext_encode(value: str) -> str:
    """Encode as xtext: '!'..'~' except '+' and '=' stay, other octets of the UTF-8 become +XX."""
    out: list[str] = []
    for c in value:
        o = ord(c)
        if 33 <= o <= 126 and c != "+" and c != "=":
            out.append(c)
        else:
            out.extend(f"+{b:02X}" for b in c.encode("utf-8"))
    return "".join(out)


def _xtext_decode(value: str, name: str, *, raw_utf8: bool) -> str:
    """xtext_decode with errors naming parameter `name`; `raw_utf8` also lets UTF-8 through
    unencoded (RFC 6533 utf-8-addr-unitext, under SMTPUTF8)."""
    if "+" not in value and value.isascii() and value.isprintable():
        if " " in value or "=" in value:
            raise ParamError(f"Bad {name} parameter: invalid character in xtext")
        return value
    buf = bytearray()
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        o = ord(c)
        if c == "+":
            pair = value[i + 1 : i + 3]
            if len(pair) != 2 or pair.strip(_HEX):
                raise ParamError(f"Bad {name} parameter: bad '+' escape in xtext")
            buf.append(int(pair, 16))
            i += 3
            continue
        if 33 <= o <= 126 and c != "=":
            buf.append(o)
        elif o > 127 and raw_utf8 and not 0xD800 <= o <= 0xDFFF:
            buf += c.encode("utf-8")
        else:
            raise ParamError(f"Bad {name} parameter: invalid character in xtext")
        i += 1
    try:
        return buf.decode("utf-8")
    except UnicodeDecodeError:
        raise ParamError(f"Bad {name} parameter: xtext does not decode as UTF-8") from None


def _check_decoded(value: str, name: str) -> None:
    """Refuse what a decoded value must never carry into a DSN, header or record: C0
    controls (NUL, CR, LF...), DEL, C1 controls and the Unicode line separators."""
    if value.isascii() and value.isprintable():
        return
    for c in value:
        o = ord(c)
        if o < 0x20 or o == 0x7F or 0x80 <= o <= 0x9F or o in (0x2028, 0x2029):
            raise ParamError(f"Bad {name} parameter: control character not allowed")


def check_mail_params(params: dict[str, str | None], *, max_size: int) -> MailParams:
    """Check the parameters of MAIL FROM.

    `max_size` is the advertised SIZE limit in octets; 0 means none (RFC 1870 §4). A larger
    declared SIZE is 552 5.3.4. Unknown keywords are 555 5.5.4.
    """
    size: int | None = None
    body: str | None = None
    ret: str | None = None
    envid: str | None = None
    auth: str | None = None
    smtputf8 = "SMTPUTF8" in params
    raw = dict(params)
    for key, value in params.items():
        if key == "SMTPUTF8":
            if value is not None:
                raise ParamError("Bad SMTPUTF8 parameter: takes no value")
            continue
        if key not in ("SIZE", "BODY", "RET", "ENVID", "AUTH"):
            raise ParamError(f"Unsupported parameter: {_show_key(key)}", 555, "5.5.4")
        if value is None:
            raise ParamError(f"Bad {key} parameter: value required")
        if key == "SIZE":
            size = _check_size(value, max_size)
        elif key == "BODY":
            body = value.upper()
            if body not in BODY_TYPES:
                raise ParamError("Bad BODY parameter: expected 7BIT, 8BITMIME or BINARYMIME")
        elif key == "RET":
            ret = value.upper()
            if ret not in RET_TYPES:
                raise ParamError("Bad RET parameter: expected FULL or HDRS")
        elif key == "ENVID":
            envid = _xtext_decode(value, "ENVID", raw_utf8=False)
            _check_decoded(envid, "ENVID")
            if not envid:
                raise ParamError("Bad ENVID parameter: empty value")
            if len(envid) > MAX_ENVID_CHARS:
                raise ParamError(f"Bad ENVID parameter: longer than {MAX_ENVID_CHARS} characters")
            raw[key] = envid
        else:  # AUTH
            auth = _check_auth(value, smtputf8)
            raw[key] = auth
    return MailParams(size, body, smtputf8, ret, envid, auth, raw)


def _show_key(key: str) -> str:
    # Keys from parse_params are already safe; a caller-built dict might not be.
    if key.isascii() and key.isprintable() and " " not in key and len(key) <= 32:
        return key
    return _show(key)


def _check_size(value: str, max_size: int) -> int:
    # RFC 1870 §6: size-value = 1*20DIGIT. isdigit() alone would take '²' and Arabic digits.
    if not (value.isascii() and value.isdigit()):
        raise ParamError("Bad SIZE parameter: expected a number of octets")
    digits = value.lstrip("0") or "0"
    # Never hand int() thousands of digits (CPython refuses above 4300 anyway); anything
    # longer than 20 digits exceeds every limit we could advertise.
    if len(digits) > 20 or (max_size > 0 and int(digits) > max_size):
        raise ParamError("Message size exceeds fixed maximum message size", 552, "5.3.4")
    return int(digits)


def _check_auth(value: str, smtputf8: bool) -> str:
    """RFC 4954 §5: AUTH=xtext, decoding to an addr-spec or "<>"."""
    decoded = _xtext_decode(value, "AUTH", raw_utf8=False)
    if decoded == "<>":
        return decoded
    _check_decoded(decoded, "AUTH")
    try:
        parse_mailbox(decoded, smtputf8=smtputf8)
    except AddressError as err:
        raise ParamError(f"Bad AUTH parameter: {err.problem}") from None
    return decoded


def check_rcpt_params(
    params: dict[str, str | None], *, utf8: bool = False
) -> tuple[str | None, str | None]:
    """Check the parameters of RCPT TO; return (notify, orcpt).

    `notify` is the NOTIFY list upper-cased ('SUCCESS,FAILURE'); `orcpt` the ORCPT value
    with its address decoded ('rfc822;user@example.org'). `utf8` is whether the transaction
    uses SMTPUTF8. Unknown keywords are 555 5.5.4.
    """
    notify: str | None = None
    orcpt: str | None = None
    for key, value in params.items():
        if key not in ("NOTIFY", "ORCPT"):
            raise ParamError(f"Unsupported parameter: {_show_key(key)}", 555, "5.5.4")
        if value is None:
            raise ParamError(f"Bad {key} parameter: value required")
        if key == "NOTIFY":
            notify = _check_notify(value)
        else:
            orcpt = _check_orcpt(value, utf8)
    return notify, orcpt


def _check_notify(value: str) -> str:
    """RFC 3461 §4.1: "NEVER" alone, or a list of SUCCESS, FAILURE and DELAY."""
    items = value.upper().split(",")
    if items == ["NEVER"]:
        return "NEVER"
    seen: list[str] = []
    for item in items:
        if item == "NEVER":
            raise ParamError("Bad NOTIFY parameter: NEVER must appear alone")
        if item not in NOTIFY_TYPES:
            raise ParamError("Bad NOTIFY parameter: expected NEVER or SUCCESS, FAILURE, DELAY")
        if item in seen:
            raise ParamError(f"Bad NOTIFY parameter: {item} given twice")
        seen.append(item)
    return ",".join(seen)


def _check_orcpt(value: str, utf8: bool) -> str:
    """RFC 3461 §4.2: ORCPT=addr-type ";" xtext. For addr-type "utf-8" the address uses the
    RFC 6533 §3 form instead, where "\\x{HEX}" stands for one Unicode code point."""
    semi = value.find(";")
    if semi < 0:
        raise ParamError("Bad ORCPT parameter: expected addr-type;address")
    addr_type = value[:semi]
    encoded = value[semi + 1 :]
    if not addr_type or not addr_type.isascii() or addr_type.strip(_ATEXT):
        raise ParamError("Bad ORCPT parameter: bad address type")
    if not encoded:
        raise ParamError("Bad ORCPT parameter: missing address")
    if addr_type.lower() == "utf-8":
        address = _utf8_addr_decode(encoded, utf8)
    else:
        address = _xtext_decode(encoded, "ORCPT", raw_utf8=utf8)
    _check_decoded(address, "ORCPT")
    if len(address) > MAX_ORCPT_CHARS:
        raise ParamError(f"Bad ORCPT parameter: longer than {MAX_ORCPT_CHARS} characters")
    return f"{addr_type};{address}"


def _utf8_addr_decode(value: str, utf8: bool) -> str:
    """RFC 6533 utf-8-addr-xtext / utf-8-addr-unitext: QCHAR (printable ASCII but '+', '='
    and '\\'), EmbeddedUnicodeChar "\\x{" HEXPOINT "}", and raw UTF-8 only under SMTPUTF8."""
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        o = ord(c)
        if c == "\\":
            if value[i + 1 : i + 3] != "x{":
                raise ParamError("Bad ORCPT parameter: bad '\\x{...}' escape")
            close = value.find("}", i + 3, i + 10)
            hexpoint = value[i + 3 : close] if close > 0 else ""
            if not hexpoint or len(hexpoint) > 6 or hexpoint.strip(_HEX):
                raise ParamError("Bad ORCPT parameter: bad '\\x{...}' escape")
            point = int(hexpoint, 16)
            if point > 0x10FFFF or 0xD800 <= point <= 0xDFFF:
                raise ParamError("Bad ORCPT parameter: bad '\\x{...}' escape")
            out.append(chr(point))
            i = close + 1
            continue
        qchar = 33 <= o <= 126 and c not in "+="
        if not (qchar or (o > 127 and utf8 and not 0xD800 <= o <= 0xDFFF)):
            raise ParamError("Bad ORCPT parameter: invalid character in address")
        out.append(c)
        i += 1
    return "".join(out)
