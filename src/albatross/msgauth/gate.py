"""The gate: what message authentication does to one message at the end of data.

Our own mail (authenticated clients, trusted networks, the sendmail command) is DKIM-signed
with the keys of its From domain; mail received from others on the mx role is checked (SPF,
DKIM, ARC, DMARC, iprev), gets our Authentication-Results field on top after any forged one
claiming our authserv-id is removed, may be sealed with ARC, and gets the DMARC disposition.
The session and the pickup path call it; app.py builds it from the configuration.

Failures of our own making never lose or refuse mail: a signing error sends the message
unsigned, a check that breaks records temperror (both are logged).
"""

from __future__ import annotations

import asyncio
import email.utils
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from albatross.dns import Resolver
from albatross.model import Reply
from albatross.msgauth import arc as arc_mod
from albatross.msgauth import dkim
from albatross.msgauth.dkimkey import DkimKey
from albatross.msgauth.inbound import check_message
from albatross.msgauth.results import strip_ours

Log = Callable[..., None]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The gate's answer: `insert` replaces the first `drop` bytes of the message (our
    fields on top, the header block without forged ones); `action` is accept, mark, hold
    or reject (with `reply`); `log` is what the mail log should say about it."""

    insert: bytes = b""
    drop: int = 0
    action: str = "accept"
    reply: Reply | None = None
    log: dict[str, Any] = field(default_factory=dict)


PASS_THROUGH = Verdict()


class Gate:
    def __init__(self, resolver: Resolver, *, authserv_id: str,
                 sign_keys: Mapping[str, Sequence[DkimKey]], checks: bool = True,
                 spf_helo: bool = True, enforce: bool = False, quarantine: str = "mark",
                 timeout: float = 20.0, signature_lifetime: float = 0.0,
                 arc_key: DkimKey | None = None, log: Log | None = None) -> None:
        self.resolver = resolver
        self.authserv_id = authserv_id
        # Keyed by the From domain as dkim.from_domain gives it: lower case, A-labels.
        self.sign_keys = {domain.lower(): tuple(keys) for domain, keys in sign_keys.items()
                          if keys}
        self.checks = checks
        self.spf_helo = spf_helo
        self.enforce = enforce
        self.quarantine = quarantine
        self.timeout = timeout
        self.signature_lifetime = signature_lifetime
        self.arc_key = arc_key
        self._log = log or (lambda event, /, **fields: None)

    # --- our mail -------------------------------------------------------------------

    async def sign(self, message: bytes, *, qid: str = "") -> bytes:
        """The DKIM-Signature fields to put on top of `message`, or b"" when its From
        domain has no keys (or signing failed: the message goes unsigned, logged)."""
        if not self.sign_keys:
            return b""
        head = _head(message)
        domain = dkim.from_domain(head)
        if domain is None or domain not in self.sign_keys:
            return b""
        # Date and Message-ID are signed (and oversigned: no one may add one after us), so
        # a message without them gets them now; a relay adding its own (Postfix does for
        # local clients) would otherwise break the signature.
        missing = missing_fields(head, qid or secrets.token_hex(8), domain)
        try:
            return await asyncio.to_thread(
                dkim.sign, missing + message, self.sign_keys[domain],
                expire_after=self.signature_lifetime or None) + missing
        except Exception as exc:  # never refuse our own mail for a signing problem
            self._log("error", where="dkim-sign", qid=qid or None, domain=domain,
                      error=str(exc) or repr(exc))
            return b""

    # --- others' mail -----------------------------------------------------------------

    async def check(self, message: bytes, *, client_ip: str, helo: str, mail_from: str,
                    ptr: str | None, qid: str = "") -> Verdict:
        """Check a message received on the mx role; see the module docstring."""
        if not self.checks:
            return PASS_THROUGH
        try:
            async with asyncio.timeout(self.timeout + 5):
                return await self._check(message, client_ip=client_ip, helo=helo,
                                         mail_from=mail_from, ptr=ptr)
        except Exception as exc:  # a bug or a hang here must not cost the sender its mail
            self._log("error", where="msgauth", qid=qid or None, error=str(exc) or repr(exc))
            return PASS_THROUGH

    async def _check(self, message: bytes, *, client_ip: str, helo: str, mail_from: str,
                     ptr: str | None) -> Verdict:
        dkim_results, arc_result = await asyncio.gather(
            dkim.verify(message, self.resolver), arc_mod.arc_verify(message, self.resolver))
        results = await check_message(
            message, client_ip=client_ip, helo=helo, mail_from=mail_from, ptr=ptr,
            resolver=self.resolver, authserv_id=self.authserv_id, dkim_results=dkim_results,
            arc=arc_result, spf_helo=self.spf_helo, enforce=self.enforce,
            quarantine=self.quarantine, timeout=self.timeout)
        end = _header_end(message)
        head = message[:end]
        cleaned = strip_ours(head, self.authserv_id)
        insert = results.header
        if self.arc_key is not None and results.action != "reject":
            value = results.header.split(b":", 1)[1].strip().decode("ascii", "replace")
            try:
                # arc_seal puts our Authentication-Results on its own copy of the message.
                insert = await asyncio.to_thread(
                    arc_mod.arc_seal, cleaned + message[end:], self.arc_key,
                    self.authserv_id, " ".join(value.split())) + insert
            except Exception as exc:  # unsealed is better than refused
                self._log("error", where="arc-seal", error=str(exc) or repr(exc))
        log = {
            "spf": results.spf.result,
            "dkim": [f"{r.result}:{r.domain}" for r in dkim_results] or "none",
            "dmarc": results.dmarc.result,
        }
        if results.action != "accept":
            log["dmarc_action"] = results.action
        if cleaned != head:
            return Verdict(insert=insert + cleaned, drop=end, action=results.action,
                           reply=results.reply, log=log)
        return Verdict(insert=insert, action=results.action, reply=results.reply, log=log)


def _header_end(message: bytes) -> int:
    """Where the header block ends (after its last CRLF; the empty line stays in the
    body), or the whole message when it has no body."""
    end = message.find(b"\r\n\r\n")
    return len(message) if end < 0 else end + 2


def missing_fields(head: bytes, unique: str, domain: str) -> bytes:
    """A Date and a Message-ID field (RFC 5322 §3.6) for a header block that lacks them
    (also the submission fix-ups of RFC 6409 §8, server/session.py)."""
    names = {line.split(b":", 1)[0].strip().lower() for line in head.split(b"\r\n")
             if b":" in line and line[:1] not in (b" ", b"\t")}
    out = b""
    if b"date" not in names:
        out += f"Date: {email.utils.formatdate(localtime=False)}\r\n".encode()
    if b"message-id" not in names:
        out += f"Message-ID: <{unique}.{int(time.time())}@{domain}>\r\n".encode()
    return out


def _head(message: bytes) -> bytes:
    return message[:_header_end(message)]
