"""The [policy] table: which client checks run at each SMTP phase, and their limits.

Kept in its own file so the policy settings read as one unit; `Config` in schema.py holds
it as its `policy` field, like every other table, so the loader validates it and the
reference documents it from these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from albatross.config import values


@dataclass(frozen=True, kw_only=True)
class PolicyConfig:
    """Client checks at each SMTP phase: DNSBL, HELO, reverse DNS, rates (docs/policy.md)."""

    dnsbl_zones: tuple[str, ...] = field(default=(), metadata={
        "kind": values.DOMAINS,
        "doc": "DNS block lists asked at connect on the mx role, e.g. "
               '["zen.spamhaus.org"]. A client listed (an A record in 127.0.0.0/24) is '
               "refused with 554 5.7.1 naming the list; a list that cannot be asked is "
               "ignored for that connection, never a reason to refuse. Trusted networks are "
               "never looked up.",
    })
    dnsbl_timeout: float = field(default=5.0, metadata={
        "kind": values.duration(),
        "doc": "How long the DNSBL check may take at one connection (all lists together); "
               "past it the client gets 451 4.3.0 and may retry.",
    })
    helo_checks: bool = field(default=True, metadata={
        "kind": values.BOOLEAN,
        "doc": "Refuse a HELO/EHLO name that is neither a host name of letters, digits and "
               "hyphens nor an address literal like [192.0.2.1] (501 5.5.2). Trusted and "
               "authenticated clients are never refused.",
    })
    helo_required_fqdn: bool = field(default=False, metadata={
        "kind": values.BOOLEAN,
        "doc": 'Also refuse a single-label HELO name such as "localhost" or "pc17" '
               "(504 5.5.2); needs helo_checks.",
    })
    reverse_dns: bool = field(default=True, metadata={
        "kind": values.BOOLEAN,
        "doc": "Look up each client's forward-confirmed reverse DNS name at connect and "
               "record it in Received and the mail log (like Postfix's "
               "smtpd_peername_lookup). The greeting waits for the lookups (cached by "
               "TTL). Off: no lookups, the name is not recorded; require_fcrdns turns "
               "them back on.",
    })
    require_fcrdns: bool = field(default=False, metadata={
        "kind": values.BOOLEAN,
        "doc": "On the mx role, turn away clients whose address has no forward-confirmed "
               "reverse DNS name with 421 4.7.25 as the greeting (RFC 7372). Either way "
               "the name, or "
               '"unknown", is recorded in Received and the mail log.',
    })
    messages_per_hour_per_ip: int = field(default=0, metadata={
        "kind": values.integer(minimum=0),
        "doc": "Messages (counted at MAIL FROM) per sliding hour from one client address "
               "that has not authenticated (an IPv6 client counts per /64); more get "
               "451 4.7.1. 0 is unlimited.",
    })
    messages_per_hour_per_user: int = field(default=0, metadata={
        "kind": values.integer(minimum=0),
        "doc": "Messages (counted at MAIL FROM) per sliding hour from one authenticated "
               "user, wherever they connect from; more get 451 4.7.1. 0 is unlimited.",
    })
    rate_window: float = field(default=3600.0, metadata={
        "kind": values.duration(),
        "doc": "The sliding window of both message rates: the limits count the messages of "
               'the last rate_window (the default "1h" makes them per hour).',
    })
    rate_exempt_trusted: bool = field(default=True, metadata={
        "kind": values.BOOLEAN,
        "doc": "Clients in trusted networks are not held to messages_per_hour_per_ip "
               "(their authenticated users still are to messages_per_hour_per_user).",
    })
    check_timeout: float = field(default=10.0, metadata={
        "kind": values.duration(),
        "doc": "How long any other check may take; past it the command gets 451 4.3.0 "
               "naming the check, never a permanent refusal.",
    })
