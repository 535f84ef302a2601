"""DMARC (RFC 7489): does the author's domain (RFC5322.From) authenticate, and what policy
does it ask for when it does not?

`author_domain(message)` finds the one From domain; `evaluate(resolver, from_domain, spf=...,
dkim=[...])` discovers the policy record (at _dmarc.<from-domain>, else at the
organisational domain's), checks SPF and DKIM identifier alignment (relaxed or strict) and
returns a `DmarcResult`: pass/fail/none/temperror/permerror, the policy the domain asks for
(p, or sp for a subdomain) and the disposition after pct sampling.

The inputs are plain (domain, result) pairs so this module does not depend on how SPF and
DKIM were checked: `spf` is the SPF-authenticated domain (MAIL FROM domain, or the HELO
domain for a null sender) with its result, `dkim` one pair per signature (its d= domain and
result). A passing aligned signature anywhere in the list passes, whatever the others say.

Organisational domains come from the Public Suffix List of the `publicsuffixlist` package
(the list ships inside the package and is released about weekly; nothing is fetched at run
time), ICANN and private sections both, so user1.github.io and user2.github.io are separate
organisations.

Why not the `dmarc` PyPI engine: it is maintained (1.2.1, 2026) but its relaxed alignment
without a PSL is a suffix comparison (a d=co.uk signature would align with any .co.uk
author), its PSL support goes through publicsuffix2 (no release since 2019), it leaves pct
sampling to the caller and discovers records with its own dnspython queries. The evaluation
itself is a few dozen lines, written here on our Resolver.
"""

from __future__ import annotations

import email.utils
import enum
import random as _random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from albatross.dns import InvalidName, Resolver, Status, query_name

MAX_HEADER_BLOCK = 1 << 20  # the header block we scan for From (a bound, not a policy)


class Dmarc(enum.StrEnum):
    NONE = "none"
    PASS = "pass"
    FAIL = "fail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class Policy(enum.StrEnum):
    """A DMARC policy (p=, sp=) and also the disposition applied to one message."""

    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"


# pct sampling: a message outside the sample gets the next less strict policy (§6.6.4).
_LESS_STRICT = {Policy.REJECT: Policy.QUARANTINE, Policy.QUARANTINE: Policy.NONE,
                Policy.NONE: Policy.NONE}


class RecordError(ValueError):
    """A DMARC record that breaks RFC 7489 §6.4."""


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """A parsed DMARC policy record (RFC 7489 §6.3) with the defaults filled in."""

    p: Policy
    sp: Policy
    pct: int = 100
    adkim: str = "r"
    aspf: str = "r"
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    fo: tuple[str, ...] = ("0",)
    rf: tuple[str, ...] = ("afrf",)
    ri: int = 86400
    p_invalid: bool = False  # p= was missing or invalid and a valid rua made it p=none


_TAG = re.compile(r"\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*?)\s*", re.S)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s,!]+(?:![0-9]+[kmgtKMGT]?)?")
_VERSION = re.compile(r"\s*v\s*=\s*DMARC1\s*(?:;|\Z)")


def is_dmarc_record(text: str) -> bool:
    """Whether a TXT record at _dmarc.<domain> is a DMARC record (§6.6.3: starts v=DMARC1)."""
    return bool(_VERSION.match(text))


def parse_record(text: str) -> DmarcRecord:
    """The tags of a DMARC record; RecordError for anything RFC 7489 §6.4 does not allow
    (v not first, a bad p/sp/adkim/aspf/pct/fo/ri value, a bad reporting URI, a tag given
    twice). Unknown tags are ignored (§6.3). A missing or invalid p= with a valid rua= is
    read as p=none (§6.6.3 step 6)."""
    if not text.isascii():
        raise RecordError("the record holds non-ASCII characters")
    tags: dict[str, str] = {}
    for i, part in enumerate(text.split(";")):
        if not part.strip():
            if i == 0:
                raise RecordError("the record does not start with v=DMARC1")
            continue
        m = _TAG.fullmatch(part)
        if not m:
            raise RecordError(f"malformed tag {part.strip()[:40]!r}")
        name, value = m[1].lower(), m[2]
        if i == 0 and (name != "v" or value != "DMARC1"):
            raise RecordError("the record does not start with v=DMARC1")
        if name in tags:
            raise RecordError(f"tag {name} appears twice")
        tags[name] = value

    def policy(name: str) -> Policy | None:
        value = tags.get(name)
        if value is None:
            return None
        try:
            return Policy(value.lower())
        except ValueError:
            raise RecordError(f"{name}={value[:20]} is not none, quarantine or reject") \
                from None

    def uris(name: str) -> tuple[str, ...]:
        value = tags.get(name)
        if value is None:
            return ()
        out = tuple(u.strip() for u in value.split(","))
        for uri in out:
            if not _URI.fullmatch(uri):
                raise RecordError(f"{name} holds an invalid URI {uri[:60]!r}")
        return out

    rua = uris("rua")
    ruf = uris("ruf")
    p_invalid = False
    try:
        p = policy("p")
        if p is None:
            raise RecordError("the record has no p= tag")
    except RecordError:
        if not rua:
            raise
        p, p_invalid = Policy.NONE, True
    sp = policy("sp") or p
    alignment = {}
    for name in ("adkim", "aspf"):
        value = tags.get(name, "r").lower()
        if value not in ("r", "s"):
            raise RecordError(f"{name}={value[:20]} is not r or s")
        alignment[name] = value
    pct_text = tags.get("pct", "100")
    if not pct_text.isdigit() or not pct_text.isascii() or int(pct_text) > 100:
        raise RecordError(f"pct={pct_text[:20]} is not a number from 0 to 100")
    fo = tuple(x.strip().lower() for x in tags.get("fo", "0").split(":"))
    if any(x not in ("0", "1", "d", "s") for x in fo):
        raise RecordError(f"fo={tags['fo'][:20]} holds an unknown option")
    rf = tuple(x.strip().lower() for x in tags.get("rf", "afrf").split(":"))
    ri_text = tags.get("ri", "86400")
    if not ri_text.isdigit() or not ri_text.isascii():
        raise RecordError(f"ri={ri_text[:20]} is not a number")
    return DmarcRecord(p=p, sp=sp, pct=int(pct_text), adkim=alignment["adkim"],
                       aspf=alignment["aspf"], rua=rua, ruf=ruf, fo=fo, rf=rf,
                       ri=int(ri_text), p_invalid=p_invalid)


# --- the author domain (RFC 7489 §6.6.1) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class Author:
    """The RFC5322.From domain, or why there is not exactly one."""

    domain: str  # lower-case A-label, "" when `problem` is set
    problem: str = ""


def header_fields(message: bytes, name: bytes) -> list[bytes]:
    """The unfolded values of every header field called `name` (case-insensitive) in the
    header block of `message` (CRLF or LF line ends), in order."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        end = message.find(b"\n\n")
    block = message[: end if end >= 0 else MAX_HEADER_BLOCK][:MAX_HEADER_BLOCK]
    target = name.lower()
    fields: list[list[bytes]] = []
    inside = False
    for line in block.splitlines():
        if line[:1] in (b" ", b"\t"):
            if inside:
                fields[-1].append(line)
            continue
        # RFC 5322 §4.5.1 (obsolete syntax): white space may come before the colon
        field_name, colon, value = line.partition(b":")
        inside = bool(colon) and field_name.rstrip(b" \t").lower() == target
        if inside:
            fields.append([value])
    return [b"".join(parts) for parts in fields]


def author_domain(message: bytes) -> Author:
    """The one domain of the From header field. RFC 5322 allows one From field; DMARC needs
    one domain to evaluate (§6.6.1), so none, several fields, or addresses of different
    domains in one field are a problem named in `problem`."""
    fields = header_fields(message, b"from")
    if not fields:
        return Author("", "the message has no From header field")
    if len(fields) > 1:
        return Author("", f"the message has {len(fields)} From header fields")
    text = fields[0].decode("utf-8", "replace")
    addresses = [addr for _, addr in email.utils.getaddresses([text]) if addr]
    if not addresses:
        return Author("", "the From header field holds no address")
    domains = set()
    for address in addresses:
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain:
            return Author("", f"From address {address[:80]!r} has no domain")
        try:
            domains.add(query_name(domain))
        except InvalidName:
            return Author("", f"From domain {domain[:80]!r} is not a valid domain")
    if len(domains) > 1:
        return Author("", "the From header field holds addresses of several domains")
    return Author(domains.pop())


# --- organisational domains ----------------------------------------------------------------


@lru_cache(maxsize=1)
def _psl() -> object:
    from publicsuffixlist import PublicSuffixList
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """The registered domain under the Public Suffix List (RFC 7489 §3.2): the public
    suffix plus one label; a name that is itself a public suffix is its own."""
    found = _psl().privatesuffix(domain.lower())  # type: ignore[attr-defined]
    return str(found) if found else domain.lower()


def aligned(identifier: str, author: str, mode: str,
            org: Callable[[str], str] = organizational_domain) -> bool:
    """Identifier alignment (§3.1): strict needs the same name, relaxed the same
    organisational domain."""
    a, b = identifier.lower().rstrip("."), author.lower().rstrip(".")
    if a == b:
        return True
    return mode == "r" and org(a) == org(b)


# --- evaluation ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DmarcResult:
    """The DMARC outcome for one message.

    `policy` is what the domain asks for a failing message (p=, or sp= for a subdomain of
    the organisational domain whose record applies); `disposition` is that policy after
    pct sampling (a message outside the sample gets the next less strict one) and is NONE
    unless `result` is FAIL. `policy_domain` is where the record was found.
    """

    result: Dmarc
    from_domain: str
    policy_domain: str = ""
    record: DmarcRecord | None = None
    policy: Policy = Policy.NONE
    disposition: Policy = Policy.NONE
    spf_aligned: bool = False
    dkim_aligned: bool = False
    sampled_out: bool = False
    reason: str = ""


async def _discover(resolver: Resolver, domain: str) -> tuple[Status, list[str], str]:
    answer = await resolver.txt(f"_dmarc.{domain}")
    if answer.status is Status.TEMPFAIL:
        return Status.TEMPFAIL, [], answer.reason
    return answer.status, [r for r in answer.records if is_dmarc_record(r)], ""


async def evaluate(resolver: Resolver, from_domain: str, *,
                   spf: tuple[str, str] | None,
                   dkim: Sequence[tuple[str, str]],
                   org: Callable[[str], str] = organizational_domain,
                   random: Callable[[], float] = _random.random) -> DmarcResult:
    """DMARC for a message whose author domain is `from_domain`.

    `spf` is (SPF-authenticated domain, SPF result) or None; `dkim` is (d= domain, DKIM
    result) for each signature. `random` returns a float in [0, 1) for pct sampling (tests
    inject it). A DNS failure while finding the record is temperror; so is a failure whose
    only chance to pass was an aligned SPF or DKIM check that itself had a temperror.
    """
    try:
        author = query_name(from_domain)
    except InvalidName:
        return DmarcResult(Dmarc.PERMERROR, from_domain,
                           reason=f"From domain {from_domain[:80]!r} is not valid")
    status, records, why = await _discover(resolver, author)
    policy_domain = author
    if status is Status.TEMPFAIL:
        return DmarcResult(Dmarc.TEMPERROR, author,
                           reason=f"DNS lookup of _dmarc.{author} failed: {why}")
    organisation = org(author)
    if not records and organisation != author:
        status, records, why = await _discover(resolver, organisation)
        policy_domain = organisation
        if status is Status.TEMPFAIL:
            return DmarcResult(Dmarc.TEMPERROR, author,
                               reason=f"DNS lookup of _dmarc.{organisation} failed: {why}")
    if len(records) != 1:
        reason = (f"{len(records)} DMARC records at _dmarc.{policy_domain}" if records
                  else f"no DMARC record for {author}")
        return DmarcResult(Dmarc.NONE, author, reason=reason)
    try:
        record = parse_record(records[0])
    except RecordError as exc:
        return DmarcResult(Dmarc.PERMERROR, author, policy_domain,
                           reason=f"_dmarc.{policy_domain}: {exc}")

    dkim_aligned = any(result == "pass" and aligned(d, author, record.adkim, org)
                       for d, result in dkim)
    spf_aligned = (spf is not None and spf[1] == "pass"
                   and aligned(spf[0], author, record.aspf, org))
    def result(result: Dmarc, reason: str, policy: Policy = Policy.NONE,
               disposition: Policy = Policy.NONE, sampled_out: bool = False) -> DmarcResult:
        return DmarcResult(result, author, policy_domain, record, policy, disposition,
                           spf_aligned, dkim_aligned, sampled_out, reason)

    if spf_aligned or dkim_aligned:
        how = " and ".join(x for x, ok in (("SPF", spf_aligned), ("DKIM", dkim_aligned)) if ok)
        return result(Dmarc.PASS, f"aligned {how} pass")
    temporary = [d for d, outcome in dkim
                 if outcome == "temperror" and aligned(d, author, record.adkim, org)]
    if spf is not None and spf[1] == "temperror" and aligned(spf[0], author, record.aspf, org):
        temporary.append(spf[0])
    if temporary:
        return result(Dmarc.TEMPERROR, "no aligned pass; aligned check(s) of "
                      f"{', '.join(sorted(set(temporary)))} failed temporarily")
    policy = record.sp if policy_domain != author else record.p
    disposition, sampled_out = policy, False
    if record.pct < 100 and not random() * 100 < record.pct:
        disposition, sampled_out = _LESS_STRICT[policy], True
    return result(Dmarc.FAIL, "neither SPF nor DKIM passed aligned with the From domain",
                  policy, disposition, sampled_out)
