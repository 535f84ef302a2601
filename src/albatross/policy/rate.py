"""The rate check: messages per sliding hour per client address and per authenticated user.

A message is counted when its MAIL FROM is accepted by this check, the simplest point:
transactions later refused or abandoned still count, which only errs towards slowing a
client that is already misbehaving. Counts live in memory (a restart forgets them) in a
sliding-window log: for each key, the times of its last `limit` messages, so memory per key
is bounded by the limit, and the number of keys by an LRU cap, so a flood of distinct
addresses cannot exhaust memory (a key pushed out forgets its count, which at worst lets
that client start afresh). IPv6 clients are counted per /64, the block one subscriber
usually holds, or they could rotate addresses to escape any limit.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from albatross.policy.chain import show_seconds
from albatross.policy.verdict import ClientInfo, Phase, Verdict, tempfail

HOUR = 3600.0
MAX_KEYS = 100_000
_SHOWN = 64


class SlidingWindow:
    """Counts events per key within the last `window` seconds; at most `max_keys` keys."""

    def __init__(self, limit: int, *, window: float = HOUR, max_keys: int = MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or max_keys < 1 or not window > 0:
            raise ValueError("limit, max_keys and window must be positive")
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self.clock = clock
        self._times: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._times)

    def full(self, key: str) -> bool:
        """Whether `key` already had `limit` events within the window."""
        times = self._times.get(key)
        if times is None:
            return False
        horizon = self.clock() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        return len(times) >= self.limit

    def add(self, key: str) -> None:
        """Record one event for `key` now."""
        times = self._times.get(key)
        if times is None:
            times = self._times[key] = deque(maxlen=self.limit)
            while len(self._times) > self.max_keys:
                self._times.popitem(last=False)
        else:
            self._times.move_to_end(key)
        times.append(self.clock())


def address_key(ip: str) -> str:
    """The key a client address is counted under: itself, or its /64 for IPv6."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class RateCheck:
    """451 4.7.1 once a client address (unauthenticated clients, unless `exempt`) or an
    authenticated user has sent its limit of messages within the hour; 0 means no limit."""

    name = "rate"
    phase = Phase.MAIL

    def __init__(self, *, per_ip: int, per_user: int, timeout: float,
                 exempt: Callable[[ClientInfo], bool] = lambda client: False,
                 window: float = HOUR, max_keys: int = MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.exempt = exempt
        self.per_ip = (SlidingWindow(per_ip, window=window, max_keys=max_keys, clock=clock)
                       if per_ip > 0 else None)
        self.per_user = (SlidingWindow(per_user, window=window, max_keys=max_keys, clock=clock)
                         if per_user > 0 else None)
        self.detail = (f"per_ip={per_ip or 'unlimited'} per_user={per_user or 'unlimited'} "
                       f"window={window:g}s")

    async def run(self, client: ClientInfo, **fields: Any) -> Verdict | None:
        return self.decide(client, **fields)

    def decide(self, client: ClientInfo, **fields: Any) -> Verdict | None:
        """The verdict, computed without I/O (so the session may ask it inline)."""
        counted: list[tuple[SlidingWindow, str]] = []
        if client.authenticated is not None:
            # Authenticated mail is the user's: counting it per address too would throttle
            # every user behind one shared NAT address together.
            if self.per_user is not None:
                key = client.authenticated
                if self.per_user.full(key):
                    shown = "".join(c if " " < c <= "~" else "?" for c in key)[:_SHOWN]
                    return self._refuse(f"user {shown}", self.per_user.limit)
                counted.append((self.per_user, key))
        elif self.per_ip is not None and not self.exempt(client):
            key = address_key(client.ip)
            if self.per_ip.full(key):
                return self._refuse(f"[{client.ip}]", self.per_ip.limit)
            counted.append((self.per_ip, key))
        for window, key in counted:
            window.add(key)
        return None

    def _refuse(self, who: str, limit: int) -> Verdict:
        window = self.per_ip.window if self.per_ip is not None else (
            self.per_user.window if self.per_user is not None else HOUR)
        per = "hour" if window == HOUR else show_seconds(window)
        return tempfail(self.name, 451, "4.7.1",
                        f"Error: too many messages from {who} (limit {limit} per {per})")
