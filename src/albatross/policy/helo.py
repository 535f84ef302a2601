"""The HELO check: the name a client gives in HELO/EHLO must be a host name or an address
literal.

RFC 5321 §4.1.1.1 asks for the client's fully qualified domain name, or an address literal
(§4.1.3) when it has none. Garbage here ("HELO !!!", "HELO user@host", a bare IP address)
is a strong sign of a spam engine or a probe; refusing it costs real servers nothing. A
trusted or authenticated client is never refused: misconfigured office printers and
scanners send names like "Canon_MF" and are allowed to.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from albatross.dns import InvalidName, query_name
from albatross.policy.verdict import ClientInfo, Phase, Verdict, reject

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
MAX_NAME = 253  # RFC 1035 §2.3.4
_SHOWN = 60  # characters of the client's name quoted back in a reply


def helo_problem(name: str, *, require_fqdn: bool) -> tuple[int, str] | None:
    """None if `name` is acceptable, else (reply code, reason) for the refusal."""
    if not name:
        return 501, "a host name or address literal is required"
    if name.startswith("[") and name.endswith("]"):
        return None if _is_address_literal(name[1:-1]) else (501, "invalid address literal")
    if not name.isascii():
        # RFC 6531 §3.7.1 allows U-labels when SMTPUTF8 is used; judge their A-label form.
        try:
            name = query_name(name)
        except InvalidName:
            return 501, "invalid host name"
    host = name[:-1] if name.endswith(".") else name
    if not host or len(host) > MAX_NAME:
        return 501, "invalid host name"
    labels = host.split(".")
    if not all(_LABEL.match(label) for label in labels):
        return 501, "invalid host name"
    if labels[-1].isdigit():
        # No top-level domain is all digits (RFC 3696 §2), so this is an address written
        # without the brackets RFC 5321 §4.1.3 requires, or nonsense.
        return 501, "an address must be written as an address literal, like [192.0.2.1]"
    if require_fqdn and len(labels) < 2:
        return 504, "need fully-qualified hostname"
    return None


def _is_address_literal(inner: str) -> bool:
    """RFC 5321 §4.1.3: "1.2.3.4" or "IPv6:..." (the tag is case-insensitive)."""
    if inner[:5].lower() == "ipv6:":
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError:
            return False
        return True
    try:
        ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True


class HeloCheck:
    """Refuses a malformed HELO/EHLO name with 501 5.5.2 (504 5.5.2 for a single label
    when `require_fqdn`), except for authenticated clients and those `skip` exempts."""

    name = "helo"
    phase = Phase.HELO

    def __init__(self, *, timeout: float, require_fqdn: bool = False,
                 skip: Callable[[ClientInfo], bool] = lambda client: False) -> None:
        self.timeout = timeout
        self.require_fqdn = require_fqdn
        self.skip = skip
        self.detail = f"require_fqdn={'yes' if require_fqdn else 'no'}"

    async def run(self, client: ClientInfo, **fields: Any) -> Verdict | None:
        return self.decide(client, **fields)

    def decide(self, client: ClientInfo, **fields: Any) -> Verdict | None:
        """The verdict, computed without I/O (so the session may ask it inline)."""
        if client.authenticated is not None or self.skip(client):
            return None
        name = fields.get("helo", client.helo)
        problem = helo_problem(name if isinstance(name, str) else "",
                               require_fqdn=self.require_fqdn)
        if problem is None:
            return None
        code, reason = problem
        shown = "".join(c if " " < c <= "~" else "?" for c in str(name or ""))[:_SHOWN]
        return reject(self.name, code, "5.5.2",
                      f"<{shown}>: Helo command rejected: {reason}")
