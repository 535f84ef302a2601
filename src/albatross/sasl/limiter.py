"""Password-guessing defence: failures counted per client address and per user name.

Each key keeps the times of its recent failures (a sliding window). With `slow_after`
failures in the window every further attempt waits a little longer before it is checked;
with `block_after` the key is blocked for `block_for` seconds (454 4.7.0, issue 4 point 3).

How a session uses it:

    verdict = limiter.attempt(ip, user)   # before checking the password
    if verdict.blocked: reply AUTH_RATE_LIMITED, do not check the password
    await asyncio.sleep(verdict.delay)    # whatever the outcome will be
    if await store.verify(user, password): limiter.succeeded(ip, user); reply 235
    else: reply 535

Two choices defend against attacks the obvious design misses:

- The delay comes before the check and applies to every attempt, not only to failures.
  Delaying only the 535 lets a bot hang up after a short wait and read the silence as
  "wrong password", guessing at full speed on fresh connections.
- `attempt()` counts the attempt as a failure at once and `succeeded()` takes it back.
  Counting after the check would let a bot run a hundred guesses on a hundred parallel
  connections before the first failure is recorded.

Pure: the clock is passed in, nothing sleeps here. Memory is bounded: at most
`max_tracked` keys of each kind (least recently used go first), and a key's window never
holds more than `block_after` entries.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from albatross.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When one key (a client address or a user name) slows down and when it is blocked."""

    window: float = 900.0  # seconds a failure counts for
    slow_after: int = 3  # failures in the window before attempts are delayed
    delay_step: float = 1.0  # seconds added per failure past slow_after
    max_delay: float = 10.0
    block_after: int = 10  # failures in the window that block the key
    block_for: float = 900.0  # seconds

    def __post_init__(self) -> None:
        if not 0 < self.slow_after <= self.block_after:
            raise ConfigError("auth limits: need 0 < slow_after <= block_after")
        if self.window <= 0 or self.block_for <= 0 or self.delay_step < 0 or self.max_delay < 0:
            raise ConfigError("auth limits: windows, durations and delays must be positive")


@dataclass(frozen=True, slots=True)
class AuthLimits:
    # A user name is easier to lock out than an address is to change: a bot that knows
    # "alice" can keep alice blocked from anywhere. So users tolerate more failures.
    per_address: Thresholds = field(default_factory=Thresholds)
    per_user: Thresholds = field(default_factory=lambda: Thresholds(block_after=20))
    # IPv6 clients are counted per prefix: anyone with a /64 has 2**64 addresses to rotate.
    ipv6_prefix: int = 64
    max_tracked: int = 10_000


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with an attempt: wait `delay` seconds, or refuse it until `blocked_until`."""

    delay: float = 0.0
    blocked_until: float | None = None

    @property
    def blocked(self) -> bool:
        return self.blocked_until is not None


@dataclass(slots=True)
class _Track:
    failures: deque[float]
    blocked_until: float = 0.0


class _Keyed:
    """The tracks of one kind of key, least recently used first."""

    def __init__(self, thresholds: Thresholds, max_tracked: int) -> None:
        self.thresholds = thresholds
        self.max_tracked = max_tracked
        self.tracks: OrderedDict[str, _Track] = OrderedDict()

    def track(self, key: str) -> _Track:
        tr = self.tracks.get(key)
        if tr is None:
            tr = _Track(deque(maxlen=self.thresholds.block_after))
            self.tracks[key] = tr
            while len(self.tracks) > self.max_tracked:
                self.tracks.popitem(last=False)
        else:
            self.tracks.move_to_end(key)
        return tr

    def verdict(self, key: str, now: float) -> Verdict:
        t = self.thresholds
        tr = self.tracks.get(key)
        if tr is None:
            return Verdict()
        if tr.blocked_until > now:
            return Verdict(blocked_until=tr.blocked_until)
        while tr.failures and tr.failures[0] <= now - t.window:
            tr.failures.popleft()
        count = len(tr.failures)
        if count >= t.block_after:
            # The block starts now and the count starts over when it ends.
            tr.blocked_until = now + t.block_for
            tr.failures.clear()
            return Verdict(blocked_until=tr.blocked_until)
        if count >= t.slow_after:
            return Verdict(delay=min(t.max_delay, t.delay_step * (count - t.slow_after + 1)))
        return Verdict()

    def record(self, key: str, now: float) -> None:
        self.track(key).failures.append(now)

    def retract(self, key: str) -> None:
        tr = self.tracks.get(key)
        if tr is not None and tr.failures:
            tr.failures.pop()


def _merge(a: Verdict, b: Verdict) -> Verdict:
    if a.blocked or b.blocked:
        return Verdict(blocked_until=max(x.blocked_until or 0.0 for x in (a, b)))
    return Verdict(delay=max(a.delay, b.delay))


class AuthLimiter:
    """Failure counts per client address and per user name; see the module docstring."""

    def __init__(self, clock: Callable[[], float], limits: AuthLimits | None = None) -> None:
        self.clock = clock
        self.limits = limits or AuthLimits()
        self._addresses = _Keyed(self.limits.per_address, self.limits.max_tracked)
        self._users = _Keyed(self.limits.per_user, self.limits.max_tracked)

    def address_key(self, ip: str) -> str:
        """The key a client address counts under: itself, or its /64 for IPv6."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return ip
        if isinstance(addr, ipaddress.IPv6Address):
            if addr.ipv4_mapped is not None:
                return str(addr.ipv4_mapped)
            net = ipaddress.IPv6Network((addr, self.limits.ipv6_prefix), strict=False)
            return str(net)
        return str(addr)

    @staticmethod
    def user_key(user: str) -> str:
        # "Alice" and "alice" are one target for a guesser, whatever the store thinks.
        return user.casefold()

    def check(self, ip: str, user: str | None = None) -> Verdict:
        """The verdict for an attempt now, recording nothing (for example to refuse AUTH
        from a blocked address before reading any credentials)."""
        now = self.clock()
        v = self._addresses.verdict(self.address_key(ip), now)
        if user is not None:
            v = _merge(v, self._users.verdict(self.user_key(user), now))
        return v

    def attempt(self, ip: str, user: str) -> Verdict:
        """Start an attempt: counted as a failure now, unless blocked (then nothing is
        counted and the password must not be checked)."""
        now = self.clock()
        ip_key, user_key = self.address_key(ip), self.user_key(user)
        v = _merge(self._addresses.verdict(ip_key, now), self._users.verdict(user_key, now))
        if not v.blocked:
            self._addresses.record(ip_key, now)
            self._users.record(user_key, now)
        return v

    def succeeded(self, ip: str, user: str) -> None:
        """The attempt started by attempt() succeeded: it is no failure after all."""
        self._addresses.retract(self.address_key(ip))
        self._users.retract(self.user_key(user))

    def tracked(self) -> tuple[int, int]:
        """How many (addresses, users) are tracked now; for metrics and tests."""
        return len(self._addresses.tracks), len(self._users.tracks)
