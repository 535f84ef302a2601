"""The answer cache: how long each kind of answer is kept, and a size-bounded LRU to keep it in."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from albatross.dns.answer import Answer, Status

# Positive answers live for their record TTL within these bounds. The floor stops a zone
# with TTL 0 from turning every delivery attempt into a query; the ceiling lets a changed
# record be seen within a day whatever the zone claims (RFC 8767 §4 suggests a cap too).
MIN_TTL = 5.0
MAX_TTL = 86400.0
# Negative answers (NXDOMAIN, NODATA) live for the SOA minimum (RFC 2308 §5), capped at an
# hour as RFC 2308 §5 recommends for resolvers; without a SOA in the answer, five minutes.
MAX_NEGATIVE_TTL = 3600.0
DEFAULT_NEGATIVE_TTL = 300.0
# A temporary failure is remembered briefly so that a dead or overloaded server is not hit
# again by every queued message for the same domain (RFC 2308 §7.1 allows up to 5 minutes).
TEMPFAIL_TTL = 5.0

Key = tuple[str, str]  # (query name, record type)


def lifetime(status: Status, ttl: float | None) -> float:
    """How long to keep an answer of this status whose DNS TTL is `ttl` (None: none known)."""
    if status is Status.TEMPFAIL:
        return TEMPFAIL_TTL
    if status is Status.OK:
        return min(max(ttl if ttl is not None else MIN_TTL, MIN_TTL), MAX_TTL)
    if ttl is None:
        return DEFAULT_NEGATIVE_TTL
    return min(max(ttl, MIN_TTL), MAX_NEGATIVE_TTL)


@dataclass(frozen=True, slots=True)
class _Entry:
    answer: Answer[Any]
    expires: float


class AnswerCache:
    """At most `size` answers keyed by (name, type), dropped when they expire or are the least
    recently used. `size` 0 keeps nothing. Times are whatever clock the caller passes."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError("cache size must be >= 0")
        self._size = size
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key, now: float) -> Answer[Any] | None:
        """The cached answer with `ttl` set to what is left of its lifetime, or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        left = entry.expires - now
        if left <= 0:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return replace(entry.answer, ttl=left)

    def put(self, key: Key, answer: Answer[Any], now: float) -> None:
        """Keep `answer` for `answer.ttl` seconds from `now`."""
        if self._size == 0 or answer.ttl <= 0:
            return
        self._entries[key] = _Entry(answer, now + answer.ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
