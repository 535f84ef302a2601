"""The sending-domain audit behind `albatross doctor`: every DNS record a domain needs for its
mail to be trusted (MX, SPF, DKIM, DMARC, PTR, MTA-STS, TLS-RPT), checked, and when one is
missing or wrong, the exact record to publish.

Every question goes through a Resolver, so `--dns` (and the tests' loopback nsd) decide what
is asked. A temporary DNS failure is reported as "could not check", never as a missing
record: the record may well be there. Nothing here fetches over HTTPS, so the MTA-STS policy
file itself is named, not read. `audit` is a coroutine; the only CPU work is parsing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import ipaddress
import re
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from albatross.dns import InvalidName, Resolver, Status, query_name
from albatross.msgauth import dmarc, spf
from albatross.msgauth.dkimkey import MIN_RSA_BITS, DkimKey, txt_value

MAX_LOOKUPS = 10  # RFC 7208 §4.6.4: DNS-querying terms per SPF evaluation
MAX_VOIDS = 2  # RFC 7208 §4.6.4: lookups answering NXDOMAIN or no data
MAX_MX_HOSTS = 10  # RFC 7208 §4.6.4: MX names looked up for one "mx" term
MAX_SHOWN = 200  # characters of published text quoted in a reason

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Grade(enum.Enum):
    """How one check came out. WARN is also "could not check" (a temporary DNS failure)."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    """One line of the audit: the check's name, its grade, why, and the records to publish
    (zone-file lines) when something is missing or wrong."""

    check: str
    grade: Grade
    reason: str
    publish: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"check": self.check, "status": self.grade.value, "reason": self.reason,
                "publish": list(self.publish)}


def _spki(public: rsa.RSAPublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class Selector:
    """A DKIM selector to check. `key` is the local key to compare with (None: none known);
    `problem` says why a selector that should have a local key has none."""

    name: str
    key: DkimKey | None = None
    problem: str = ""


# --- helpers ----------------------------------------------------------------------------

def _show(text: str, limit: int = MAX_SHOWN) -> str:
    """Published text fit for one output line: control characters shown as "?", bounded."""
    out = "".join(c if c.isprintable() else "?" for c in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def txt_line(name: str, text: str) -> str:
    """A zone-file line publishing `text` as one TXT record at `name`, split into strings of
    at most 255 octets (RFC 1035 §3.3.14; RFC 7208 §3.3 and RFC 6376 §3.6.2.2 join them)."""
    chunks = [text[i:i + 255] for i in range(0, len(text), 255)] or [""]
    quoted = " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)
    return f"{name}. IN TXT {quoted}"


def _could_not(what: str, reason: str) -> str:
    return f"could not check {what}: temporary DNS failure ({_show(reason, 120)})"


def parse_tags(text: str) -> dict[str, str]:
    """A tag=value list (RFC 6376 §3.2, used by DKIM, DMARC, MTA-STS and TLS-RPT records).

    Tag names are lower-cased; values keep their case with surrounding whitespace removed.
    Raises ValueError for a tag without "=", an invalid tag name or a duplicate tag."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"{_show(part.strip(), 40)!r} is not tag=value")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            raise ValueError(f"invalid tag name {_show(name, 40)!r}")
        key = name.lower()
        if key in tags:
            raise ValueError(f"tag {key}= appears twice")
        tags[key] = value.strip()
    return tags


def _first_tag_is(text: str, version: str) -> bool:
    """Whether `text` opens with the tag "v=VERSION" (whitespace around "=" allowed)."""
    head = text.split(";", 1)[0]
    name, sep, value = head.partition("=")
    return bool(sep) and name.strip() == "v" and value.strip() == version


# --- MX -----------------------------------------------------------------------------------

async def check_mx(resolver: Resolver, domain: str, hostname: str) -> Finding:
    """Replies and bounces to the domain need somewhere to go: an MX whose hosts resolve."""
    suggest = (f"{domain}. IN MX 10 {hostname}.",) if "." in hostname else ()
    answer = await resolver.mx(domain)
    if answer.status is Status.TEMPFAIL:
        return Finding("mx", Grade.WARN, _could_not("the MX records", answer.reason))
    if answer.status is Status.NXDOMAIN:
        return Finding("mx", Grade.FAIL, f"{domain} does not exist (NXDOMAIN)", suggest)
    if answer.status is Status.NODATA:
        own = await resolver.addresses(domain)
        if own.ok:
            return Finding("mx", Grade.WARN,
                           f"no MX record; mail to {domain} goes to its own address "
                           f"{', '.join(own.records[:3])} (implicit MX, RFC 5321 §5.1)",
                           suggest)
        if own.status is Status.TEMPFAIL:
            return Finding("mx", Grade.WARN, _could_not(f"the addresses of {domain}",
                                                         own.reason))
        return Finding("mx", Grade.FAIL, f"no MX record and no address: replies and bounces "
                                         f"to {domain} cannot be delivered", suggest)
    if any(mx.is_null for mx in answer.records):
        if len(answer.records) > 1:
            return Finding("mx", Grade.FAIL, "a null MX (RFC 7505) next to other MX records: "
                                             "remove one or the other (RFC 7505 §3)")
        return Finding("mx", Grade.WARN,
                       f"null MX (RFC 7505): {domain} accepts no mail, so replies and bounces "
                       "are lost, and receivers may refuse mail from it (RFC 7505 §4.2)",
                       suggest)
    hosts = [mx.host for mx in answer.records[:MAX_MX_HOSTS]]
    resolved = await asyncio.gather(*(resolver.addresses(h) for h in hosts))
    good = [f"{h} ({', '.join(a.records[:2])})" for h, a in zip(hosts, resolved, strict=True)
            if a.ok]
    temp = [h for h, a in zip(hosts, resolved, strict=True) if a.status is Status.TEMPFAIL]
    bad = [h for h, a in zip(hosts, resolved, strict=True)
           if a.status in (Status.NXDOMAIN, Status.NODATA)]
    if not good and bad and not temp:
        return Finding("mx", Grade.FAIL, f"no MX host has an address: {', '.join(bad)}")
    if bad:
        return Finding("mx", Grade.WARN, f"MX host without an address: {', '.join(bad)}; "
                                         f"resolving: {', '.join(good) or 'none'}")
    if temp:
        return Finding("mx", Grade.WARN, _could_not("the address of " + ", ".join(temp),
                                                    "lookup failed"))
    return Finding("mx", Grade.PASS, f"{len(hosts)} MX host(s), all resolve: {', '.join(good)}")


# --- SPF ----------------------------------------------------------------------------------

class SpfSyntaxError(ValueError):
    """An SPF record that every receiver evaluates to permerror."""


@dataclass(frozen=True)
class Mechanism:
    qualifier: str  # "+", "-", "~" or "?"
    name: str  # all, include, a, mx, ptr, ip4, ip6, exists
    arg: str = ""  # domain-spec or network; "" when absent
    cidr4: int | None = None
    cidr6: int | None = None

    def __str__(self) -> str:
        q = "" if self.qualifier == "+" else self.qualifier
        text = q + self.name + (f":{self.arg}" if self.arg else "")
        if self.cidr4 is not None:
            text += f"/{self.cidr4}"
        if self.cidr6 is not None:
            text += f"/{self.cidr6}" if self.name == "ip6" else f"//{self.cidr6}"
        return text


@dataclass(frozen=True)
class SpfRecord:
    mechanisms: tuple[Mechanism, ...]
    redirect: str | None
    exp: str | None
    text: str

    @property
    def all(self) -> Mechanism | None:
        return next((m for m in self.mechanisms if m.name == "all"), None)


LOOKUP_TERMS = ("include", "a", "mx", "ptr", "exists")
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.-]*)=(.*)", re.S)
_MECHANISM = re.compile(r"([+\-~?]?)([A-Za-z][A-Za-z0-9_.-]*)(?::(.*?))?"
                        r"(?:/(\d{1,3}))?(?://(\d{1,3}))?", re.S)
_MACRO = re.compile(r"%(?:\{([slodiphcrtv])(\d*)(r?)([.\-+,/_=]*)\}|%|_|-)", re.I)


def is_spf(text: str) -> bool:
    """Whether a TXT record is an SPF record (RFC 7208 §4.5: "v=spf1", then space or end)."""
    head = text[:7].lower()
    return head == "v=spf1" or head == "v=spf1 "


def _check_domain_spec(spec: str, term: str) -> None:
    """RFC 7208 §7.1 domain-spec: macro-string ending in a top label or a macro."""
    if not spec:
        raise SpfSyntaxError(f"{term}: empty domain")
    rest = spec
    pos = 0
    while (i := rest.find("%", pos)) >= 0:
        m = _MACRO.match(rest, i)
        if not m:
            raise SpfSyntaxError(f"{term}: invalid macro at {_show(rest[i:i + 10], 10)!r}")
        if m.group(1) and m.group(1).lower() in "crt":
            raise SpfSyntaxError(f"{term}: macro %{{{m.group(1)}}} is only allowed in exp=")
        pos = m.end()
    if "%" in spec:
        return
    if any(not (0x21 <= ord(c) <= 0x7E) for c in spec):
        raise SpfSyntaxError(f"{term}: invalid character in domain")
    labels = spec.rstrip(".").split(".")
    top = labels[-1]
    if len(labels) < 2 or not re.fullmatch(r"[A-Za-z0-9-]*[A-Za-z][A-Za-z0-9-]*", top) \
            or top.startswith("-") or top.endswith("-") or any(not lb for lb in labels):
        raise SpfSyntaxError(f"{term}: {_show(spec, 60)!r} is not a domain name")


def parse_spf(text: str) -> SpfRecord:
    """Parse one SPF record (RFC 7208 §4.6, §12 grammar). Raises SpfSyntaxError."""
    if not is_spf(text):
        raise SpfSyntaxError("does not start with v=spf1")
    mechanisms: list[Mechanism] = []
    modifiers: dict[str, str] = {}
    for term in text[6:].split(" "):
        if not term:
            continue
        modifier = _MODIFIER.fullmatch(term)
        if modifier:
            name, value = modifier.group(1).lower(), modifier.group(2)
            if name in ("redirect", "exp"):
                if name in modifiers:
                    raise SpfSyntaxError(f"{name}= appears twice (RFC 7208 §6)")
                _check_domain_spec(value, term)
            modifiers[name] = value
            continue
        m = _MECHANISM.fullmatch(term)
        if not m:
            raise SpfSyntaxError(f"invalid term {_show(term, 60)!r}")
        qualifier = m.group(1) or "+"
        name = m.group(2).lower()
        arg = m.group(3)
        c4 = int(m.group(4)) if m.group(4) is not None else None
        c6 = int(m.group(5)) if m.group(5) is not None else None
        if name not in ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"):
            raise SpfSyntaxError(f"unknown mechanism {_show(name, 30)!r}")
        if name in ("all", "include", "ptr", "exists") and (c4 is not None or c6 is not None):
            if name in ("include", "exists") and arg is not None and c6 is None:
                arg = f"{arg}/{c4}"  # a "/" inside a domain-spec is a macro-literal
                c4 = None
            else:
                raise SpfSyntaxError(f"{term}: no CIDR length allowed here")
        if name == "all" and arg is not None:
            raise SpfSyntaxError(f"{term}: all takes no argument")
        if name in ("include", "exists", "ip4", "ip6") and not arg:
            raise SpfSyntaxError(f"{term}: {name} needs an argument")
        if name in ("ip4", "ip6"):
            arg = _check_network(name, arg or "", c4, c6, term)
            if name == "ip6":
                c4, c6 = None, c4
        elif arg is not None:
            _check_domain_spec(arg, term)
        if (c4 is not None and c4 > 32) or (c6 is not None and c6 > 128):
            raise SpfSyntaxError(f"{term}: CIDR length out of range")
        mechanisms.append(Mechanism(qualifier, name, arg or "", c4, c6))
    return SpfRecord(tuple(mechanisms), modifiers.get("redirect"), modifiers.get("exp"), text)


def _check_network(name: str, arg: str, c4: int | None, c6: int | None, term: str) -> str:
    if c6 is not None:
        raise SpfSyntaxError(f"{term}: {name} takes one CIDR length")
    try:
        address = ipaddress.ip_address(arg)
    except ValueError:
        raise SpfSyntaxError(f"{term}: {_show(arg, 50)!r} is not an IP address") from None
    if (name == "ip4") != (address.version == 4):
        raise SpfSyntaxError(f"{term}: not an IPv{name[-1]} address")
    if c4 is not None and c4 > (32 if name == "ip4" else 128):
        raise SpfSyntaxError(f"{term}: CIDR length out of range")
    return arg


@dataclass(frozen=True)
class _Fetched:
    """The SPF record of one domain, or why there is none."""

    state: str  # "ok", "none", "temp", "multiple", "invalid"
    record: SpfRecord | None = None
    reason: str = ""
    texts: tuple[str, ...] = ()
    void: bool = False  # the TXT lookup itself answered NXDOMAIN or no data


async def fetch_spf(resolver: Resolver, domain: str) -> _Fetched:
    answer = await resolver.txt(domain)
    if answer.status is Status.TEMPFAIL:
        return _Fetched("temp", reason=answer.reason)
    texts = tuple(t for t in answer.records if is_spf(t))
    if not texts:
        return _Fetched("none", reason=f"no SPF record at {domain}",
                        void=answer.status is not Status.OK)
    if len(texts) > 1:
        return _Fetched("multiple", reason=f"{len(texts)} SPF records at {domain} "
                                           "(RFC 7208 §4.5: permerror)", texts=texts)
    try:
        return _Fetched("ok", parse_spf(texts[0]), texts=texts)
    except SpfSyntaxError as exc:
        return _Fetched("invalid", reason=f"SPF record of {domain}: {exc}", texts=texts)


@dataclass
class _Tally:
    """What a walk through an SPF record and everything it includes found."""

    lookups: int = 0
    voids: int = 0
    errors: list[str] = field(default_factory=list)  # permerror for every receiver
    warnings: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # temporary DNS failures


async def _walk(resolver: Resolver, domain: str, record: SpfRecord, tally: _Tally,
                stack: tuple[str, ...]) -> str | None:
    """Count the DNS lookups and void lookups `record` costs in the worst case (every term
    evaluated, every include followed), as receivers count them (RFC 7208 §4.6.4). Returns
    the qualifier of the `all` that ends the evaluation (through redirect=), if any."""
    seen_all = False
    for m in record.mechanisms:
        if seen_all:
            tally.warnings.append(f"{m} after all in {domain} is never evaluated")
            continue
        if m.name == "all":
            seen_all = True
            continue
        if m.name not in LOOKUP_TERMS:
            continue
        tally.lookups += 1
        if tally.lookups > MAX_LOOKUPS + 5:
            return None  # far past the limit: stop asking
        target = m.arg or domain
        if "%" in target:
            continue  # depends on the sender or client: cannot be followed statically
        if m.name == "include":
            await _follow(resolver, target, f"include:{target}", tally, stack)
        elif m.name == "mx":
            mx = await resolver.mx(target)
            if mx.status is Status.TEMPFAIL:
                tally.unchecked.append(_could_not(f"mx:{target}", mx.reason))
            elif not mx.ok:
                tally.voids += 1
            elif len(mx.records) > MAX_MX_HOSTS:
                tally.errors.append(f"{m} has {len(mx.records)} MX hosts; more than "
                                    f"{MAX_MX_HOSTS} is a permerror (RFC 7208 §4.6.4)")
        elif m.name == "a":
            addresses = await resolver.addresses(target)
            if addresses.status is Status.TEMPFAIL:
                tally.unchecked.append(_could_not(f"a:{target}", addresses.reason))
            elif not addresses.ok:
                tally.voids += 1
        elif m.name == "ptr":
            tally.warnings.append("ptr should not be used (RFC 7208 §5.5): it is slow and "
                                  "many receivers skip it; list the addresses instead")
    if record.all is not None:
        if record.redirect is not None:
            tally.warnings.append(f"redirect= in {domain} is ignored because of all")
        return record.all.qualifier
    if record.redirect is not None:
        tally.lookups += 1
        if "%" in record.redirect or tally.lookups > MAX_LOOKUPS + 5:
            return None
        return await _follow(resolver, record.redirect, f"redirect={record.redirect}",
                             tally, stack)
    return None


async def _follow(resolver: Resolver, target: str, term: str, tally: _Tally,
                  stack: tuple[str, ...]) -> str | None:
    key = target.lower().rstrip(".")
    if key in stack:
        tally.errors.append(f"{term} loops back to {key}")
        return None
    fetched = await fetch_spf(resolver, key)
    if fetched.state == "temp":
        tally.unchecked.append(_could_not(term, fetched.reason))
        return None
    if fetched.void:
        tally.voids += 1
    if fetched.record is None:
        # RFC 7208 §5.2 and §6.1: an include or redirect target without a usable record is
        # a permerror for the whole evaluation.
        tally.errors.append(f"{term}: {fetched.reason} (permerror)")
        return None
    return await _walk(resolver, key, fetched.record, tally, (*stack, key))


def _suggest_spf(ip: IPAddress | None, record: SpfRecord | None = None,
                 terms: Sequence[str] = ()) -> str:
    """An SPF record: `record`'s terms (or `terms`, or "mx"), with ip4/ip6:IP added when it
    is not there, ending in -all."""
    if record is not None:
        body = [t for t in record.text.split(" ")[1:] if t and not re.fullmatch(
            r"[+\-~?]?all", t, re.I)]
    else:
        body = list(terms) or ([] if ip is not None else ["mx"])
    if ip is not None:
        ip_term = f"ip{ip.version}:{ip}"
        if ip_term not in body:
            redirect = [t for t in body if t.lower().startswith("redirect=")]
            body = [t for t in body if t not in redirect] + [ip_term] + redirect
    if not any(t.lower().startswith("redirect=") for t in body):
        body.append("-all")
    return "v=spf1 " + " ".join(body)


async def check_spf(resolver: Resolver, domain: str, ip: IPAddress | None) -> Finding:
    """One SPF record, valid, within the lookup limits, ending in -all or ~all."""
    fetched = await fetch_spf(resolver, domain)
    if fetched.state == "temp":
        return Finding("spf", Grade.WARN, _could_not("the SPF record", fetched.reason))
    if fetched.state == "none":
        return Finding("spf", Grade.FAIL, f"no SPF record at {domain}: receivers cannot tell "
                                          "your servers from forgers",
                       (txt_line(domain, _suggest_spf(ip)),))
    if fetched.state == "multiple":
        terms: list[str] = []
        for text in fetched.texts:
            for t in text.split(" ")[1:]:
                if t and t not in terms and not re.fullmatch(r"[+\-~?]?all", t, re.I):
                    terms.append(t)
        return Finding("spf", Grade.FAIL, f"{fetched.reason}; merge them into one",
                       (txt_line(domain, _suggest_spf(ip, terms=terms)),))
    if fetched.state == "invalid" or fetched.record is None:
        return Finding("spf", Grade.FAIL, f"{fetched.reason} (permerror)")
    record = fetched.record
    tally = _Tally()
    final = await _walk(resolver, domain, record, tally, (domain,))
    if tally.lookups > MAX_LOOKUPS:
        tally.errors.append(f"{tally.lookups} DNS lookups, more than {MAX_LOOKUPS} "
                            "(RFC 7208 §4.6.4: permerror); replace includes by ip4:/ip6:")
    if tally.voids > MAX_VOIDS:
        tally.errors.append(f"{tally.voids} void lookups, more than {MAX_VOIDS} "
                            "(RFC 7208 §4.6.4: permerror)")
    publish: tuple[str, ...] = ()
    fixed = (txt_line(domain, _suggest_spf(None, record)),) if record.all is not None else ()
    if final == "+":
        tally.errors.append("+all authorises every host on the internet to send as "
                            f"{domain}")
        publish = fixed
    elif final == "?":
        tally.warnings.append("?all is neutral: mail from anywhere else is not refused; "
                              "end with -all (or ~all)")
        publish = fixed
    elif final is None and not tally.errors and not tally.unchecked \
            and not any("%" in m.arg for m in record.mechanisms):
        tally.warnings.append("no all term: mail from anywhere else is neutral; end with "
                              "-all (or ~all)")
        publish = (txt_line(domain, _suggest_spf(None, record)),)
    counts = (f"{tally.lookups}/{MAX_LOOKUPS} DNS lookups, "
              f"{tally.voids}/{MAX_VOIDS} void lookups")
    shown = _show(record.text, 120)
    if tally.errors:
        return Finding("spf", Grade.FAIL, f"{'; '.join(tally.errors)} [{counts}] in "
                                          f"{shown!r}", publish)
    if tally.warnings or tally.unchecked:
        return Finding("spf", Grade.WARN, "; ".join(tally.warnings + tally.unchecked)
                       + f" [{counts}]", publish)
    ending = f"ends in {final}all" if final else "ends through a macro"
    return Finding("spf", Grade.PASS, f"{shown!r}: {counts}, {ending}")


async def check_spf_ip(resolver: Resolver, domain: str, ip: IPAddress,
                       hostname: str) -> Finding:
    """Whether mail from `ip` with a MAIL FROM at `domain` passes SPF (evaluated by
    msgauth.spf, the check the mx role runs on received mail)."""
    outcome = await spf.check_host(resolver, str(ip), domain, f"postmaster@{domain}",
                                   helo=hostname)
    result, reason = outcome.result.value, outcome.reason
    detail = f": {_show(reason, 120)}" if reason else ""
    if result == "pass":
        return Finding("spf-ip", Grade.PASS, f"{ip} is authorised to send for {domain} "
                                             "(spf=pass)")
    if result == "temperror":
        return Finding("spf-ip", Grade.WARN, _could_not(f"whether {ip} is authorised",
                                                        reason))
    fetched = await fetch_spf(resolver, domain)
    publish = (txt_line(domain, _suggest_spf(ip, fetched.record)),) \
        if fetched.state in ("ok", "none") else ()
    return Finding("spf-ip", Grade.FAIL, f"{ip} is not authorised to send for {domain} "
                                         f"(spf={result}{detail})", publish)


# --- DKIM ---------------------------------------------------------------------------------

def _published_key(algorithm: str, p: str) -> bytes:
    """The key bytes of a p= value (base64, whitespace allowed; RFC 6376 §3.6.1)."""
    try:
        data = base64.b64decode(re.sub(r"\s+", "", p), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("p= is not valid base64") from None
    if algorithm == "ed25519":
        if len(data) != 32:
            raise ValueError(f"p= holds {len(data)} bytes; an Ed25519 key is 32 (RFC 8463)")
        return data
    try:
        key = serialization.load_der_public_key(data)
    except (ValueError, TypeError):
        raise ValueError("p= is not an RSA public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("p= is not an RSA public key")
    if key.key_size < MIN_RSA_BITS:
        raise ValueError(f"the RSA key has {key.key_size} bits; receivers need at least "
                         f"{MIN_RSA_BITS} (RFC 8301 §3.2)")
    return _spki(key)  # the same bytes whether p= held a SubjectPublicKeyInfo or PKCS#1


async def check_dkim(resolver: Resolver, domain: str, selector: Selector) -> Finding:
    """The key record at SELECTOR._domainkey.DOMAIN: present, valid, and the local key."""
    check = f"dkim:{selector.name}"
    name = f"{selector.name}._domainkey.{domain}"
    key = selector.key
    publish = (txt_line(name, txt_value(key)),) if key else ()
    if selector.problem:
        return Finding(check, Grade.FAIL, selector.problem)
    answer = await resolver.txt(name)
    if answer.status is Status.TEMPFAIL:
        return Finding(check, Grade.WARN, _could_not(f"the DKIM key at {name}", answer.reason))
    texts = list(answer.records)
    if not texts:
        advice = "" if key else (f"; there is no local key for it either: create one with "
                                 f"`albatross dkim keygen {domain} --selector {selector.name}`")
        return Finding(check, Grade.FAIL, f"no DKIM key record at {name}: receivers cannot "
                                          f"verify mail signed with this selector{advice}",
                       publish)
    if len(texts) > 1:
        return Finding(check, Grade.FAIL, f"{len(texts)} DKIM key records at {name}; "
                                          "publish exactly one", publish)
    try:
        tags = parse_tags(texts[0])
        if "v" in tags and (tags["v"] != "DKIM1" or next(iter(tags)) != "v"):
            raise ValueError("v= must be the first tag and say DKIM1 (RFC 6376 §3.6.1)")
        algorithm = tags.get("k", "rsa").lower()
        if algorithm not in ("rsa", "ed25519"):
            raise ValueError(f"unknown key type k={_show(algorithm, 20)}")
        p = tags.get("p")
        if p is None:
            raise ValueError("no p= tag")
        if not p:
            raise ValueError("p= is empty: the key is revoked (RFC 6376 §3.6.1)")
        published = _published_key(algorithm, p)
    except ValueError as exc:
        return Finding(check, Grade.FAIL, f"DKIM record at {name}: {exc}", publish)
    notes = []
    if "y" in [f.strip().lower() for f in tags.get("t", "").split(":")]:
        notes.append("t=y: receivers treat the domain as testing DKIM")
    if tags.get("h") and "sha256" not in tags["h"].lower():
        notes.append("h= does not allow sha256")
    if key is None:
        if notes:
            return Finding(check, Grade.WARN, "; ".join(notes))
        return Finding(check, Grade.PASS, f"{algorithm} key published at {name} (no local "
                                          "key to compare)")
    if algorithm != key.key_type:
        return Finding(check, Grade.FAIL, f"{name} publishes a k={algorithm} key but the local "
                                          f"key is {key.key_type}", publish)
    if published != base64.b64decode(key.public_key_b64()):
        return Finding(check, Grade.FAIL, f"{name} publishes a different key from the local "
                                          "one: signatures will not verify", publish)
    if notes:
        return Finding(check, Grade.WARN, "; ".join(notes), publish)
    return Finding(check, Grade.PASS, f"{algorithm} key at {name} matches the local key")


# --- DMARC --------------------------------------------------------------------------------

_SIZE = re.compile(r"\d+[kmgt]?", re.I)


def _report_uris(tag: str, value: str) -> list[str]:
    """The mailto: addresses of a rua= or ruf= value (RFC 7489 §6.4). Raises ValueError."""
    addresses = []
    for uri in value.split(","):
        uri = uri.strip()
        scheme, sep, rest = uri.partition(":")
        if not sep or scheme.lower() != "mailto":
            raise ValueError(f"{tag}= {_show(uri, 60)!r} is not a mailto: URI")
        address, bang, size = rest.partition("!")
        if bang and not _SIZE.fullmatch(size):
            raise ValueError(f"{tag}= {_show(uri, 60)!r}: invalid size limit")
        local, at, host = address.rpartition("@")
        try:
            if not local or not at:
                raise InvalidName("no local part")
            host = query_name(host)
        except InvalidName:
            raise ValueError(f"{tag}= {_show(uri, 60)!r} is not a mail address") from None
        addresses.append(f"{local}@{host}")
    return addresses


def parse_dmarc(text: str) -> dict[str, str]:
    """Validate a DMARC record as our receiving side reads it (msgauth.dmarc), plus what only
    an audit cares about: p= present and valid, report URIs that are mail addresses.
    Returns the tags; raises ValueError."""
    try:
        record = dmarc.parse_record(text)
    except dmarc.RecordError as exc:
        raise ValueError(str(exc)) from None
    if record.p_invalid:
        raise ValueError("p= is missing or invalid (receivers fall back to p=none because "
                         "rua= is set, RFC 7489 §6.6.3)")
    tags = parse_tags(text)
    for tag in ("rua", "ruf"):
        if tag in tags:
            _report_uris(tag, tags[tag])
    return tags


async def _dmarc_at(resolver: Resolver, domain: str) -> tuple[str, list[str], str]:
    """("ok" | "none" | "temp", the DMARC records at _dmarc.DOMAIN, a reason)."""
    answer = await resolver.txt(f"_dmarc.{domain}")
    if answer.status is Status.TEMPFAIL:
        return "temp", [], answer.reason
    records = [t for t in answer.records if dmarc.is_dmarc_record(t)]
    return ("ok" if records else "none"), records, ""


def _with_tag(text: str, tag: str, value: str) -> str:
    """The record `text` with `tag` set to `value`: replaced in place, else added after p=
    (or at the end)."""
    parts = [p.strip() for p in text.split(";") if p.strip()]
    names = [p.split("=", 1)[0].strip().lower() for p in parts]
    if tag in names:
        parts[names.index(tag)] = f"{tag}={value}"
    else:
        parts.insert(names.index("p") + 1 if "p" in names else len(parts), f"{tag}={value}")
    return "; ".join(parts)


async def check_dmarc(resolver: Resolver, domain: str) -> list[Finding]:
    """The DMARC record of `domain` (or of its organisational domain): valid, enforcing,
    with report addresses that accept reports for it."""
    org = dmarc.organizational_domain(domain)
    suggest = (txt_line(f"_dmarc.{domain}", f"v=DMARC1; p=none; rua=mailto:dmarc-reports@"
                                            f"{domain}"),)
    state, records, reason = await _dmarc_at(resolver, domain)
    where = domain
    if state == "none" and org != domain:
        state, records, reason = await _dmarc_at(resolver, org)
        where = org
    if state == "temp":
        return [Finding("dmarc", Grade.WARN, _could_not("the DMARC record", reason))]
    if state == "none":
        inherited = f" nor at _dmarc.{org}" if org != domain else ""
        return [Finding("dmarc", Grade.FAIL,
                        f"no DMARC record at _dmarc.{domain}{inherited}: receivers apply no "
                        "policy to mail forging your domain and send you no reports; start "
                        "with p=none, read the reports, then move to quarantine or reject",
                        suggest)]
    if len(records) > 1:
        return [Finding("dmarc", Grade.FAIL, f"{len(records)} DMARC records at _dmarc.{where}: "
                                             "receivers ignore them all (RFC 7489 §6.6.3)",
                        suggest)]
    name = f"_dmarc.{where}"
    try:
        tags = parse_dmarc(records[0])
    except ValueError as exc:
        return [Finding("dmarc", Grade.FAIL, f"{name}: {exc} in {_show(records[0], 120)!r}",
                        suggest if where == domain else ())]
    source = f"at {name}" if where == domain else \
        f"inherited from the organisational domain {where} ({name})"
    policy = tags["p"].lower()
    if where != domain:
        policy = tags.get("sp", policy).lower()
    findings = []
    unknown = [t for t in tags if t not in ("v", "p", "sp", "np", "adkim", "aspf", "pct", "fo",
                                            "rf", "ri", "rua", "ruf", "psd", "t")]
    notes = [f"unknown tag {t}= is ignored" for t in unknown]
    if tags.get("pct", "100") != "100":
        notes.append(f"pct={tags['pct']}: the policy applies to only part of failing mail")
    if policy == "none":
        findings.append(Finding(
            "dmarc", Grade.WARN,
            f"p=none {source}: receivers take no action on mail that fails DMARC; once the "
            "aggregate reports show all your mail passing, move to p=quarantine, then "
            "p=reject" + "".join(f"; {n}" for n in notes),
            (txt_line(name, _with_tag(records[0], "sp" if where != domain else "p",
                                      "quarantine")),)))
    elif notes:
        findings.append(Finding("dmarc", Grade.WARN, f"p={policy} {source}; " + "; ".join(notes)))
    else:
        findings.append(Finding("dmarc", Grade.PASS, f"p={policy} {source}"))
    findings.append(await _check_reports(resolver, where, records[0], tags))
    return findings


async def _check_reports(resolver: Resolver, where: str, text: str,
                         tags: dict[str, str]) -> Finding:
    """RFC 7489 §7.1: a report address outside the policy's organisational domain must
    publish DOMAIN._report._dmarc.REPORTDOMAIN, or receivers send it no reports."""
    if "rua" not in tags:
        return Finding("dmarc-reports", Grade.WARN,
                       "no rua= address: you get no aggregate reports, so you cannot see who "
                       "sends as your domain", (txt_line(f"_dmarc.{where}", _with_tag(
                           text, "rua", f"mailto:dmarc-reports@{where}")),))
    addresses = [("rua", a) for a in _report_uris("rua", tags["rua"])]
    addresses += [("ruf", a) for a in _report_uris("ruf", tags.get("ruf", ""))] \
        if "ruf" in tags else []
    org = dmarc.organizational_domain(where)
    external = sorted({a.rpartition("@")[2] for _, a in addresses
                       if dmarc.organizational_domain(a.rpartition("@")[2]) != org})
    answers = await asyncio.gather(*(resolver.txt(f"{where}._report._dmarc.{host}")
                                     for host in external))
    missing, temp = [], []
    for host, answer in zip(external, answers, strict=True):
        if answer.status is Status.TEMPFAIL:
            temp.append(host)
        elif not any(_first_tag_is(t, "DMARC1") for t in answer.records):
            missing.append(host)
    shown = ", ".join(f"{t}={a}" for t, a in addresses)
    if missing:
        return Finding("dmarc-reports", Grade.WARN,
                       f"{', '.join(missing)} has not said it accepts reports for {where} "
                       "(RFC 7489 §7.1): receivers will not send them there",
                       tuple(txt_line(f"{where}._report._dmarc.{h}", "v=DMARC1")
                             for h in missing))
    if temp:
        return Finding("dmarc-reports", Grade.WARN,
                       _could_not(f"the report authorisation of {', '.join(temp)}",
                                  "lookup failed"))
    extra = f" (authorised by {', '.join(external)})" if external else ""
    return Finding("dmarc-reports", Grade.PASS, f"reports go to {shown}{extra}")


# --- PTR ----------------------------------------------------------------------------------

async def check_ptr(resolver: Resolver, ip: IPAddress, hostname: str) -> Finding:
    """The reverse name of the sending address forward-confirms (FCrDNS) and is the HELO
    name: receivers commonly refuse or score mail from addresses failing either."""
    reverse = ip.reverse_pointer
    rtype = "A" if ip.version == 4 else "AAAA"
    suggest = (f"{reverse}. IN PTR {hostname}.", f"{hostname}. IN {rtype} {ip}")
    answer = await resolver.ptr(str(ip))
    if answer.status is Status.TEMPFAIL:
        return Finding("ptr", Grade.WARN, _could_not(f"the PTR of {ip}", answer.reason))
    if not answer.ok:
        return Finding("ptr", Grade.FAIL, f"{ip} has no PTR record (ask whoever holds the "
                                          "address block to publish it)", suggest)
    names = list(answer.records[:MAX_MX_HOSTS])
    forward = await asyncio.gather(*(resolver.addresses(n) for n in names))
    confirmed = [n for n, a in zip(names, forward, strict=True)
                 if a.ok and any(_same_ip(ip, x) for x in a.records)]
    temp = [n for n, a in zip(names, forward, strict=True) if a.status is Status.TEMPFAIL]
    if not confirmed:
        if temp:
            return Finding("ptr", Grade.WARN, _could_not(f"the addresses of {', '.join(temp)}",
                                                         "lookup failed"))
        return Finding("ptr", Grade.FAIL,
                       f"the PTR of {ip} ({', '.join(names)}) does not resolve back to {ip}: "
                       "not forward-confirmed", suggest)
    if hostname.lower() in confirmed:
        return Finding("ptr", Grade.PASS, f"{ip} is {hostname}, forward-confirmed, the HELO "
                                          "name")
    return Finding("ptr", Grade.WARN,
                   f"{ip} is {', '.join(confirmed)} (forward-confirmed) but the HELO name is "
                   f"{hostname}; make them the same", suggest)


def _same_ip(ip: IPAddress, text: str) -> bool:
    try:
        return ipaddress.ip_address(text) == ip
    except ValueError:
        return False


# --- MTA-STS and TLS-RPT --------------------------------------------------------------------

async def check_mta_sts(resolver: Resolver, domain: str) -> Finding:
    """The _mta-sts TXT record (RFC 8461 §3.1). The policy file is not fetched."""
    name = f"_mta-sts.{domain}"
    policy_url = f"https://mta-sts.{domain}/.well-known/mta-sts.txt"
    suggest = (txt_line(name, "v=STSv1; id=20260101T000000"),)
    answer = await resolver.txt(name)
    if answer.status is Status.TEMPFAIL:
        return Finding("mta-sts", Grade.WARN, _could_not("the MTA-STS record", answer.reason))
    records = [t for t in answer.records if t.startswith("v=STSv1")]
    if not records:
        return Finding("mta-sts", Grade.WARN,
                       f"no MTA-STS record at {name}: senders may deliver to you without TLS "
                       f"when an attacker strips it (publish the record and a policy at "
                       f"{policy_url})", suggest)
    if len(records) > 1:
        return Finding("mta-sts", Grade.FAIL, f"{len(records)} MTA-STS records at {name}: "
                                              "senders ignore them all (RFC 8461 §3.1)",
                       suggest)
    try:
        tags = parse_tags(records[0])
    except ValueError as exc:
        return Finding("mta-sts", Grade.FAIL, f"{name}: {exc}", suggest)
    if not re.fullmatch(r"[A-Za-z0-9]{1,32}", tags.get("id", "")):
        return Finding("mta-sts", Grade.FAIL, f"{name}: id= must be 1 to 32 letters and digits "
                                              "(RFC 8461 §3.1)", suggest)
    return Finding("mta-sts", Grade.PASS, f"v=STSv1, id={tags['id']}; the policy at "
                                          f"{policy_url} is not fetched (doctor asks DNS only)")


async def check_tls_rpt(resolver: Resolver, domain: str) -> Finding:
    """The _smtp._tls TXT record (RFC 8460 §3)."""
    name = f"_smtp._tls.{domain}"
    suggest = (txt_line(name, f"v=TLSRPTv1; rua=mailto:tls-reports@{domain}"),)
    answer = await resolver.txt(name)
    if answer.status is Status.TEMPFAIL:
        return Finding("tls-rpt", Grade.WARN, _could_not("the TLS-RPT record", answer.reason))
    records = [t for t in answer.records if _first_tag_is(t, "TLSRPTv1")]
    if not records:
        return Finding("tls-rpt", Grade.WARN, f"no TLS-RPT record at {name}: you get no "
                                              "reports of TLS failures delivering to you",
                       suggest)
    if len(records) > 1:
        return Finding("tls-rpt", Grade.FAIL, f"{len(records)} TLS-RPT records at {name} "
                                              "(RFC 8460 §3: none is used)", suggest)
    try:
        tags = parse_tags(records[0])
        uris = [u.strip() for u in tags.get("rua", "").split(",") if u.strip()]
        if not uris:
            raise ValueError("no rua= address")
        for uri in uris:
            if not re.match(r"(mailto:[^@\s]+@[^@\s]+|https://\S+)\Z", uri, re.I):
                raise ValueError(f"rua= {_show(uri, 60)!r} is not a mailto: or https: URI")
    except ValueError as exc:
        return Finding("tls-rpt", Grade.FAIL, f"{name}: {exc}", suggest)
    return Finding("tls-rpt", Grade.PASS, f"reports go to {', '.join(uris)}")


# --- the whole audit ----------------------------------------------------------------------

async def audit(resolver: Resolver, domain: str, *, hostname: str, ip: IPAddress | None = None,
                selectors: Sequence[Selector] = ()) -> list[Finding]:
    """Every check, in a fixed order. `domain` and `hostname` are A-label names."""
    no_selector = Finding("dkim", Grade.WARN,
                          f"no DKIM selector configured for {domain} (none under [dkim] sign "
                          "nor given with --selector): mail is sent unsigned; create a key "
                          f"with `albatross dkim keygen {domain}`")
    checks: list[Awaitable[Finding | list[Finding]]] = [
        check_mx(resolver, domain, hostname), check_spf(resolver, domain, ip)]
    if ip is not None:
        checks += [check_spf_ip(resolver, domain, ip, hostname),
                   check_ptr(resolver, ip, hostname)]
    checks += [check_dkim(resolver, domain, s) for s in selectors]
    checks += [check_dmarc(resolver, domain), check_mta_sts(resolver, domain),
               check_tls_rpt(resolver, domain)]
    findings: list[Finding] = []
    for group in await asyncio.gather(*checks):
        findings.extend(group if isinstance(group, list) else [group])
    if not selectors:
        findings.insert(4 if ip is not None else 2, no_selector)
    return findings
