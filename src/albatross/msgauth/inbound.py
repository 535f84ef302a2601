"""The authentication checks of one message received on the mx role, run at the end of data.

The session calls, once it has the whole message:

    results = await check_message(message, client_ip=..., helo=..., mail_from=...,
                                  ptr=client.ptr, resolver=resolver,
                                  authserv_id=config.msgauth.authserv_id or hostname,
                                  dkim_results=await dkim.verify(message, resolver),
                                  arc=await arc.arc_verify(message, resolver),
                                  enforce=..., quarantine=..., timeout=...)

and gets an `AuthResults`: the SPF (MAIL FROM and HELO), DMARC and iprev results, the DKIM
and ARC results it was given, `header` (our Authentication-Results field, bytes ending in
CRLF, to prepend) and the `action` with its `reply`:

- "accept": store and deliver (DMARC passed, or its policy is none, or not enforced);
- "mark": deliver; the header already says dmarc=fail, for the mailbox to file as spam;
- "hold": store the message held for an operator (p=quarantine with dmarc_quarantine=hold);
- "reject": answer `reply` (550 5.7.1 "Email rejected per DMARC policy for example.org")
  instead of 250 and store nothing.

A temporary DNS failure anywhere is a temperror result and never "reject"; so is a check
that does not finish within `timeout`. The caller stores strip_ours(message, authserv_id)
(results.py) behind our header: DKIM verifies the message as received, before that.

Everything here awaits the Resolver on the event loop; nothing CPU-heavy runs here (DKIM's
RSA verification is the caller's, in msgauth/dkim.py).
"""

from __future__ import annotations

import asyncio
import random as _random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from albatross.dns import Resolver
from albatross.model import Reply
from albatross.msgauth.dmarc import Dmarc, DmarcResult, Policy, author_domain, evaluate
from albatross.msgauth.iprev import IprevResult, iprev
from albatross.msgauth.results import ArcLike, DkimLike, authentication_results
from albatross.msgauth.spf import Spf, SpfResult, check_helo, check_mail_from

ACTIONS = ("accept", "mark", "hold", "reject")


@dataclass(frozen=True, slots=True)
class AuthResults:
    """Everything the checks of one message found, and what to do with it."""

    spf: SpfResult  # the MAIL FROM identity (the HELO identity for a null sender)
    spf_helo: SpfResult | None  # the HELO identity, when checked separately
    dkim: tuple[DkimLike, ...]
    arc: ArcLike | None
    dmarc: DmarcResult
    iprev: IprevResult | None
    header: bytes
    action: str  # one of ACTIONS
    reply: Reply | None = None  # set when action is "reject"


async def check_message(message: bytes, *, client_ip: str, helo: str, mail_from: str,
                        ptr: str | None, resolver: Resolver, authserv_id: str,
                        dkim_results: Sequence[DkimLike], arc: ArcLike | None = None,
                        spf_helo: bool = True, enforce: bool = False,
                        quarantine: str = "mark", timeout: float = 20.0,
                        receiver: str = "", random: Callable[[], float] = _random.random,
                        clock: Callable[[], float] = time.monotonic) -> AuthResults:
    """SPF, DMARC and iprev for `message` (headers CRLF CRLF body) from `client_ip`.

    `mail_from` is the reverse-path without brackets ("" for <>), `helo` the HELO/EHLO
    name, `ptr` the session's forward-confirmed client name or "unknown" (None when reverse
    DNS was not looked up), `dkim_results` one result per DKIM signature. `enforce` and
    `quarantine` are [msgauth] dmarc_enforce and dmarc_quarantine; `timeout` bounds all
    the DNS work here; `random` drives DMARC pct sampling."""
    if quarantine not in ("hold", "mark", "accept"):
        raise ValueError(f"quarantine must be hold, mark or accept, not {quarantine!r}")
    deadline = clock() + timeout
    receiver = receiver or authserv_id

    def left() -> float:
        return max(0.0, deadline - clock())

    async def bounded_spf(check: Awaitable[SpfResult], identity: str, domain: str,
                          sender: str) -> SpfResult:
        try:
            async with asyncio.timeout(left()):
                return await check
        except TimeoutError:
            return SpfResult(Spf.TEMPERROR, identity, domain, sender,
                             reason=f"SPF check did not finish within {timeout:g}s")

    null_sender = not mail_from
    mf_domain = mail_from.rpartition("@")[2] if mail_from else helo
    tasks = [bounded_spf(check_mail_from(resolver, client_ip, mail_from, helo,
                                         receiver=receiver),
                         "helo" if null_sender else "mailfrom", mf_domain,
                         mail_from or f"postmaster@{helo}")]
    if spf_helo and not null_sender:
        tasks.append(bounded_spf(check_helo(resolver, client_ip, helo, receiver=receiver),
                                 "helo", helo, f"postmaster@{helo}"))
    spf_results = await asyncio.gather(*tasks)
    spf = spf_results[0]
    helo_result = spf_results[1] if len(spf_results) > 1 else None

    author = author_domain(message)
    if author.problem:
        dmarc = DmarcResult(Dmarc.PERMERROR, "", reason=author.problem)
    else:
        try:
            async with asyncio.timeout(left()):
                dmarc = await evaluate(
                    resolver, author.domain, spf=(spf.domain, spf.result.value),
                    dkim=[(r.domain, r.result) for r in dkim_results], random=random)
        except TimeoutError:
            dmarc = DmarcResult(Dmarc.TEMPERROR, author.domain,
                                reason=f"DMARC check did not finish within {timeout:g}s")

    iprev_result = iprev(client_ip, ptr)
    header = authentication_results(
        authserv_id, spf=[r for r in (spf, helo_result) if r is not None],
        dkim=list(dkim_results), dmarc=dmarc, arc=arc, iprev=iprev_result)
    action, reply = "accept", None
    if enforce and dmarc.result is Dmarc.FAIL:
        if dmarc.disposition is Policy.REJECT:
            action = "reject"
            reply = Reply(550, "5.7.1",
                          f"Email rejected per DMARC policy for {dmarc.from_domain}")
        elif dmarc.disposition is Policy.QUARANTINE:
            action = quarantine
    return AuthResults(spf, helo_result, tuple(dkim_results), arc, dmarc, iprev_result,
                       header, action, reply)
