"""iprev (RFC 8601 §3): the client address's forward-confirmed reverse DNS, as a result.

The session already asks the DNS at connect (policy/fcrdns.py) and keeps the confirmed name,
or "unknown", in ClientInfo.ptr; this module only turns that into an iprev result, so the
lookups are not made twice.
"""

from __future__ import annotations

from dataclasses import dataclass

UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class IprevResult:
    """`result` is pass (`name` forward-confirms to `ip`), fail (no such name) or temperror
    (the lookups failed for now). Reported as iprev=<result> policy.iprev=<ip> (<name>)."""

    result: str
    ip: str
    name: str = ""


def iprev(ip: str, ptr: str | None, *, temporary: bool = False) -> IprevResult | None:
    """The iprev result for a client whose confirmed name is `ptr` (ClientInfo.ptr).

    None when reverse DNS was not looked up at all (ptr None or "": policy.reverse_dns off),
    so the header says nothing rather than a false fail. "unknown" is fail, or temperror
    when the caller knows a lookup failed temporarily (`temporary`)."""
    if not ptr:
        return None
    if ptr == UNKNOWN:
        return IprevResult("temperror" if temporary else "fail", ip)
    return IprevResult("pass", ip, ptr)
