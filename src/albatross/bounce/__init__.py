"""Delivery status notifications (RFC 3464) and delay warnings; never a bounce of a bounce.

The scheduler decides when; this package decides whether (NOTIFY, the null sender) and
what: `wanted()` and `should_bounce()` say whether a report is due, `build_dsn()` writes it
as a complete multipart/report message for the scheduler to queue from "<>". See
docs/bounces.md.
"""

from albatross.bounce.dsn import KINDS, SUBJECTS, build_dsn, mail_params_for
from albatross.bounce.report import (
    ACTIONS,
    Report,
    is_mailbox,
    postmaster_address,
    should_bounce,
    wanted,
)
from albatross.bounce.wording import Explanation, explain

__all__ = [
    "ACTIONS",
    "KINDS",
    "SUBJECTS",
    "Explanation",
    "Report",
    "build_dsn",
    "explain",
    "is_mailbox",
    "mail_params_for",
    "postmaster_address",
    "should_bounce",
    "wanted",
]
