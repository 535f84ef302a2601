"""The Authentication-Results header field (RFC 8601): writing ours, removing forged ones.

`authentication_results(authserv_id, spf=..., dkim=[...], dmarc=..., arc=..., iprev=...)`
returns one header field (bytes, folded, ending in CRLF) with a resinfo per method:

    Authentication-Results: mx.example.net;
     spf=pass (ip4:192.0.2.0/24) smtp.mailfrom=alice@example.org;
     dkim=pass header.d=example.org header.s=s2026a header.a=rsa-sha256 header.b=abcdefgh;
     dmarc=pass (p=reject dis=none) header.from=example.org;
     iprev=pass policy.iprev=192.0.2.1 (mail.example.org)

Everything taken from the wire (addresses, HELO names, domains, reasons) goes through
`_value` or `_comment`: control characters (CR, LF, NUL...) become "?", values that are not
RFC 2045 tokens or plain addresses are quoted, comments escape their parentheses, and each
piece is bounded, so no input can end the field or start another.

`strip_ours(message, authserv_id)` removes every Authentication-Results field that claims
our authserv-id (RFC 8601 §5: a receiver must not let its own results be forged upstream).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from albatross.msgauth.dmarc import DmarcResult
from albatross.msgauth.iprev import IprevResult
from albatross.msgauth.spf import SpfResult

FIELD = "Authentication-Results"
MAX_VALUE = 256  # characters kept of one property value or comment
LINE = 78  # RFC 5322 §2.1.1: lines SHOULD stay within 78 characters

# RFC 2045 token: printable ASCII but SPACE and tspecials.
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_DOMAIN = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
                     r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class DkimLike(Protocol):
    """What a DKIM verification result must offer (msgauth.dkim.DkimResult does)."""

    @property
    def result(self) -> str: ...
    @property
    def domain(self) -> str: ...
    @property
    def selector(self) -> str: ...
    @property
    def algorithm(self) -> str: ...
    @property
    def reason(self) -> str: ...


class ArcLike(Protocol):
    """What an ARC verification result must offer (msgauth.arc.ArcResult does)."""

    @property
    def result(self) -> str: ...
    @property
    def reason(self) -> str: ...


def _clean(text: str) -> str:
    text = _CONTROL.sub("?", text)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."


def _value(text: str) -> str:
    """A pvalue (RFC 8601 §2.2): a token, an address or domain as is, else a quoted-string."""
    text = _clean(text)
    if text and _TOKEN.fullmatch(text):
        return text
    local, at, domain = text.rpartition("@")
    if at and _DOMAIN.fullmatch(domain) and (not local or _DOT_ATOM.fullmatch(local)):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment(text: str) -> str:
    text = _clean(text)
    return "(" + re.sub(r"([\\()])", r"\\\1", text) + ")"


def _result(text: str) -> str:
    """A result keyword: one of ours, never wire text; anything odd becomes permerror."""
    return text if re.fullmatch(r"[a-z]+", text) else "permerror"


def _spf(result: SpfResult) -> list[str]:
    parts = [f"spf={_result(result.result.value)}"]
    note = result.mechanism or result.reason
    if note:
        parts.append(_comment(note))
    if result.identity == "helo":
        parts.append(f"smtp.helo={_value(result.domain)}")
    else:
        parts.append(f"smtp.mailfrom={_value(result.sender)}")
    return parts


def _dkim(result: DkimLike) -> list[str]:
    parts = [f"dkim={_result(result.result)}"]
    if result.reason:
        parts.append(_comment(result.reason))
    if result.domain:
        parts.append(f"header.d={_value(result.domain)}")
    if result.selector:
        parts.append(f"header.s={_value(result.selector)}")
    if result.algorithm:
        parts.append(f"header.a={_value(result.algorithm)}")
    header_b = getattr(result, "header_b", "")
    if isinstance(header_b, str) and header_b:
        parts.append(f"header.b={_value(header_b[:8])}")  # RFC 6008
    return parts


def _dmarc(result: DmarcResult) -> list[str]:
    parts = [f"dmarc={_result(result.result.value)}"]
    if result.record is not None:
        note = f"p={result.record.p.value} sp={result.record.sp.value}"
        note += f" dis={result.disposition.value}"
        if result.sampled_out:
            note += f" pct={result.record.pct} sampled out"
        parts.append(_comment(note))
    elif result.reason:
        parts.append(_comment(result.reason))
    if result.from_domain:
        parts.append(f"header.from={_value(result.from_domain)}")
    return parts


def _arc(result: ArcLike) -> list[str]:
    parts = [f"arc={_result(result.result)}"]
    if result.reason:
        parts.append(_comment(result.reason))
    return parts


def _iprev(result: IprevResult) -> list[str]:
    parts = [f"iprev={_result(result.result)}", f"policy.iprev={_value(result.ip)}"]
    if result.name:
        parts.append(_comment(result.name))
    return parts


def authentication_results(authserv_id: str, *,
                           spf: SpfResult | Sequence[SpfResult] | None = None,
                           dkim: Sequence[DkimLike] | None = None,
                           dmarc: DmarcResult | None = None,
                           arc: ArcLike | None = None,
                           iprev: IprevResult | None = None) -> bytes:
    """Our Authentication-Results header field, folded, ending in CRLF.

    `spf` may hold both the MAIL FROM and the HELO result. `dkim` None leaves DKIM out;
    an empty list reports dkim=none (the message carried no signature). With no result at
    all the field says "none" (RFC 8601 §2.2)."""
    resinfos: list[list[str]] = []
    spf_list = [spf] if isinstance(spf, SpfResult) else list(spf or ())
    resinfos += [_spf(r) for r in spf_list]
    if dkim is not None:
        resinfos += [_dkim(r) for r in dkim] or [["dkim=none"]]
    if dmarc is not None:
        resinfos.append(_dmarc(dmarc))
    if arc is not None:
        resinfos.append(_arc(arc))
    if iprev is not None:
        resinfos.append(_iprev(iprev))
    head = f"{FIELD}: {_value(authserv_id)};"
    if not resinfos:
        return (head[:-1] + "; none\r\n").encode("utf-8")
    lines = [head]
    for i, parts in enumerate(resinfos):
        last = i == len(resinfos) - 1
        line = ""
        for j, part in enumerate(parts):
            piece = part + ("" if j < len(parts) - 1 or last else ";")
            if line and len(line) + 1 + len(piece) > LINE:
                lines.append(line)
                line = "  " + piece  # a deeper indent for the rest of one resinfo
            else:
                line = f"{line} {piece}" if line else f" {piece}"
        lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


# --- removing forged fields ---------------------------------------------------------------


def _skip_cfws(text: str, i: int) -> int:
    """The index past any folding white space and (nested) comments at `i`; -1 if a
    comment never ends."""
    while i < len(text):
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == "(":
            depth = 0
            while i < len(text):
                c = text[i]
                if c == "\\":
                    i += 2
                    continue
                if c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            if i >= len(text):
                return -1
            i += 1
        else:
            break
    return i


def claimed_id(value: str) -> str | None:
    """The authserv-id an Authentication-Results value starts with (after comments and
    white space; a token or a quoted-string), or None if it cannot be read."""
    i = _skip_cfws(value, 0)
    if i < 0 or i >= len(value):
        return None
    if value[i] == '"':
        out = []
        i += 1
        while i < len(value) and value[i] != '"':
            if value[i] == "\\" and i + 1 < len(value):
                i += 1
            out.append(value[i])
            i += 1
        return "".join(out) if i < len(value) else None
    m = re.match(r"[^\s;()\"]+", value[i:])
    return m[0] if m else None


def _same_id(a: str, b: str) -> bool:
    return a.strip().lower().rstrip(".") == b.strip().lower().rstrip(".")


def strip_ours(message: bytes, authserv_id: str) -> bytes:
    """`message` (a header block, or a whole message: the body is left as is) without the
    Authentication-Results fields that claim `authserv_id`.

    The claimed id is read as RFC 8601 writes it: after comments and folding, as a token or
    quoted-string, compared without case or a trailing dot, whatever follows it (a version
    number, comments, no results). A field whose id cannot be read (an unterminated comment
    or quote) is removed if it mentions our id anywhere, as some reader might still take it
    for ours. ARC-Authentication-Results fields are left alone (RFC 8617 seals them)."""
    ours = authserv_id.strip().lower().rstrip(".")
    lines = message.splitlines(keepends=True)
    out: list[bytes] = []
    field: list[bytes] = []
    done = False
    rest_at = len(lines)

    def flush() -> None:
        if field and not _claims(b"".join(field), ours):
            out.extend(field)
        field.clear()

    for n, line in enumerate(lines):
        if line in (b"\r\n", b"\n"):
            flush()
            rest_at = n
            done = True
            break
        if line[:1] in (b" ", b"\t") and field:
            field.append(line)
            continue
        flush()
        field.append(line)
    if not done:
        flush()
    return b"".join(out) + b"".join(lines[rest_at:])


def _claims(raw: bytes, ours: str) -> bool:
    name, colon, value = raw.partition(b":")
    if not colon or name.strip(b" \t").lower() != FIELD.lower().encode():
        return False
    text = value.decode("utf-8", "replace")
    claimed = claimed_id(text)
    if claimed is None:
        return ours in text.lower()
    return _same_id(claimed, ours)
