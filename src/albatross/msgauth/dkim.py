"""DKIM (RFC 6376, RFC 8463): signing the mail of our domains, verifying every signature of
mail we receive.

Signing is ours: relaxed/relaxed canonicalization (canon.py), rsa-sha256 and ed25519-sha256
through the `cryptography` package, the header fields a reader sees oversigned so that none
can be added, never l=. `sign` is synchronous and CPU-bound (an RSA-2048 signature costs
about a third of a millisecond of OpenSSL): callers on the event loop run it with
`asyncio.to_thread`.

Verification is dkimpy's, fed the key records that OUR Resolver fetched, so that `--dns`
and the test DNS server decide what is asked and a temporary DNS failure is a temperror,
never a fail. `verify` is a coroutine that runs dkimpy in a thread itself.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dkim as dkimpy
from dkim.util import InvalidTagValueList, parse_tag_value

from albatross.dns import InvalidName, Resolver, Status, query_name
from albatross.msgauth.canon import (
    CRLF,
    crlf_lines,
    field_name,
    parse_fields,
    relaxed_body,
    relaxed_header,
    select_fields,
    split_message,
)
from albatross.msgauth.dkimkey import (
    DkimKey,
    dns_record,
    key_path,
    load_key,
    load_keys,
    txt_value,
)

__all__ = [
    "DkimKey",
    "DkimResult",
    "dns_record",
    "key_path",
    "load_key",
    "load_keys",
    "sign",
    "signed_header_names",
    "signing_domain",
    "txt_value",
    "verify",
]

LINE_LIMIT = 78  # RFC 5322 §2.1.1: lines SHOULD be at most 78 characters
MAX_SIGNATURES = 10  # signatures checked per message; a flood of them is an attack on the CPU

# Fields listed once more than they occur, even when absent: what a reader sees or a client
# acts on, so that none can be added to a signed message (RFC 6376 §8.15).
OVERSIGNED = (
    "from", "reply-to", "subject", "date", "to", "cc", "message-id", "in-reply-to",
    "references", "mime-version", "content-type", "content-transfer-encoding",
)
# Signed, and oversigned, when present (RFC 6376 §5.4.1; RFC 8058 §4 asks for the
# List-Unsubscribe pair to be signed).
OVERSIGNED_IF_PRESENT = (
    "sender", "list-id", "list-help", "list-unsubscribe", "list-unsubscribe-post",
    "list-subscribe", "list-post", "list-owner", "list-archive", "content-id",
    "content-description",
)
# Signed as often as they occur: a resend legitimately adds a new set.
SIGNED_IF_PRESENT = (
    "resent-date", "resent-from", "resent-sender", "resent-to", "resent-cc",
    "resent-message-id",
)


def signed_header_names(fields: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    """The h= list for a message with these header fields, lower case, in a fixed order."""
    counts: dict[bytes, int] = {}
    for name, _value in fields:
        key = field_name(name)
        counts[key] = counts.get(key, 0) + 1
    names: list[bytes] = []
    for text in OVERSIGNED:
        name = text.encode()
        names += [name] * (counts.get(name, 0) + 1)
    for text in OVERSIGNED_IF_PRESENT:
        name = text.encode()
        if name in counts:
            names += [name] * (counts[name] + 1)
    for text in SIGNED_IF_PRESENT:
        name = text.encode()
        names += [name] * counts.get(name, 0)
    return names


def _fold_tags(tags: Sequence[tuple[str, str]]) -> str:
    """ "DKIM-Signature: v=1; ...;" folded at 78 columns, then "b=" opening a line of its
    own (so the signature that follows never moves what it signs). Tags break between
    each other, h= also after any colon (RFC 6376 §3.5 allows FWS there)."""
    lines: list[str] = []
    line = "DKIM-Signature:"

    def put(piece: str, joiner: str) -> None:
        nonlocal line
        if len(line) + len(joiner) + len(piece) <= LINE_LIMIT:
            line += joiner + piece
        else:
            lines.append(line)
            line = " " + piece

    for tag, value in tags:
        if tag == "h":
            names = value.split(":")
            for index, name in enumerate(names):
                end = ";" if index == len(names) - 1 else ":"
                put(("h=" if index == 0 else "") + name + end, " " if index == 0 else "")
        else:
            put(f"{tag}={value};", " ")
    lines.append(line)
    lines.append(" b=")
    return "\r\n".join(lines)


def _fold_b(signature: str, first_line: int) -> str:
    """The base64 `signature` continuing a line `first_line` characters long, folded."""
    room = LINE_LIMIT - first_line
    parts = [signature[:room]]
    for i in range(room, len(signature), LINE_LIMIT - 1):
        parts.append(" " + signature[i:i + LINE_LIMIT - 1])
    return "\r\n".join(parts)


def sign(message: bytes, keys: Sequence[DkimKey], *, now: float | None = None,
         expire_after: float | None = None) -> bytes:
    """DKIM-Signature header fields for `message`, one per key in order, each folded at 78
    columns and ending in CRLF: prepend them to the message as they are.

    `message` is the whole message (header, empty line, body). `now` is the t= time (default
    the clock); `expire_after` seconds, when given, set x= that much later. Synchronous and
    CPU-bound: run it in a thread from the event loop. Raises ValueError for a message
    without a From field, which RFC 6376 §5.4 requires to be signed.
    """
    message = crlf_lines(message)
    header_block, body = split_message(message)
    fields = parse_fields(header_block)
    if not any(field_name(name) == b"from" for name, _ in fields):
        raise ValueError("a message without a From field cannot be DKIM-signed")
    names = signed_header_names(fields)
    signed = b"".join(relaxed_header(name, value) for name, value in select_fields(fields, names))
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode("ascii")
    timestamp = int(time.time() if now is None else now)
    out = []
    for key in keys:
        tags = [("v", "1"), ("a", key.algorithm), ("c", "relaxed/relaxed"),
                ("d", key.domain), ("s", key.selector), ("t", str(timestamp))]
        if expire_after is not None:
            tags.append(("x", str(timestamp + int(expire_after))))
        tags += [("h", b":".join(names).decode("ascii")), ("bh", body_hash)]
        head = _fold_tags(tags)
        name, _, value = head.partition(":")
        # The signature field itself is hashed last, with b= empty and no final CRLF.
        data = signed + relaxed_header(name.encode(), value.encode())[:-2]
        b = base64.b64encode(key.sign(data)).decode("ascii")
        out.append(head + _fold_b(b, len(" b=")) + "\r\n")
    return "".join(out).encode("ascii")


# --- which messages we sign ---------------------------------------------------------------


def from_domain(message_headers: bytes) -> str | None:
    """The domain of the one From address, lower case and in A-label form; None when there
    is no From field, more than one, or it holds no single address with a domain."""
    fields = parse_fields(split_message(crlf_lines(message_headers))[0])
    values = [value for name, value in fields if field_name(name) == b"from"]
    if len(values) != 1:
        return None
    text = values[0].replace(CRLF, b"").decode("utf-8", "replace")
    addresses = email.utils.getaddresses([text])
    if len(addresses) != 1:
        return None
    address = addresses[0][1]
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or domain.startswith("["):
        return None
    try:
        return query_name(domain)
    except InvalidName:
        return None


def signing_domain(message_headers: bytes, table: Mapping[str, Sequence[str]]) -> str | None:
    """The [dkim] sign domain whose keys sign this message: its From domain when the table
    lists exactly that domain (a subdomain needs its own entry), else None.

    `message_headers` may be the header block or the whole message."""
    domain = from_domain(message_headers)
    if domain is None:
        return None
    listed = {name.lower(): name for name in table}
    return listed.get(domain)


# --- verification --------------------------------------------------------------------------

# dkimpy logs what it rejects at error level; the result we return says it instead.
_DKIMPY_LOG = logging.getLogger("albatross.msgauth.dkimpy")
_DKIMPY_LOG.addHandler(logging.NullHandler())
_DKIMPY_LOG.propagate = False


@dataclass(frozen=True, slots=True)
class DkimResult:
    """The outcome of one DKIM-Signature (RFC 8601 §2.7.1 result names).

    pass: verified. fail: the signature or body hash does not match. neutral: the signature
    field is malformed. policy: valid syntax we do not accept (rsa-sha1, short keys).
    permerror: no usable key (no record, revoked, wrong type) or expired. temperror: the key
    could not be fetched now (DNS); try again later, never a reason to refuse.
    `header_b` is the start of b= (RFC 6008) to tell signatures of one domain apart.
    """

    result: str
    domain: str
    selector: str
    algorithm: str
    reason: str = ""
    header_b: str = ""


@dataclass
class _Pending:
    index: int
    tags: dict[bytes, bytes]
    domain: str
    selector: str
    algorithm: str
    header_b: str
    record: bytes = b""


def _text(raw: bytes | None) -> str:
    return "" if raw is None else raw.decode("ascii", "replace")


def _check_tags(tags: dict[bytes, bytes], now: float) -> tuple[str, str] | None:
    """(result, reason) for a signature that fails before any key is fetched, else None."""
    algorithm = tags.get(b"a", b"")
    expiry = tags.get(b"x", b"")
    if expiry.isdigit() and int(expiry) < now - 300:
        return "permerror", f"signature expired at {int(expiry)} (x=)"
    try:
        dkimpy.validate_signature_fields(tags)
    except dkimpy.ValidationError as exc:
        return "neutral", f"malformed signature: {exc}"
    if algorithm == b"rsa-sha1":
        return "policy", "rsa-sha1 signatures are not accepted (RFC 8301)"
    if algorithm not in (b"rsa-sha256", b"ed25519-sha256"):
        return "neutral", f"unknown algorithm {_text(algorithm)}"
    return None


def _check_key(pending: _Pending) -> tuple[str, str] | None:
    """(result, reason) when the key record cannot check the signature, else None."""
    try:
        key_tags = parse_tag_value(pending.record)
    except InvalidTagValueList as exc:
        return "permerror", f"malformed key record: {exc}"
    if key_tags.get(b"p", None) == b"":
        return "permerror", "key revoked (empty p=)"
    try:
        _pk, bits, key_type, _tlsrpt = dkimpy.evaluate_pk(pending.domain, pending.record)
    except dkimpy.DKIMException as exc:
        return "permerror", f"unusable key record: {exc}"
    except Exception as exc:  # binascii.Error and the like from a corrupt p=
        return "permerror", f"unusable key record: {exc}"
    wanted = pending.algorithm.removesuffix("-sha256").encode()
    if key_type != wanted:
        return "permerror", f"key type {_text(key_type)} does not match a={pending.algorithm}"
    if key_type == b"rsa" and bits is not None and bits < 1024:
        return "policy", f"RSA key of {bits} bits is too short (RFC 8301)"
    return None


def _run_dkimpy(message: bytes, pending: list[_Pending]) -> list[tuple[str, str]]:
    """The cryptographic checks, in a thread: (result, reason) for each pending signature."""
    records = {f"{p.selector}._domainkey.{p.domain}".lower(): p.record for p in pending}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name.decode("ascii", "replace").rstrip(".").lower())

    try:
        checker = dkimpy.DKIM(message, logger=_DKIMPY_LOG, minkey=1024)
    except dkimpy.DKIMException as exc:
        return [("permerror", f"message cannot be parsed: {exc}")] * len(pending)
    outcomes = []
    for p in pending:
        try:
            ok = checker.verify(idx=p.index, dnsfunc=dnsfunc)
        except dkimpy.ValidationError as exc:
            if str(exc).startswith("body hash mismatch"):
                outcomes.append(("fail", "body hash mismatch (the body was changed)"))
            else:
                outcomes.append(("neutral", f"malformed signature: {exc}"))
            continue
        except dkimpy.DKIMException as exc:
            outcomes.append(("permerror", str(exc)))
            continue
        except Exception as exc:  # a corrupt field dkimpy did not expect
            outcomes.append(("permerror", f"cannot check: {exc!r}"))
            continue
        outcomes.append(("pass", "") if ok else
                        ("fail", "signature did not verify (a signed header field changed)"))
    return outcomes


async def verify(message: bytes, resolver: Resolver, *,
                 max_signatures: int = MAX_SIGNATURES) -> list[DkimResult]:
    """One DkimResult for each of the first `max_signatures` DKIM-Signature fields, top
    down. Key records come from `resolver`, all at once; the hashing and the public-key
    operations run in a thread."""
    message = crlf_lines(message)
    fields = parse_fields(split_message(message)[0])
    signatures = [value for name, value in fields if field_name(name) == b"dkim-signature"]
    results: dict[int, DkimResult] = {}
    pending: list[_Pending] = []
    now = time.time()
    for index, value in enumerate(signatures[:max_signatures]):
        unfolded = value.replace(CRLF, b"")
        try:
            tags = parse_tag_value(unfolded)
        except InvalidTagValueList as exc:
            results[index] = DkimResult("neutral", "", "", "", f"malformed signature: {exc}")
            continue
        domain, selector = _text(tags.get(b"d")).lower(), _text(tags.get(b"s"))
        algorithm = _text(tags.get(b"a"))
        header_b = re.sub(r"\s+", "", _text(tags.get(b"b")))[:12]
        early = _check_tags(tags, now)
        if early is not None:
            results[index] = DkimResult(early[0], domain, selector, algorithm, early[1],
                                        header_b)
            continue
        pending.append(_Pending(index, tags, domain, selector, algorithm, header_b))

    lookups: dict[str, Any] = {}
    names: dict[int, str] = {}
    for p in pending:
        try:
            names[p.index] = query_name(f"{p.selector}._domainkey.{p.domain}")
        except InvalidName as exc:
            results[p.index] = DkimResult("permerror", p.domain, p.selector, p.algorithm,
                                          f"bad d= or s=: {exc}", p.header_b)
            continue
        lookups.setdefault(names[p.index], None)
    answers = dict(zip(lookups, await asyncio.gather(*(resolver.txt(n) for n in lookups)),
                       strict=True))
    ready: list[_Pending] = []
    for p in pending:
        if p.index in results:
            continue
        name = names[p.index]
        answer = answers[name]
        def result(kind: str, reason: str, p: _Pending = p) -> DkimResult:
            return DkimResult(kind, p.domain, p.selector, p.algorithm, reason, p.header_b)
        if answer.status is Status.TEMPFAIL:
            results[p.index] = result("temperror", f"key {name} could not be fetched: "
                                                   f"{answer.reason or 'DNS failure'}")
            continue
        if answer.status is not Status.OK:
            results[p.index] = result("permerror", f"no key for signature ({name}: "
                                                   f"{answer.status.value})")
            continue
        # Several records at one selector are undefined (RFC 6376 §3.6.2.2); take the first.
        p.record = answer.records[0].encode("utf-8", "replace")
        problem = _check_key(p)
        if problem is not None:
            results[p.index] = result(*problem)
            continue
        ready.append(p)
    if ready:
        outcomes = await asyncio.to_thread(_run_dkimpy, message, ready)
        for p, (kind, reason) in zip(ready, outcomes, strict=True):
            results[p.index] = DkimResult(kind, p.domain, p.selector, p.algorithm, reason,
                                          p.header_b)
    return [results[i] for i in sorted(results)]
