"""SPF (RFC 7208): may this client address send mail for the MAIL FROM or HELO domain?

`check_mail_from` and `check_helo` run the RFC 7208 §4 check_host() function on our
asynchronous Resolver and return an `SpfResult`: one of the seven results, the mechanism that
matched, the domain's explanation for a fail and a reason for errors.

Our own implementation rather than pyspf: pyspf's last release is 2.0.14 of January 2020, and
it does its own DNS through a module-global hook (spf.DNSLookup), so feeding it from our
Resolver would mean a thread per check calling back into the event loop through a global.
Here every lookup goes through the Resolver (its cache, its NXDOMAIN / NODATA / TEMPFAIL
distinction, `--dns` in tests), and the check runs on the event loop: it is string work
between awaits, no CPU-heavy step. The openspf RFC 7208 test suite runs against this code
(tests/test_spf.py).

Limits (RFC 7208 §4.6.4, all enforced): at most 10 terms that cause DNS lookups (include,
a, mx, ptr, exists, redirect) in the whole evaluation, more is permerror; at most 2 void
lookups (NXDOMAIN or no records), more is permerror; at most 10 MX names per mx mechanism
(more is permerror) and 10 PTR names per ptr mechanism or %{p} macro (the rest ignored).
The caller bounds the wall time (check_message wraps this in a timeout, giving temperror).

Names: the MAIL FROM or HELO domain must be a host name (names.query_name), but the names a
record's domain-specs and macros produce, and the MX targets of an mx mechanism, are asked
with `domain_spec=True`: RFC 7208 §7.1 allows any visible character there
("a:foo:bar/baz.example.com"). Names from PTR answers (the ptr mechanism, %{p}) stay host
names.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from albatross.dns import Answer, InvalidName, Resolver, Status, query_name

T = TypeVar("T")

MAX_LOOKUPS = 10  # RFC 7208 §4.6.4: DNS-querying terms per check_host evaluation
MAX_VOID_LOOKUPS = 2  # §4.6.4: "SHOULD limit void lookups to two"
MAX_MX_NAMES = 10  # §4.6.4: address lookups per mx mechanism
MAX_PTR_NAMES = 10  # §4.6.4: names validated per ptr mechanism / %{p}
MAX_DOMAIN = 253  # §7.3: longer expansions lose labels from the left
MAX_RECORD = 4096  # a bound on the SPF text we parse (a TXT answer is already bounded)


class Spf(enum.StrEnum):
    """The seven SPF results (RFC 7208 §2.6), as they appear in Authentication-Results."""

    NONE = "none"
    NEUTRAL = "neutral"
    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


QUALIFIERS = {"+": Spf.PASS, "-": Spf.FAIL, "~": Spf.SOFTFAIL, "?": Spf.NEUTRAL}


@dataclass(frozen=True, slots=True)
class SpfResult:
    """The outcome of one SPF check.

    `identity` is "mailfrom" or "helo" (a null reverse-path is checked as the HELO identity,
    RFC 7208 §2.4); `domain` the domain checked and `sender` the address used for the
    macros ("postmaster@<helo>" for the HELO identity). `mechanism` is the directive that
    matched as written in the record ("-all", "include:_spf.example.org"), "" when none did.
    `explanation` is the domain's exp= text (or the default) for a fail, else "".
    `reason` is human text for logs and the A-R comment (why none/neutral/errors).
    """

    result: Spf
    identity: str
    domain: str
    sender: str
    mechanism: str = ""
    explanation: str = ""
    reason: str = ""
    lookups: int = 0
    void_lookups: int = 0


class _PermError(Exception):
    """The record or the evaluation breaks RFC 7208: permerror."""


class _TempError(Exception):
    """A DNS lookup failed for now: temperror."""


# --- syntax (RFC 7208 §12, the ABNF) ---------------------------------------------------

_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.\-]*)=(.*)", re.S)
_MECHANISM = re.compile(r"([+?~-]?)([A-Za-z][A-Za-z0-9]*)(.*)", re.S)
_DUAL_CIDR = re.compile(r"(?::(?P<domain>.*?))?(?:/(?P<v4>\d+))?(?://(?P<v6>\d+))?", re.S)
_CIDR_NUMBER = re.compile(r"0|[1-9][0-9]{0,2}")
_MACRO = re.compile(r"([slodiphcrtv])([0-9]*)(r?)([.\-+,/_=]*)", re.I)
_TOPLABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_EXP_ONLY = frozenset("crt")  # macro letters allowed only in exp text (§7.2)
_DELIMITERS = ".-+,/_="


@dataclass(frozen=True, slots=True)
class _Directive:
    text: str  # as written, for SpfResult.mechanism
    qualifier: Spf
    kind: str  # all include a mx ptr ip4 ip6 exists
    domain: str | None = None  # the domain-spec, unexpanded
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    cidr4: int = 32
    cidr6: int = 128


@dataclass(slots=True)
class _Record:
    directives: list[_Directive] = field(default_factory=list)
    redirect: str | None = None
    exp: str | None = None


def _macro_tokens(text: str, *, exp: bool) -> list[tuple[str, str]]:
    """Splits macro-string text into ("lit", text) and ("macro", body) tokens, checking the
    syntax of §7.1; `exp` allows spaces and the c, r, t letters (explain-string)."""
    tokens: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "%":
            nxt = text[i + 1: i + 2]
            if nxt == "%":
                tokens.append(("lit", "%"))
                i += 2
            elif nxt == "_":
                tokens.append(("lit", " "))
                i += 2
            elif nxt == "-":
                tokens.append(("lit", "%20"))
                i += 2
            elif nxt == "{":
                end = text.find("}", i + 2)
                if end < 0:
                    raise _PermError(f"unterminated macro in {text[:80]!r}")
                body = text[i + 2: end]
                m = _MACRO.fullmatch(body)
                if not m:
                    raise _PermError(f"invalid macro %{{{body[:40]}}}")
                if m[1].lower() in _EXP_ONLY and not exp:
                    raise _PermError(f"macro %{{{body}}} is allowed only in exp text")
                if m[2] and int(m[2]) == 0:
                    raise _PermError(f"macro %{{{body}}} keeps zero parts")
                tokens.append(("macro", body))
                i = end + 1
            else:
                raise _PermError(f"invalid macro escape {text[i:i + 2]!r}")
            continue
        if not ("!" <= c <= "~" or (exp and c == " ")):
            raise _PermError(f"invalid character {c!r} in {text[:80]!r}")
        j = i
        while j < n and text[j] != "%" and ("!" <= text[j] <= "~" or (exp and text[j] == " ")):
            j += 1
        tokens.append(("lit", text[i:j]))
        i = j
    return tokens


def _check_domain_spec(spec: str) -> None:
    """Raises _PermError unless `spec` is a domain-spec: macro-string domain-end."""
    if not spec:
        raise _PermError("empty domain-spec")
    if spec[-1] == "}" and "%{" in spec:
        tokens = _macro_tokens(spec, exp=False)
        if tokens[-1][0] == "macro":
            return
    else:
        _macro_tokens(spec, exp=False)
    # domain-end = "." toplabel ["."]
    tail = spec[:-1] if spec.endswith(".") else spec
    _, dot, toplabel = tail.rpartition(".")
    if not dot or not _TOPLABEL.fullmatch(toplabel) or toplabel.isdigit():
        raise _PermError(f"{spec[:80]!r} does not end in a valid top-level label")


def _cidr(text: str | None, limit: int, default: int) -> int:
    if text is None:
        return default
    if not _CIDR_NUMBER.fullmatch(text) or int(text) > limit:
        raise _PermError(f"invalid CIDR length /{text}")
    return int(text)


def parse_record(text: str) -> _Record:
    """The terms of one SPF record (already known to start with "v=spf1"), or _PermError.

    The whole record is checked before anything is evaluated (§4.6: a syntax error anywhere
    is a permerror)."""
    if len(text) > MAX_RECORD:
        raise _PermError("SPF record too long")
    if not text.isascii():
        raise _PermError("SPF record holds a non-ASCII character")
    record = _Record()
    for term in text.split(" ")[1:]:
        if not term:
            continue  # several spaces between terms, or trailing ones (§4.6.1, §4.5)
        if any(not "!" <= c <= "~" for c in term):
            raise _PermError(f"control character in term {term[:60]!r}")
        modifier = _MODIFIER.fullmatch(term)
        if modifier:
            name, value = modifier[1].lower(), modifier[2]
            if name in ("redirect", "exp"):
                if getattr(record, name) is not None:
                    raise _PermError(f"{name}= appears twice")  # §6
                _check_domain_spec(value)
                setattr(record, name, value)
            else:
                _macro_tokens(value, exp=False)  # unknown modifiers: ignored once valid
            continue
        record.directives.append(_directive(term))
    return record


def _directive(term: str) -> _Directive:
    m = _MECHANISM.fullmatch(term)
    if not m:
        raise _PermError(f"unknown term {term[:60]!r}")
    qualifier = QUALIFIERS[m[1] or "+"]
    kind, rest = m[2].lower(), m[3]
    if kind == "all":
        if rest:
            raise _PermError(f"invalid term {term[:60]!r}")
        return _Directive(term, qualifier, kind)
    if kind in ("include", "exists"):
        if not rest.startswith(":"):
            raise _PermError(f"{kind} needs a domain: {term[:60]!r}")
        _check_domain_spec(rest[1:])
        return _Directive(term, qualifier, kind, domain=rest[1:])
    if kind in ("a", "mx"):
        parts = _DUAL_CIDR.fullmatch(rest)
        if not parts:
            raise _PermError(f"invalid term {term[:60]!r}")
        domain = parts["domain"]
        if domain is not None:
            _check_domain_spec(domain)
        return _Directive(term, qualifier, kind, domain=domain,
                          cidr4=_cidr(parts["v4"], 32, 32), cidr6=_cidr(parts["v6"], 128, 128))
    if kind == "ptr":
        if rest and not rest.startswith(":"):
            raise _PermError(f"invalid term {term[:60]!r}")
        domain = rest[1:] if rest else None
        if domain is not None:
            _check_domain_spec(domain)
        return _Directive(term, qualifier, kind, domain=domain)
    if kind in ("ip4", "ip6"):
        if not rest.startswith(":"):
            raise _PermError(f"{kind} needs an address: {term[:60]!r}")
        address, slash, length = rest[1:].partition("/")
        limit = 32 if kind == "ip4" else 128
        prefix = _cidr(length if slash else None, limit, limit)
        try:
            ip = (ipaddress.IPv4Address(address) if kind == "ip4"
                  else ipaddress.IPv6Address(address))
        except ValueError:
            raise _PermError(f"invalid address in {term[:60]!r}") from None
        network = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
        return _Directive(term, qualifier, kind, network=network)
    raise _PermError(f"unknown mechanism {term[:60]!r}")


def is_spf_record(text: str) -> bool:
    """Whether a TXT record is an SPF version 1 record (§4.5): "v=spf1" alone or followed
    by a space, in any case."""
    head = text[:7].lower()
    return head == "v=spf1" or head == "v=spf1 "


def valid_domain(domain: str) -> bool:
    """Whether `domain` can be checked at all (§4.3): a multi-label name whose labels are
    1-63 octets. Address literals and single labels cannot."""
    try:
        name = query_name(domain)
    except InvalidName:
        return False
    return "." in name


# --- evaluation (RFC 7208 §4-§7) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outcome:
    result: Spf
    mechanism: str = ""
    explanation: str = ""
    reason: str = ""


class _Evaluation:
    """The state of one check_host() run, shared by its include and redirect recursion."""

    def __init__(self, resolver: Resolver, ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                 sender: str, helo: str, receiver: str, default_explanation: str,
                 clock: Callable[[], float]) -> None:
        self.resolver = resolver
        self.ip = ip
        local, _, domain = sender.rpartition("@")
        self.sender = f"{local or 'postmaster'}@{domain}"
        self.local = local or "postmaster"
        self.sender_domain = domain
        self.helo = helo
        self.receiver = receiver or "unknown"
        self.default_explanation = default_explanation
        self.clock = clock
        self.lookups = 0
        self.void_lookups = 0
        self._ptr: Answer[str] | None = None
        self._validated: list[str] = []

    # limits

    def _count_lookup(self) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:
            raise _PermError(f"more than {MAX_LOOKUPS} DNS-querying terms")

    def _void(self, answer: Answer[Any]) -> None:
        if answer.status in (Status.NXDOMAIN, Status.NODATA):
            self.void_lookups += 1
            if self.void_lookups > MAX_VOID_LOOKUPS:
                raise _PermError(f"more than {MAX_VOID_LOOKUPS} void DNS lookups")

    # lookups

    async def _addresses(self, host: str, *, domain_spec: bool) -> Answer[str]:
        if self.ip.version == 4:
            return await self.resolver.a(host, domain_spec=domain_spec)
        return await self.resolver.aaaa(host, domain_spec=domain_spec)

    async def _validated_names(self) -> tuple[Answer[str], list[str]]:
        """The PTR answer for the client and its names that resolve back to it (§5.5), at
        most MAX_PTR_NAMES asked; lookup errors skip a name. Cached: the ptr mechanism and
        %{p} share it."""
        if self._ptr is None:
            self._ptr = await self.resolver.ptr(str(self.ip))
            for name in self._ptr.records[:MAX_PTR_NAMES]:
                forward = await self._addresses(name, domain_spec=False)
                if forward.ok and any(_same_ip(a, self.ip) for a in forward.records):
                    self._validated.append(name)
        return self._ptr, self._validated

    # check_host()

    async def check_host(self, domain: str, explain: bool, *,
                         domain_spec: bool = False) -> _Outcome:
        """check_host() of the identity's domain, or with `domain_spec` of an include or
        redirect target expanded from a domain-spec."""
        answer = await self.resolver.txt(domain, domain_spec=domain_spec)
        if answer.status is Status.TEMPFAIL:
            raise _TempError(f"DNS lookup of the SPF record of {domain} failed: "
                             f"{answer.reason}")
        records = [r for r in answer.records if is_spf_record(r)]
        if not records:
            return _Outcome(Spf.NONE, reason=f"{domain} publishes no SPF record")
        if len(records) > 1:
            raise _PermError(f"{domain} publishes {len(records)} SPF records")
        record = parse_record(records[0])
        for directive in record.directives:
            if await self._matches(directive, domain):
                result = directive.qualifier
                explanation = ""
                if result is Spf.FAIL and explain:
                    explanation = await self._explain(record.exp, domain)
                return _Outcome(result, directive.text, explanation)
        if record.redirect is not None:
            self._count_lookup()
            target = await self._target(record.redirect, domain)
            outcome = await self.check_host(target, explain, domain_spec=True)
            if outcome.result is Spf.NONE:
                raise _PermError(f"redirect={target}: {outcome.reason}")
            return outcome
        return _Outcome(Spf.NEUTRAL, reason=f"no mechanism of {domain} matched")

    async def _matches(self, d: _Directive, domain: str) -> bool:
        if d.kind == "all":
            return True
        if d.kind in ("ip4", "ip6"):
            return d.network is not None and _in_network(self.ip, d.network)
        self._count_lookup()
        target = await self._target(d.domain, domain) if d.domain is not None else domain
        if d.kind == "include":
            outcome = await self.check_host(target, explain=False, domain_spec=True)
            if outcome.result is Spf.PASS:
                return True
            if outcome.result in (Spf.FAIL, Spf.SOFTFAIL, Spf.NEUTRAL):
                return False
            raise _PermError(f"include:{target}: {outcome.reason}")  # none (§5.2)
        if d.kind == "a":
            return self._any_in(await self._checked(self._addresses(target, domain_spec=True),
                                                    void=True), d)
        if d.kind == "mx":
            mx = await self._checked(self.resolver.mx(target, domain_spec=True), void=True)
            if len(mx.records) > MAX_MX_NAMES:
                raise _PermError(f"{target} has more than {MAX_MX_NAMES} MX records")
            for record in mx.records:
                if record.is_null:
                    continue
                addresses = self._addresses(record.host, domain_spec=True)
                if self._any_in(await self._checked(addresses), d):
                    return True
            return False
        if d.kind == "ptr":
            answer, names = await self._validated_names()
            if answer.status is not Status.TEMPFAIL:
                self._void(answer)
            # a failed PTR lookup simply does not match (§5.5)
            return any(n == target or n.endswith("." + target) for n in names)
        if d.kind == "exists":
            answer = await self._checked(self.resolver.a(target, domain_spec=True), void=True)
            return answer.ok
        raise AssertionError(f"unhandled mechanism {d.kind}")

    async def _checked(self, lookup: Awaitable[Answer[T]], void: bool = False) -> Answer[T]:
        answer = await lookup
        if answer.status is Status.TEMPFAIL:
            raise _TempError(f"DNS lookup failed: {answer.reason}")
        if void:
            self._void(answer)
        return answer

    def _any_in(self, answer: Answer[str], d: _Directive) -> bool:
        prefix = d.cidr4 if self.ip.version == 4 else d.cidr6
        network = ipaddress.ip_network(f"{self.ip}/{prefix}", strict=False)
        for text in answer.records:
            try:
                if ipaddress.ip_address(text) in network:
                    return True
            except ValueError:
                continue
        return False

    async def _target(self, spec: str, domain: str) -> str:
        """A domain-spec expanded into the name to look up (§7.3: over 253 characters,
        labels are dropped from the left)."""
        name = (await self.expand(spec, domain, exp=False)).rstrip(".")
        while len(name) > MAX_DOMAIN and "." in name:
            name = name.partition(".")[2]
        return name.lower()

    async def _explain(self, spec: str | None, domain: str) -> str:
        """The exp= text for a fail (§6.2); any trouble gives the default explanation."""
        if spec is None:
            return self.default_explanation
        try:
            target = await self._target(spec, domain)
            answer = await self.resolver.txt(target, domain_spec=True)
            if not answer.ok or len(answer.records) != 1 or not answer.records[0].isascii():
                return self.default_explanation
            return await self.expand(answer.records[0], domain, exp=True)
        except (_PermError, _TempError):
            return self.default_explanation

    # macros (§7)

    async def expand(self, text: str, domain: str, *, exp: bool) -> str:
        out: list[str] = []
        for kind, body in _macro_tokens(text, exp=exp):
            if kind == "lit":
                out.append(body)
                continue
            m = _MACRO.fullmatch(body)
            assert m is not None  # checked by _macro_tokens
            letter, digits, reverse, delimiters = m[1], m[2], m[3], m[4]
            value = await self._macro_value(letter.lower(), domain)
            parts = re.split("[" + re.escape(delimiters or ".") + "]", value)
            if reverse:
                parts.reverse()
            if digits:
                parts = parts[-int(digits):]
            value = ".".join(parts)
            if letter.isupper():
                value = urllib.parse.quote(value, safe="")
            out.append(value)
        return "".join(out)

    async def _macro_value(self, letter: str, domain: str) -> str:
        if letter == "s":
            return self.sender
        if letter == "l":
            return self.local
        if letter == "o":
            return self.sender_domain
        if letter == "d":
            return domain
        if letter == "i":
            if self.ip.version == 4:
                return str(self.ip)
            # dot-format: 32 nibbles (§7.3). Upper-case hex, as the RFC 7208 test suite
            # expects in exp text; DNS compares names without case, so lookups are the same.
            return ".".join(self.ip.exploded.replace(":", "").upper())
        if letter == "p":
            return await self._p_macro(domain)
        if letter == "v":
            return "in-addr" if self.ip.version == 4 else "ip6"
        if letter == "h":
            return self.helo
        if letter == "c":
            return str(self.ip)
        if letter == "r":
            return self.receiver
        if letter == "t":
            return str(int(self.clock()))
        raise AssertionError(f"unhandled macro letter {letter}")

    async def _p_macro(self, domain: str) -> str:
        """§7.3: a validated name of the client, preferring `domain`, then a subdomain."""
        _, names = await self._validated_names()
        for name in names:
            if name == domain.lower():
                return name
        for name in names:
            if name.endswith("." + domain.lower()):
                return name
        return names[0] if names else "unknown"


def _same_ip(text: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(text) == ip
    except ValueError:
        return False


def _in_network(ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
                network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return ip.version == network.version and ip in network


def _client_ip(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    # An IPv4-mapped IPv6 client (a dual-stack socket) is the IPv4 address it maps (§5).
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


async def check_host(resolver: Resolver, ip: str, domain: str, sender: str, *,
                     helo: str = "", identity: str = "mailfrom", receiver: str = "unknown",
                     default_explanation: str = "",
                     clock: Callable[[], float] = time.time) -> SpfResult:
    """RFC 7208 §4 check_host(ip, domain, sender). Never raises for DNS or record trouble:
    those are temperror and permerror results. `receiver` is our host name for %{r};
    `default_explanation` is the explanation of a fail whose domain gives none."""
    client = _client_ip(ip)
    state = _Evaluation(resolver, client, sender, helo, receiver, default_explanation, clock)
    if not valid_domain(domain):
        return SpfResult(Spf.NONE, identity, domain, state.sender,
                         reason=f"{domain[:80]!r} is not a domain SPF can check")
    domain = query_name(domain)
    try:
        outcome = await state.check_host(domain, explain=True)
    except _TempError as exc:
        outcome = _Outcome(Spf.TEMPERROR, reason=str(exc))
    except _PermError as exc:
        outcome = _Outcome(Spf.PERMERROR, reason=str(exc))
    return SpfResult(outcome.result, identity, domain, state.sender, outcome.mechanism,
                     outcome.explanation, outcome.reason, state.lookups, state.void_lookups)


async def check_helo(resolver: Resolver, ip: str, helo: str, *, receiver: str = "unknown",
                     default_explanation: str = "",
                     clock: Callable[[], float] = time.time) -> SpfResult:
    """The SPF check of the HELO identity (§2.3): check_host(ip, helo, postmaster@helo)."""
    return await check_host(resolver, ip, helo, f"postmaster@{helo}", helo=helo,
                            identity="helo", receiver=receiver,
                            default_explanation=default_explanation, clock=clock)


async def check_mail_from(resolver: Resolver, ip: str, mail_from: str, helo: str, *,
                          receiver: str = "unknown", default_explanation: str = "",
                          clock: Callable[[], float] = time.time) -> SpfResult:
    """The SPF check of the MAIL FROM identity (§2.4); a null reverse-path checks the HELO
    identity instead (identity "helo" in the result), as §2.4 says."""
    if not mail_from:
        return await check_helo(resolver, ip, helo, receiver=receiver,
                                default_explanation=default_explanation, clock=clock)
    domain = mail_from.rpartition("@")[2]
    return await check_host(resolver, ip, domain, mail_from, helo=helo, identity="mailfrom",
                            receiver=receiver, default_explanation=default_explanation,
                            clock=clock)
