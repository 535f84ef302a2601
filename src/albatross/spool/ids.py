"""Queue ids: unique, time-ordered, safe in a file name, a URL and a log line.

An id is 16 characters: the shard letter (A-Z, so the admin tools know which worker's spool
holds it), 11 base32 digits of the arrival time in microseconds since the epoch, then 4
base32 digits of a per-microsecond sequence. The base32 alphabet is 0-9a-v: its ASCII order
is its numeric order, so sorting ids as strings sorts them by time, and no id differs from
another only in letter case (safe on case-insensitive file systems).
"""

from __future__ import annotations

import re
import secrets
import threading
import time

ALPHABET = "0123456789abcdefghijklmnopqrstuv"
_TIME_DIGITS = 11  # 55 bits of microseconds: good until the year 3111
_SEQ_DIGITS = 4  # 20 bits
_SEQ_LIMIT = 1 << (5 * _SEQ_DIGITS)
ID_LENGTH = 1 + _TIME_DIGITS + _SEQ_DIGITS

# The only shape a queue id may have. Ids become file names (spool bodies, maildrop files),
# so anything else (a dot, a slash, NUL) is refused before it reaches a path.
_ID_RE = re.compile(rf"[A-Z][0-9a-v]{{{ID_LENGTH - 1}}}")


def is_valid_id(qid: str) -> bool:
    """True when `qid` has the exact shape of an id made by `IdSource`."""
    return _ID_RE.fullmatch(qid) is not None


def _base32(value: int, digits: int) -> str:
    out = []
    for _ in range(digits):
        out.append(ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


class IdSource:
    """Makes ids for one shard; thread-safe; strictly increasing within a process.

    The sequence of each new microsecond starts at a random value in the lower half of its
    range, so two processes (the daemon and a `sendmail` command) that pick the same
    microsecond still collide only with probability 2**-19.
    """

    def __init__(self, shard: str = "A") -> None:
        if len(shard) != 1 or not ("A" <= shard <= "Z"):
            raise ValueError(f"shard must be one letter A-Z, not {shard!r}")
        self.shard = shard
        self._lock = threading.Lock()
        self._last_us = 0
        self._seq = 0

    def next(self) -> str:
        with self._lock:
            now_us = time.time_ns() // 1000
            if now_us > self._last_us:
                self._last_us = now_us
                self._seq = secrets.randbelow(_SEQ_LIMIT // 2)
            else:
                # Same microsecond, or the clock stepped back: keep counting from the last
                # id so ids never go backwards.
                self._seq += 1
                if self._seq >= _SEQ_LIMIT:
                    self._last_us += 1
                    self._seq = 0
            return self.shard + _base32(self._last_us, _TIME_DIGITS) + _base32(
                self._seq, _SEQ_DIGITS)
