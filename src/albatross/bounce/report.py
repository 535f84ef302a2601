"""Which reports are due: one recipient's report line, NOTIFY (RFC 3461 §4.1), and the rule
that a bounce is never bounced.

The scheduler asks `wanted()` for each recipient as its delivery settles (or is delayed),
collects a `Report` for each one wanted, and asks `should_bounce()` before building a DSN
at all. A message from the null sender "<>" is itself a notification: answering it could
start a loop of notifications between two servers (RFC 5321 §4.5.5), so
it never gets a DSN. When a DSN of ours cannot be delivered the scheduler tells the
postmaster instead, once (build_dsn() addresses that notice; docs/bounces.md).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from albatross.model import Envelope, Recipient, Reply

# Control and format characters, line separators, lone surrogates: never in an address.
_UNSAFE = ("Cc", "Cf", "Zl", "Zp", "Cs")

# RFC 3464 §2.3.3 action-value.
ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})

# What each action needs in NOTIFY (RFC 3461 §4.1): "relayed" and "expanded" are the
# success reports of an MTA that cannot (or will no longer) report a final delivery.
_NOTIFY_FOR: dict[str, str] = {
    "failed": "FAILURE",
    "delayed": "DELAY",
    "delivered": "SUCCESS",
    "relayed": "SUCCESS",
    "expanded": "SUCCESS",
}


@dataclass(frozen=True, slots=True)
class Report:
    """One recipient's part of a DSN (one per-recipient block of RFC 3464 §2.3).

    `recipient` is the envelope address (Final-Recipient); `orcpt` the recipient's ORCPT as
    stored ("rfc822;user@example.org", xtext-decoded), or None. `action` is one of ACTIONS
    and `status` an RFC 3463 code ("5.1.1"). `reply` is the remote server's reply, when
    there was one; `remote_mta` the host that gave it. `last_attempt` and
    `will_retry_until` are POSIX timestamps; the latter is reported for "delayed" only.
    """

    recipient: str
    orcpt: str | None
    action: str
    status: str
    reply: Reply | None = None
    remote_mta: str | None = None
    last_attempt: float | None = None
    will_retry_until: float | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown DSN action {self.action!r}")
        if not self.recipient:
            raise ValueError("a report needs a recipient address")


def _notify_set(notify: str | None) -> frozenset[str] | None:
    if notify is None:
        return None
    return frozenset(item.strip().upper() for item in notify.split(","))


def wanted(recipient: Recipient, action: str, *, delay_by_default: bool = True) -> bool:
    """Whether the sender asked for a report of `action` about `recipient` (RFC 3461 §4.1).

    NOTIFY=NEVER asks for nothing; a NOTIFY list asks for exactly the kinds it names
    (SUCCESS covers "delivered", "relayed" and "expanded"). Without NOTIFY the MTA reports
    failures and, at its discretion, delays: `delay_by_default` (on, as most MTAs do).
    Raises ValueError for an action that is not one of ACTIONS.
    """
    needed = _NOTIFY_FOR.get(action)
    if needed is None:
        raise ValueError(f"unknown DSN action {action!r}")
    items = _notify_set(recipient.notify)
    if items is None:
        return needed == "FAILURE" or (needed == "DELAY" and delay_by_default)
    # NEVER is only valid alone (smtp/ enforces that); a stored value that mixes it with
    # others is still read as the sender's wish for silence.
    if "NEVER" in items:
        return False
    return needed in items


def is_mailbox(address: str) -> bool:
    """Whether `address` could be written as a header address and an SMTP path: not empty,
    no white space outside quotes, no control or format characters (which could split a
    header, RFC 5322 §2.2) and at most 320 characters."""
    if not address or len(address) > 320:
        return False
    quoted = False
    for c in address:
        if c == '"':
            quoted = not quoted
        elif (c == " " and not quoted) or unicodedata.category(c) in _UNSAFE:
            return False
    return True


def should_bounce(envelope: Envelope) -> bool:
    """Whether a DSN may go to the envelope sender.

    Never to the null sender "<>" (RFC 5321 §4.5.5, RFC 3834 §2): that message was a
    notification already. Never to a sender that is not a usable mailbox (see
    is_mailbox()): the DSN could not be addressed without putting the same characters in a
    header, and it could not be delivered anyway.
    """
    sender = envelope.sender
    if sender in ("", "<>"):
        return False
    return is_mailbox(sender)


def postmaster_address(postmaster: str, reporting_mta: str) -> str:
    """The address postmaster notices go to: `postmaster` itself when it has a domain,
    otherwise that local part at `reporting_mta`."""
    return postmaster if "@" in postmaster else f"{postmaster}@{reporting_mta}"
