"""The [msgauth] table: the SPF, DKIM, DMARC and iprev checks of mail received on the mx role.

Kept in its own file like config/policy.py; `Config` holds it as its `msgauth` field. What
the checks do and the header they write are in docs/msgauth.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from albatross.config import values


@dataclass(frozen=True, kw_only=True)
class MsgAuthConfig:
    """Message authentication checks on received mail (docs/msgauth.md)."""

    checks: bool = field(default=True, metadata={
        "kind": values.BOOLEAN,
        "doc": "Check SPF (MAIL FROM and HELO), DKIM, ARC, DMARC and iprev of every message "
               "received on the mx role and record the results in an "
               "Authentication-Results header field. Mail from authenticated clients, "
               "trusted networks and the sendmail command is not checked.",
    })
    authserv_id: str = field(default="", metadata={
        "kind": values.OPTIONAL_HOSTNAME,
        "default_doc": "the hostname",
        "doc": "The authserv-id naming this server in Authentication-Results (RFC 8601); "
               '"" uses hostname. Fields that arrive claiming this id are removed, so it '
               "must be a name no other administrative domain uses.",
    })
    spf_helo: bool = field(default=True, metadata={
        "kind": values.BOOLEAN,
        "doc": "Also check and report the SPF result of the HELO name (RFC 7208 §2.3); the "
               "MAIL FROM identity is always checked (the HELO name stands in for a null "
               "sender).",
    })
    dmarc_enforce: bool = field(default=False, metadata={
        "kind": values.BOOLEAN,
        "doc": "Apply the DMARC policy of the From domain to failing mail: p=reject is "
               "refused at the end of data with 550 5.7.1 naming the domain, p=quarantine "
               "is handled as dmarc_quarantine says. Off, the result is only recorded. A "
               "temporary DNS failure is temperror and never leads to a refusal.",
    })
    dmarc_quarantine: str = field(default="mark", metadata={
        "kind": values.choice("hold", "mark", "accept"),
        "doc": 'What dmarc_enforce does with mail whose domain asks for quarantine: "hold" '
               'keeps it in the queue held for an operator, "mark" delivers it with the '
               'DMARC failure recorded (for the mailbox to file as spam), "accept" '
               "delivers it like passing mail.",
    })
    check_timeout: float = field(default=20.0, metadata={
        "kind": values.duration(),
        "doc": "How long the checks of one message may take at the end of data, all DNS "
               "lookups included (RFC 7208 §4.6.4 suggests at least 20 seconds for SPF). "
               "A check not finished by then reports temperror; the message is accepted.",
    })
