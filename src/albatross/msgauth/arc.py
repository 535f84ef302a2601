"""ARC (RFC 8617): checking the chain of custody a forwarded message carries, and sealing the
messages we forward.

Both use dkimpy's ARC code. `arc_verify` fetches every key the chain names with OUR Resolver
first (a temporary failure is a temperror, never a broken chain) and runs dkimpy in a thread.
`arc_seal` is synchronous and slow (dkimpy signs RSA in pure Python, a few milliseconds per
signature, two per seal): it is meant for forwarded mail only, and the caller runs it in a
thread. ARC signs with rsa-sha256 only, so the sealing key is an RSA key.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import dkim as dkimpy
from dkim.util import InvalidTagValueList, parse_tag_value

from albatross.dns import InvalidName, Resolver, Status, query_name
from albatross.msgauth.canon import CRLF, crlf_lines, field_name, parse_fields, split_message
from albatross.msgauth.dkimkey import DkimKey

ARC_FIELDS = (b"arc-seal", b"arc-message-signature", b"arc-authentication-results")
MAX_INSTANCES = 50  # RFC 8617 §4.2.1: i= is 1..50
MAX_KEYS = 20  # distinct key records fetched for one chain

_DKIMPY_LOG = logging.getLogger("albatross.msgauth.dkimpy")
_DKIMPY_LOG.addHandler(logging.NullHandler())
_DKIMPY_LOG.propagate = False


@dataclass(frozen=True, slots=True)
class ArcResult:
    """The chain's validation status and why.

    `result` is "none" (no ARC set), "pass", "fail", or "temperror" when a key could not
    be fetched now. `cv` is what a seal added now must say (RFC 8617 cv=): a chain that
    could not be checked cannot be vouched for, so temperror seals as "fail".
    `instances` is the highest i= seen.
    """

    result: str
    reason: str = ""
    instances: int = 0

    @property
    def cv(self) -> str:
        return "fail" if self.result == "temperror" else self.result


def _keys_named(fields: list[tuple[bytes, bytes]]) -> tuple[set[str], int]:
    """The key record names the ARC-Seal and ARC-Message-Signature fields point at, and the
    highest instance number."""
    names: set[str] = set()
    highest = 0
    for name, value in fields:
        lower = field_name(name)
        if lower not in ARC_FIELDS:
            continue
        try:
            tags = parse_tag_value(value.replace(CRLF, b""))
        except InvalidTagValueList:
            continue  # dkimpy reports the broken set
        instance = tags.get(b"i", b"")
        if instance.isdigit():
            highest = max(highest, int(instance))
        if lower == b"arc-authentication-results":
            continue
        domain, selector = tags.get(b"d"), tags.get(b"s")
        if domain and selector:
            try:
                names.add(query_name(f"{selector.decode('ascii')}._domainkey."
                                     f"{domain.decode('ascii')}"))
            except (InvalidName, UnicodeDecodeError):
                continue
    return names, highest


def _declared_failed(fields: list[tuple[bytes, bytes]]) -> bool:
    """Whether an ARC-Seal already says cv=fail: such a seal ends the chain (RFC 8617), and
    no further set is added to it."""
    for name, value in fields:
        if field_name(name) == b"arc-seal":
            try:
                tags = parse_tag_value(value.replace(CRLF, b""))
            except InvalidTagValueList:
                continue
            if tags.get(b"cv", b"").lower() == b"fail":
                return True
    return False


def _run_verify(message: bytes, records: dict[str, bytes]) -> tuple[Any, str]:
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name.decode("ascii", "replace").rstrip(".").lower())

    try:
        cv, _details, reason = dkimpy.ARC(message, logger=_DKIMPY_LOG,
                                          minkey=1024).verify(dnsfunc=dnsfunc)
    except dkimpy.DKIMException as exc:
        return dkimpy.CV_Fail, str(exc)
    except Exception as exc:  # a corrupt field dkimpy did not expect
        return dkimpy.CV_Fail, f"cannot check: {exc!r}"
    return cv, str(reason)


async def arc_verify(message: bytes, resolver: Resolver) -> ArcResult:
    """Validate the message's ARC chain (RFC 8617 §5.2)."""
    message = crlf_lines(message)
    fields = parse_fields(split_message(message)[0])
    names, highest = _keys_named(fields)
    if highest == 0 and not any(field_name(n) in ARC_FIELDS for n, _ in fields):
        return ArcResult("none", "no ARC sets")
    if highest > MAX_INSTANCES:
        return ArcResult("fail", f"i={highest} is past the limit of {MAX_INSTANCES}", highest)
    if len(names) > MAX_KEYS:
        return ArcResult("fail", f"the chain names {len(names)} keys, more than {MAX_KEYS}",
                         highest)
    ordered = sorted(names)
    answers = await asyncio.gather(*(resolver.txt(name) for name in ordered))
    records: dict[str, bytes] = {}
    for name, answer in zip(ordered, answers, strict=True):
        if answer.status is Status.TEMPFAIL:
            return ArcResult("temperror", f"key {name} could not be fetched: "
                                          f"{answer.reason or 'DNS failure'}", highest)
        if answer.status is Status.OK:
            records[name] = answer.records[0].encode("utf-8", "replace")
    cv, reason = await asyncio.to_thread(_run_verify, message, records)
    if cv == dkimpy.CV_Pass:
        return ArcResult("pass", "", highest)
    if cv == dkimpy.CV_None:
        return ArcResult("none", reason, highest)
    # dkimpy answers None for a chain an earlier sealer already declared failed.
    return ArcResult("fail", reason, highest)


def arc_seal(message: bytes, key: DkimKey, authserv_id: str, auth_results_value: str, *,
             now: float | None = None) -> bytes:
    """The ARC set to prepend to `message` as it is forwarded: ARC-Seal,
    ARC-Message-Signature and ARC-Authentication-Results, each ending in CRLF; b"" when the
    chain is one that must not be extended (an earlier seal said cv=fail).

    `auth_results_value` is the value of the Authentication-Results field this server adds
    (starting with `authserv_id`), and must hold the chain's result as "arc=pass",
    "arc=fail" or "arc=none" (from `arc_verify(...).cv`). `key` must be an RSA key.
    Synchronous and CPU-bound (pure-Python RSA): run it in a thread.
    """
    if key.algorithm != "rsa-sha256":
        raise ValueError(f"ARC seals with rsa-sha256 only; {key.selector} of {key.domain} "
                         "is an Ed25519 key")
    # The value opens with the authserv-id, maybe followed by a version (RFC 8601 §2.2).
    if auth_results_value.split(";", 1)[0].split()[:1] != [authserv_id]:
        raise ValueError(f"the Authentication-Results value must start with {authserv_id!r}")
    message = crlf_lines(message)
    if _declared_failed(parse_fields(split_message(message)[0])):
        return b""
    # dkimpy takes the results to copy into ARC-Authentication-Results from the message's
    # own Authentication-Results field for authserv_id: give it ours on a copy.
    ours = b"Authentication-Results: " + auth_results_value.encode("utf-8") + CRLF
    headers = dkimpy.arc_sign(ours + message, key.selector.encode(), key.domain.encode(),
                              key.pkcs1_pem(), authserv_id.encode(),
                              timestamp=None if now is None else int(now),
                              logger=_DKIMPY_LOG)
    return b"".join(headers)
