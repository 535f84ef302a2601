"""Route resolution for SMTP delivery: which hosts and addresses to try, in which order.

RFC 5321 §5.1: the MX records of the domain by preference, equal preferences in random order
(to spread load, §5.1 last paragraphs); no MX records at all means the domain itself is the
MX (the "implicit MX"); a null MX (RFC 7505, a single "0 .") means the domain takes no mail.
If this host is one of the MX hosts, only the more preferred ones may be tried: a message
passed to an equal or less preferred MX would come back to us (§5.1, "it MUST discard its
own and all lower-preference MX records"); if none is left, that is a mail loop.

Failures are `RouteError`s carrying the Reply to report and a category:
- NXDOMAIN for the domain -> 550 5.1.2 (bad destination system address, RFC 3463);
- null MX -> 556 5.1.10 (RFC 7505 §4.1);
- a temporary DNS failure -> 451 4.4.3 (directory server failure);
- an MX list that points back at us -> 554 5.4.6 (routing loop).

Only two questions of `albatross.dns.Resolver` are needed (`mx()` and `addresses()`), so
`RouteResolver` names just those: any Resolver fits, and so does a test's small fake.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field
from typing import Protocol

from albatross.dns import MX, Answer, Status
from albatross.model import Reply


class RouteResolver(Protocol):
    """The part of albatross.dns.Resolver that routing needs."""

    async def mx(self, domain: str) -> Answer[MX]: ...

    async def addresses(self, host: str) -> Answer[str]: ...


@dataclass(frozen=True, slots=True)
class Candidate:
    """One place to try: the MX host name (for TLS names and logs) and one of its IPs."""

    host: str
    ip: str


class RouteError(Exception):
    """No route now (temporary) or ever (permanent): `reply` says which, `category` why."""

    def __init__(self, reply: Reply, category: str) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.category = category

    @property
    def permanent(self) -> bool:
        return self.reply.is_permanent


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """How to route. `local_addresses` are this host's IPs (an MX resolving to one is us);
    `loopback_is_local` adds 127.0.0.0/8 and ::1 to them (off in tests, where the "remote"
    servers live on loopback). `our_domains` are never loops (the router delivers those
    locally before a courier sees them). Address literals need `allow_literals`."""

    local_addresses: frozenset[str] = frozenset()
    loopback_is_local: bool = False
    our_domains: frozenset[str] = frozenset()
    allow_literals: bool = False
    max_mx: int = 5
    max_addresses: int = 10
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def is_local(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if self.loopback_is_local and addr.is_loopback:
            return True
        return addr.compressed in self._normalized_locals()

    def _normalized_locals(self) -> frozenset[str]:
        out = set()
        for a in self.local_addresses:
            try:
                out.add(ipaddress.ip_address(a).compressed)
            except ValueError:
                continue
        return frozenset(out)


def literal_address(domain: str) -> str | None:
    """The IP of an address literal ("[192.0.2.1]", "[IPv6:2001:db8::1]"), else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner[:5].upper() == "IPV6:":
        inner = inner[5:]
        try:
            return ipaddress.IPv6Address(inner).compressed
        except ValueError:
            return None
    try:
        return ipaddress.IPv4Address(inner).compressed
    except ValueError:
        return None


def _temp(text: str) -> RouteError:
    return RouteError(Reply(451, "4.4.3", text), "dns")


async def find_route(domain: str, resolver: RouteResolver, policy: RoutePolicy,
                     ) -> tuple[Candidate, ...]:
    """The candidates for `domain`, best first; raises RouteError when there are none."""
    ours = domain.lower().rstrip(".") in policy.our_domains
    if domain.startswith("["):
        ip = literal_address(domain)
        if ip is None:
            raise RouteError(Reply(550, "5.1.2", f"bad address literal {domain}"), "dns")
        if not policy.allow_literals:
            raise RouteError(Reply(550, "5.7.1", f"address literals are not allowed: {domain}"),
                             "policy")
        if policy.is_local(ip) and not ours:
            raise RouteError(Reply(554, "5.4.6", f"mail for {domain} loops back to myself"),
                             "loop")
        return (Candidate(domain, ip),)

    answer = await resolver.mx(domain)
    status = answer.status
    if status is Status.NXDOMAIN:
        raise RouteError(Reply(550, "5.1.2", f"domain {domain} does not exist (NXDOMAIN)"),
                         "dns")
    if status is Status.TEMPFAIL:
        raise _temp(f"temporary DNS failure looking up MX of {domain}"
                    + (f": {answer.reason}" if answer.reason else ""))
    hosts: list[tuple[int, str]]
    if status is Status.NODATA or (status is Status.OK and not answer.records):
        hosts = [(0, domain)]  # RFC 5321 §5.1: the implicit MX
    elif status is Status.OK:
        records = list(answer.records)
        if any(r.host.rstrip(".") == "" for r in records):
            # RFC 7505 §3: a null MX is the domain's only MX; it takes no mail at all.
            raise RouteError(Reply(556, "5.1.10",
                                   f"domain {domain} does not accept mail (null MX)"), "dns")
        hosts = _order([(int(r.preference), r.host.rstrip(".")) for r in records], policy)
    else:
        raise _temp(f"unexpected DNS status {status.name} for MX of {domain}")
    return await _addresses(domain, hosts, resolver, policy, ours)


def _order(records: list[tuple[int, str]], policy: RoutePolicy) -> list[tuple[int, str]]:
    """By preference; within a preference, shuffled (RFC 5321 §5.1); duplicates dropped."""
    by_pref: dict[int, list[str]] = {}
    for pref, host in records:
        group = by_pref.setdefault(pref, [])
        if host.lower() not in (h.lower() for h in group):
            group.append(host)
    out: list[tuple[int, str]] = []
    for pref in sorted(by_pref):
        group = by_pref[pref]
        policy.rng.shuffle(group)
        out.extend((pref, h) for h in group)
    return out


async def _addresses(domain: str, hosts: list[tuple[int, str]], resolver: RouteResolver,
                     policy: RoutePolicy, ours: bool) -> tuple[Candidate, ...]:
    resolved: list[tuple[int, str, list[str]]] = []
    tempfails = 0
    problems: list[str] = []
    cutoff: int | None = None  # our own preference, when we are one of the MX hosts
    for pref, host in hosts:
        if len(resolved) + tempfails >= policy.max_mx:
            break
        if cutoff is not None and pref >= cutoff:
            break
        ans = await resolver.addresses(host)
        if ans.status is Status.TEMPFAIL:
            tempfails += 1
            problems.append(f"{host}: temporary DNS failure")
            continue
        if ans.status is not Status.OK or not ans.records:
            nx = ans.status is Status.NXDOMAIN
            problems.append(f"{host}: {'no such host' if nx else 'no address'}")
            continue
        ips = [str(ip) for ip in ans.records]
        if not ours and any(policy.is_local(ip) for ip in ips):
            # We are an MX for this domain at `pref`: only better MX hosts may be tried.
            cutoff = pref
            resolved = [r for r in resolved if r[0] < pref]
            continue
        resolved.append((pref, host, ips))
    candidates: list[Candidate] = []
    seen: set[str] = set()
    for _, host, ips in resolved:
        for ip in ips:
            if ip in seen or len(candidates) >= policy.max_addresses:
                continue
            seen.add(ip)
            candidates.append(Candidate(host, ip))
    if candidates:
        return tuple(candidates)
    if cutoff is not None:
        raise RouteError(Reply(554, "5.4.6",
                               f"mail for {domain} loops back to myself (MX points to this "
                               "host)"), "loop")
    if tempfails:
        raise _temp(f"temporary DNS failure looking up the MX hosts of {domain}")
    if hosts == [(0, domain)]:
        raise RouteError(Reply(550, "5.1.2", f"domain {domain} has no MX and no address"),
                         "dns")
    detail = "; ".join(problems[:3])
    raise RouteError(Reply(550, "5.4.4", f"no MX host of {domain} has an address ({detail})"),
                     "dns")
