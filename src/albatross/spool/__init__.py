"""The spool: the only code that touches stored mail (ids, layout, atomic commit, recovery).

docs/spool-format.md describes the format on disk.
"""

from albatross.spool.commit import CommitStats
from albatross.spool.ids import IdSource, is_valid_id
from albatross.spool.maildrop import deposit
from albatross.spool.message import MessageWriter
from albatross.spool.recovery import RecoveryReport
from albatross.spool.store import QueueEntry, Schedule, Spool

__all__ = [
    "CommitStats",
    "IdSource",
    "MessageWriter",
    "QueueEntry",
    "RecoveryReport",
    "Schedule",
    "Spool",
    "deposit",
    "is_valid_id",
]
