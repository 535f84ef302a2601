"""The scheduler: when and how many. Retry timing, per-destination limits, expiry, and
handing recipients to couriers.

The queue database is the schedule: its (state, next_attempt) index answers "what is due"
in O(log n) however many messages wait, so only messages being delivered are held in memory
(at most `max_active`). Couriers report one Outcome per recipient; the scheduler records
them, retries with backoff, warns, bounces, expires, and removes finished messages.
"""

from albatross.scheduler.core import (
    Admin,
    Busy,
    Clock,
    Route,
    Scheduler,
    SchedulerSettings,
    SystemClock,
    backoff,
)

__all__ = ["Admin", "Busy", "Clock", "Route", "Scheduler", "SchedulerSettings",
           "SystemClock", "backoff"]
