"""The scheduler's engine: due messages in, courier jobs out, outcomes recorded."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from albatross import bounce
from albatross.delivery import Courier, Delivery
from albatross.errors import SpoolError
from albatross.model import Envelope, Outcome, Recipient, Reply
from albatross.spool import Spool


class Clock(Protocol):
    """Wall-clock time in seconds (the queue stores absolute times that survive restarts)."""

    def time(self) -> float: ...


class SystemClock:
    def time(self) -> float:
        return time.time()


@dataclass(frozen=True, slots=True)
class Route:
    """Where a recipient goes: a courier by name, and the destination that groups
    recipients into one transaction and carries the per-destination limits."""

    transport: str
    destination: str


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    min_backoff: float = 300.0  # like Postfix's minimal_backoff_time
    max_backoff: float = 4000.0  # like Postfix's maximal_backoff_time (about 67 minutes)
    lifetime: float = 5 * 86400.0  # give up and bounce after this long in the queue
    delay_warning: float = 4 * 3600.0  # warn the sender once after this long (0: never)
    max_active: int = 5000  # messages in memory (being delivered) at most
    batch: int = 500  # due messages fetched per look at the queue
    concurrency: int = 20  # connections/jobs per destination at once
    rate: float = 0.0  # messages per minute per destination (0: unlimited)
    overrides: Mapping[str, tuple[int, float]] = field(default_factory=dict)
    reporting_mta: str = "localhost"
    postmaster: str = "postmaster@localhost"
    max_returned: int = 100_000
    jitter: float = 0.2


def backoff(attempts: int, settings: SchedulerSettings, rnd: random.Random) -> float:
    """Seconds until the next attempt after `attempts` failed ones: doubling from
    min_backoff up to max_backoff, spread by +-jitter so that a destination that was down
    is not hit by its whole backlog in the same second when it returns."""
    base = min(settings.max_backoff, settings.min_backoff * 2.0 ** max(0, attempts - 1))
    spread = 1.0 + settings.jitter * (2 * rnd.random() - 1)
    return max(1.0, base * spread)


DsnBuilder = Callable[..., tuple[str, bytes]]


@dataclass(slots=True)
class _Active:
    """A message being delivered: its envelope, its body once a courier needs it, and the
    outcomes of this attempt, each paired with its recipient (never matched by address:
    an envelope may name the same address twice)."""

    qid: str
    envelope: Envelope
    attempts: int
    warned: bool
    body: bytes | None = None
    running: int = 0
    results: list[tuple[Recipient, Outcome]] = field(default_factory=list)
    failed: list[tuple[Recipient, Outcome | None]] = field(default_factory=list)
    succeeded: list[tuple[Recipient, Outcome]] = field(default_factory=list)


@dataclass(slots=True)
class _Destination:
    active: int = 0
    waiting: deque[tuple[_Active, Route, tuple[Recipient, ...]]] = field(default_factory=deque)


class Scheduler:
    """Reads due messages from the spool, hands them to couriers, records outcomes."""

    def __init__(self, spool: Spool, couriers: Mapping[str, Courier],
                 route: Callable[[Recipient, Envelope], Route], *,
                 settings: SchedulerSettings | None = None, clock: Clock | None = None,
                 log: Callable[..., None] | None = None, dsn: DsnBuilder | None = None,
                 rnd: random.Random | None = None) -> None:
        self.spool = spool
        self.couriers = couriers
        self.route = route
        self.settings = settings or SchedulerSettings()
        self.clock = clock or SystemClock()
        self.log = log or (lambda event, **fields: None)
        self.dsn = dsn
        self.rnd = rnd or random.Random()
        self.active: dict[str, _Active] = {}
        self.locked: set[str] = set()  # messages an operator is deleting or bouncing
        self.destinations: dict[str, _Destination] = {}
        self._buckets: dict[str, tuple[float, float]] = {}  # rate limits: (tokens, when)
        self._timers: dict[str, asyncio.TimerHandle] = {}  # one rate-limit timer per dest
        # Messages sent back to the queue by the fairness cap, per destination: made due
        # again as soon as that destination's backlog has halved (see _pump).
        self._parked: dict[str, list[str]] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False
        # The last look at the queue left due mail there (no room, or more than a batch):
        # a finished delivery must look again. Otherwise only a deferral does (the next
        # due time may have moved closer); a delivered message changes nothing.
        self._behind = False

    # --- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking new work; let running deliveries finish for `grace` seconds. What is
        cut off stays in the queue (as 'active', which recovery makes due again) and is
        retried after a restart: at worst a duplicate delivery, never a loss."""
        self._stopping = True
        self._wake.set()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        deadline = asyncio.get_running_loop().time() + grace
        while self._tasks:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            await asyncio.wait(set(self._tasks), timeout=left)
        pending = set(self._tasks)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=2)

    def wake(self) -> None:
        """Something became due (a new message, a flush, a finished delivery)."""
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                next_due = await self.tick()
            except Exception as exc:  # never let the delivery loop die silently
                self.log("error", where="scheduler", error=repr(exc))
                next_due = self.clock.time() + 5
            delay = 60.0 if next_due is None else max(0.0, next_due - self.clock.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=min(delay, 60.0) + 0.001)

    # --- one look at the queue ---------------------------------------------------------

    async def tick(self) -> float | None:
        """Start every due message that fits; return when the next one is due, or None
        when only a finished delivery (which calls wake()) can change anything."""
        if self._stopping:
            return None
        room = self.settings.max_active - len(self.active)
        if room <= 0:
            self._behind = True
            return None
        now = self.clock.time()
        limit = min(room, self.settings.batch) + len(self.active)
        due = await asyncio.to_thread(self.spool.due, now + 0.0005, limit)
        self._behind = len(due) >= limit
        # The room again: mail handed over by sessions during the read may have taken it.
        room = self.settings.max_active - len(self.active)
        chosen = [qid for qid, _when in due if qid not in self.active][:max(room, 0)]
        loaded: list[Any] = []
        if chosen:
            self.spool.claim(chosen)
            # One thread hop for the whole batch, not one per message (py-spy: the
            # hand-offs cost more than the reads themselves).
            loaded = await asyncio.to_thread(self._load_batch, chosen)
        for qid, found in zip(chosen, loaded, strict=True):
            if len(self.active) >= self.settings.max_active:  # taken during the load
                self._behind = True
                await self._requeue(qid, 0.0)
                continue
            try:
                await self._start(qid, found)
            except Exception as exc:
                self.log("error", qid=qid, where="scheduler", error=repr(exc))
                self.active.pop(qid, None)
                await self._requeue(qid, self.settings.min_backoff)
        if due and not chosen:
            # Everything due is in flight, its claim not yet written: look again when a
            # delivery ends, or mail due meanwhile would wait for the 60 s timeout.
            self._behind = True
            return None
        return await asyncio.to_thread(self.spool.next_due)

    async def _requeue(self, qid: str, delay: float) -> None:
        """Give a claimed message back to the queue without counting an attempt."""
        try:
            await self.spool.unclaim(qid, self.clock.time() + delay)
        except Exception as exc:
            self.log("error", qid=qid, where="scheduler", error=f"cannot requeue: {exc}")

    def _park(self, qid: str, destination: str) -> None:
        """The fairness cap: back to the queue for 5 s, or until the destination's backlog
        has halved (_pump). Parked before the give-back is written, so a pump meanwhile
        sees it; unclaim() is submitted at once, so an unpark flush comes after it."""
        self._parked.setdefault(destination, []).append(qid)
        self.spool.unclaim(qid, self.clock.time() + 5.0)

    def _load_batch(self, qids: list[str]) -> list[Any]:
        """Runs in a thread: load_for_delivery of each id, or the SpoolError it raised."""
        out: list[Any] = []
        for qid in qids:
            try:
                out.append(self.spool.load_for_delivery(qid))
            except SpoolError as exc:
                out.append(exc)
        return out

    async def _start(self, qid: str, found: Any) -> None:
        if isinstance(found, SpoolError):
            exc = found
            self.log("error", qid=qid, where="scheduler", error=str(exc))
            # Unclaim it, and look again later rather than in a tight loop.
            await self._requeue(qid, self.settings.min_backoff)
            return
        if found is None:
            return  # removed meanwhile (an operator, or a finished duplicate claim)
        envelope, sched, body = found
        if sched.state == "held":
            return
        if qid in self.locked:  # an operator is deleting or bouncing it right now
            await self._requeue(qid, 1.0)
            return
        msg = _Active(qid, envelope, sched.attempts, sched.warned, body)
        pending = [r for r in envelope.recipients if not r.is_final]
        if not pending:  # all final, but not yet removed (a stop came in between)
            self.active[qid] = msg
            try:
                await self._finish(msg)
            finally:
                self.active.pop(qid, None)
            return
        groups = self._groups(envelope, pending)
        # Fairness: a destination with a backlog already waiting in memory does not take
        # more of the active places; its mail waits in the queue a little longer, so mail
        # to other destinations is not stuck behind it.
        for route in groups:
            if self._crowded(route.destination):
                self._park(qid, route.destination)
                return
        self._launch(msg, groups)

    def _groups(self, envelope: Envelope,
                pending: list[Recipient]) -> dict[Route, list[Recipient]]:
        groups: dict[Route, list[Recipient]] = {}
        for r in pending:
            groups.setdefault(self.route(r, envelope), []).append(r)
        return groups

    def _crowded(self, destination: str) -> bool:
        dest = self.destinations.get(destination)
        return dest is not None and len(dest.waiting) >= self._backlog_cap(destination)

    def _launch(self, msg: _Active, groups: dict[Route, list[Recipient]]) -> None:
        self.active[msg.qid] = msg
        msg.running = len(groups)
        for route, rcpts in groups.items():
            self._enqueue(msg, route, tuple(rcpts))

    # --- mail straight from a session -----------------------------------------------------

    def intake(self, envelope: Envelope) -> Callable[[str, bytes | None], None] | None:
        """Offer a message about to be stored: when the scheduler is running and has room
        (and no destination of the message is crowded), return a callback for the spool to
        call once the message is durable, which starts delivering it from memory. The
        message is then stored as already claimed ('active'), so the queue is never read
        for it: no thread hop, no second read of what the session just wrote. None: store
        it as due, and the next look at the queue finds it.

        A crash between the commit and the end of the attempt leaves it 'active', which
        recovery makes due again, as for any claimed message."""
        if (self._runner is None or self._stopping
                or len(self.active) >= self.settings.max_active):
            return None
        pending = [r for r in envelope.recipients if not r.is_final]
        if not pending:
            return None
        groups = self._groups(envelope, pending)
        if any(self._crowded(route.destination) for route in groups):
            return None

        def stored(qid: str, body: bytes | None) -> None:
            try:
                if self._stopping:
                    return  # stays 'active' in the queue: recovery makes it due again
                now = self.clock.time()
                if qid in self.locked:
                    # An operator deleted or bounced it between the commit and now: leave
                    # it to them, as _start does for mail read from the queue.
                    self._give_back(qid, now + 1.0)
                    return
                # The room was checked at the end of DATA; sessions committing at the same
                # time may have taken it since.
                if len(self.active) >= self.settings.max_active:
                    self._give_back(qid, now)
                    return
                for route in groups:
                    if self._crowded(route.destination):
                        self._park(qid, route.destination)
                        return
                self._launch(_Active(qid, envelope, 0, False, body), groups)
            except Exception as exc:  # never let a bug strand it: the queue still has it
                self.log("error", qid=qid, where="scheduler", error=repr(exc))
                self.active.pop(qid, None)
                self._give_back(qid, self.clock.time())

        return stored

    def _give_back(self, qid: str, when: float) -> None:
        """End the claim of a handed-over message that will not be delivered now: due at
        `when` (unless held), then a look at the queue. Submitted at once, so an unpark
        flush that comes later lands after it."""
        self._behind = True
        self.spool.unclaim(qid, when).add_done_callback(lambda _f: self.wake())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- per-destination limits ----------------------------------------------------------

    def _limits(self, destination: str) -> tuple[int, float]:
        return self.settings.overrides.get(destination,
                                           (self.settings.concurrency, self.settings.rate))

    def _backlog_cap(self, destination: str) -> int:
        return max(2 * self._limits(destination)[0], 10)

    def _enqueue(self, msg: _Active, route: Route, rcpts: tuple[Recipient, ...]) -> None:
        dest = self.destinations.setdefault(route.destination, _Destination())
        dest.waiting.append((msg, route, rcpts))
        self._pump(route.destination)

    def _timer_fired(self, name: str) -> None:
        self._timers.pop(name, None)
        self._pump(name)

    def _pump(self, name: str) -> None:
        if self._stopping:
            return
        dest = self.destinations.get(name)
        if dest is None:
            return
        concurrency, rate = self._limits(name)
        while dest.waiting and dest.active < concurrency:
            if rate > 0:
                # A token bucket per destination, kept while the destination is idle too
                # (so a rate holds across messages that arrive one at a time).
                now = time.monotonic()
                per_second = rate / 60.0
                burst = max(1.0, per_second)
                tokens, refilled = self._buckets.get(name, (burst, now))
                tokens = min(burst, tokens + (now - refilled) * per_second)
                if tokens < 1.0:
                    self._buckets[name] = (tokens, now)
                    if name not in self._timers:  # one timer per destination, not per call
                        wait = (1.0 - tokens) / per_second
                        self._timers[name] = asyncio.get_running_loop().call_later(
                            wait, self._timer_fired, name)
                    return
                self._buckets[name] = (tokens - 1.0, now)
                if len(self._buckets) > 10000:
                    self._prune_buckets(now)
            msg, route, rcpts = dest.waiting.popleft()
            dest.active += 1
            self._spawn(self._deliver(msg, route, rcpts))
        parked = self._parked.get(name)
        if parked and len(dest.waiting) <= self._backlog_cap(name) // 2:
            # Without this a burst larger than the cap waited out the whole 5 s requeue
            # delay although the destination had room again within milliseconds.
            del self._parked[name]
            self._spawn(self._unpark(parked))
        if not dest.waiting and dest.active == 0:
            del self.destinations[name]

    async def _unpark(self, qids: list[str]) -> None:
        """Make messages the fairness cap requeued due now, then look at the queue."""
        try:
            for i in range(0, len(qids), 500):
                await self.spool.flush(self.clock.time(), qids[i:i + 500])
        except Exception as exc:  # they are due in 5 s anyway
            self.log("error", where="scheduler", error=f"cannot requeue parked mail: {exc}")
        self.wake()

    def _prune_buckets(self, now: float) -> None:
        """Forget buckets that have refilled completely: they hold no information."""
        for name, (tokens, refilled) in list(self._buckets.items()):
            rate = self._limits(name)[1] / 60.0
            if rate <= 0 or tokens + (now - refilled) * rate >= max(1.0, rate):
                del self._buckets[name]

    async def _deliver(self, msg: _Active, route: Route, rcpts: tuple[Recipient, ...]) -> None:
        courier = self.couriers.get(route.transport)
        self.log("attempt", qid=msg.qid, destination=route.destination,
                 transport=route.transport, rcpt=[r.address for r in rcpts],
                 try_=msg.attempts + 1)
        try:
            outcomes = await self._outcomes(msg, route, rcpts, courier)
            pairs = list(zip(rcpts, outcomes, strict=True))
            msg.results.extend(pairs)
            self._apply(msg, pairs)
            self._log_outcomes(msg, outcomes)
            if msg.running > 1:
                # Other destinations of this message are still going: make this group's
                # results durable now, so a crash meanwhile does not deliver it twice.
                with contextlib.suppress(SpoolError):
                    await self.spool.update(msg.qid, envelope=msg.envelope)
        finally:
            dest = self.destinations.get(route.destination)
            if dest is not None:
                dest.active -= 1
                self._pump(route.destination)
            msg.running -= 1
        if msg.running == 0:
            removed = False
            try:
                removed = await self._finish(msg)
            except Exception as exc:
                # Not recorded: give it back to the queue (at worst a duplicate delivery).
                self.log("error", qid=msg.qid, where="scheduler", error=repr(exc))
                await self._requeue(msg.qid, self.settings.min_backoff)
            finally:
                self.active.pop(msg.qid, None)
                msg.body = None
                if self._behind or not removed:
                    self.wake()

    async def _outcomes(self, msg: _Active, route: Route, rcpts: tuple[Recipient, ...],
                        courier: Courier | None) -> list[Outcome]:
        def all_deferred(reply: Reply) -> list[Outcome]:
            return [Outcome(r.address, "deferred", reply, "local") for r in rcpts]

        if courier is None:
            return all_deferred(Reply(451, "4.3.5",
                                      f"no courier for transport {route.transport!r}"))
        try:
            if msg.body is None:
                msg.body = await asyncio.to_thread(self.spool.load_body, msg.qid)
            delivery = Delivery(qid=msg.qid, envelope=msg.envelope, recipients=rcpts,
                                body=msg.body, destination=route.destination,
                                attempt=msg.attempts + 1)
            outcomes = await courier.deliver(delivery)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a courier bug defers, never loses or bounces
            self.log("error", qid=msg.qid, where=route.transport, error=repr(exc))
            return all_deferred(Reply(451, "4.3.0",
                                      f"internal error in {route.transport}: {exc!r}"))
        if len(outcomes) != len(rcpts):
            return all_deferred(Reply(451, "4.3.0",
                                      "courier returned the wrong number of outcomes"))
        return outcomes

    def _apply(self, msg: _Active, pairs: list[tuple[Recipient, Outcome]]) -> None:
        """Write each outcome into its recipient and remember what needs a DSN."""
        now = self.clock.time()
        for r, o in pairs:
            if r.is_final:
                continue
            r.reply, r.remote, r.updated = str(o.reply), o.remote_host, now
            if o.status == "delivered":
                r.state = "delivered"
                msg.succeeded.append((r, o))
            elif o.status == "bounced":
                r.state = "bounced"
                msg.failed.append((r, o))

    def _log_outcomes(self, msg: _Active, outcomes: list[Outcome]) -> None:
        delay = round(self.clock.time() - msg.envelope.arrival, 3)
        for o in outcomes:
            relay = f"{o.remote_host or '?'}[{o.remote_ip}]" if o.remote_ip else o.remote_host
            self.log(o.status, qid=msg.qid, rcpt=o.recipient, relay=relay, reply=str(o.reply),
                     category=o.category, tls=o.tls, delay=delay)

    # --- recording an attempt ------------------------------------------------------------

    async def _finish(self, msg: _Active) -> bool:
        """Settle the attempt; queue DSNs first, then update or remove the message (a crash
        between the two can only duplicate a DSN, never lose one). True: removed."""
        now = self.clock.time()
        env = msg.envelope
        failed: list[tuple[Recipient, Outcome | None]] = list(msg.failed)
        pending = [r for r in env.recipients if not r.is_final]
        attempts = msg.attempts + (1 if msg.results else 0)
        expired = bool(pending) and now - env.arrival >= self.settings.lifetime
        last_by_rcpt = {id(r): o for r, o in msg.results}
        if expired:
            for r in pending:
                r.state = "expired"
                failed.append((r, last_by_rcpt.get(id(r))))
                self.log("expired", qid=msg.qid, rcpt=r.address, reply=r.reply,
                         delay=round(now - env.arrival, 3))
            pending = []
        warn: list[Recipient] = []
        if (pending and not msg.warned and self.settings.delay_warning > 0
                and now - env.arrival >= self.settings.delay_warning):
            warn = pending
        await self._send_dsns(msg, failed, msg.succeeded, warn, now, expired)
        if not pending:
            await self.spool.remove(msg.qid)
            return True
        last = ", ".join(sorted({r.reply or "" for r in pending if r.reply}))[:500] or None
        await self.spool.update(msg.qid, envelope=env, attempts=attempts,
                                next_attempt=now + backoff(attempts, self.settings, self.rnd),
                                warned=msg.warned or bool(warn), last_error=last,
                                state="requeue")
        return False

    async def _send_dsns(self, msg: _Active, failed: list[tuple[Recipient, Outcome | None]],
                         succeeded: list[tuple[Recipient, Outcome]], warn: list[Recipient],
                         now: float, expired: bool) -> None:
        if self.dsn is None:
            return
        env = msg.envelope
        if failed:
            reports = [self._report(r, o, "failed", now, expired) for r, o in failed
                       if bounce.wanted(r, "failed")]
            if reports:
                await self._queue_dsn(msg, reports, "failure", now)
        if succeeded:
            reports = [self._report(r, o, "delivered", now, False) for r, o in succeeded
                       if bounce.wanted(r, "delivered")]
            if reports:
                await self._queue_dsn(msg, reports, "success", now)
        if warn:
            reports = [self._report(r, None, "delayed", now, False) for r in warn
                       if bounce.wanted(r, "delayed")]
            if reports:
                await self._queue_dsn(msg, reports, "delay", now,
                                      until=env.arrival + self.settings.lifetime)

    def _report(self, r: Recipient, o: Outcome | None, action: str, now: float,
                expired: bool) -> Any:
        reply = o.reply if o is not None else _parse_reply(r.reply)
        if action == "delivered":
            status = "2.0.0"
        elif action == "delayed":
            status = reply.enhanced if reply is not None and reply.enhanced else "4.0.0"
        elif expired and (reply is None or reply.code < 500):
            status = "4.4.7"  # RFC 3463: delivery time expired
        else:
            status = reply.enhanced if reply is not None and reply.enhanced else "5.0.0"
        return bounce.Report(recipient=r.address, orcpt=r.orcpt, action=action,
                             status=status, reply=reply,
                             remote_mta=o.remote_host if o is not None else r.remote,
                             last_attempt=now, will_retry_until=None)

    async def _queue_dsn(self, msg: _Active, reports: list[Any], kind: str, now: float,
                         until: float | None = None) -> None:
        env = msg.envelope
        if not bounce.should_bounce(env):
            # Never a bounce to <>. A DSN of ours that itself failed goes to postmaster,
            # once (its own failure is dropped: source "double-bounce").
            if env.source != "bounce" or kind != "failure":
                return
            target = self.settings.postmaster
            source = "double-bounce"
        else:
            target = env.sender
            source = "bounce"
        if until is not None:
            reports = [_with_until(r, until) for r in reports]
        assert self.dsn is not None
        body = msg.body
        if body is None:
            body = await asyncio.to_thread(self.spool.load_body, msg.qid)
        _rcpt, data = self.dsn(env, msg.qid, body, reports,
                               reporting_mta=self.settings.reporting_mta, now=now, kind=kind,
                               max_returned=self.settings.max_returned,
                               postmaster=self.settings.postmaster)
        qid = self.spool.new_id()
        writer = self.spool.begin(qid)
        await writer.write(data)
        dsn_env = Envelope(sender="", recipients=[Recipient(target)], arrival=now,
                           protocol="local", source=source,
                           mail_params=bounce.mail_params_for(target, data))
        await self.spool.commit(writer, dsn_env)
        self.log("dsn-sent", qid=msg.qid, dsn_qid=qid, kind=kind, to=target,
                 rcpt=[r.recipient for r in reports])
        self.wake()


def _parse_reply(text: str | None) -> Reply | None:
    """A Reply back from its one-line form ("451 4.4.1 text"), for DSNs of recipients whose
    last reply came from an earlier attempt."""
    if not text or len(text) < 3 or not text[:3].isdigit():
        return None
    rest = text[4:]
    enhanced, _, words = rest.partition(" ")
    if not (enhanced.count(".") == 2 and enhanced.replace(".", "").isdigit()):
        enhanced, words = "", rest
    return Reply(int(text[:3]), enhanced, words)


def _with_until(report: Any, until: float) -> Any:
    from dataclasses import replace

    return replace(report, will_retry_until=until)


class Busy(Exception):
    """The message is being delivered right now; try the operation again shortly."""


class Admin:
    """Operator actions on the queue (flush, hold, release, delete, bounce), applied through
    the scheduler so that timing and outcomes stay its business."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.s = scheduler

    async def flush(self, qid: str | None = None, domain: str | None = None) -> int:
        """Make queued messages due now (all, one, or those with recipients at `domain`),
        in one transaction."""
        spool = self.s.spool
        now = self.s.clock.time()
        if qid is None and domain is None:
            n = await spool.flush(now)
        elif domain is None:
            n = await spool.flush(now, [qid] if qid else [])
        else:
            entries = await asyncio.to_thread(spool.entries)
            want = domain.lower()
            ids = [e.qid for e in entries if e.schedule.state == "queued"
                   and (qid is None or e.qid == qid)
                   and want in {r.domain for r in e.envelope.recipients if not r.is_final}]
            n = 0
            for i in range(0, len(ids), 500):
                n += await spool.flush(now, ids[i:i + 500])
        self.s.wake()
        return n

    async def hold(self, qid: str) -> bool:
        if await asyncio.to_thread(self.s.spool.schedule, qid) is None:
            return False
        await self.s.spool.update(qid, state="held")
        return True

    async def release(self, qid: str) -> bool:
        sched = await asyncio.to_thread(self.s.spool.schedule, qid)
        if sched is None:
            return False
        if sched.state == "held":
            # A message held while being delivered goes back to 'active', so the end of
            # its attempt requeues it as usual; otherwise it is due now.
            state = "active" if qid in self.s.active else "queued"
            await self.s.spool.update(qid, state=state, next_attempt=self.s.clock.time())
            self.s.wake()
        return True

    def _lock(self, qid: str) -> None:
        # Synchronous with the scheduler's own check in _start: no await in between, so a
        # message is either being delivered (Busy) or can no longer start.
        if qid in self.s.active or qid in self.s.locked:
            raise Busy(qid)
        self.s.locked.add(qid)

    async def delete(self, qid: str, by: str = "admin") -> bool:
        """Remove a message; its pending recipients end as "deleted" (no DSN)."""
        self._lock(qid)
        try:
            try:
                env = await asyncio.to_thread(self.s.spool.load_envelope, qid)
            except KeyError:
                return False
            pending = [r.address for r in env.recipients if not r.is_final]
            await self.s.spool.remove(qid)
            self.s.log("deleted", qid=qid, rcpt=pending, by=by)
            return True
        finally:
            self.s.locked.discard(qid)

    async def bounce(self, qid: str, by: str = "admin") -> bool:
        """Fail every pending recipient now, with a DSN to the sender as for any bounce."""
        self._lock(qid)
        try:
            try:
                env = await asyncio.to_thread(self.s.spool.load_envelope, qid)
                sched = await asyncio.to_thread(self.s.spool.schedule, qid)
            except KeyError:
                return False
            if sched is None:
                return False
            reply = Reply(550, "5.0.0", f"message returned by the mail administrator ({by})")
            msg = _Active(qid, env, sched.attempts, sched.warned)
            pairs = [(r, Outcome(r.address, "bounced", reply, "admin"))
                     for r in env.recipients if not r.is_final]
            msg.results = pairs
            self.s._apply(msg, pairs)
            self.s._log_outcomes(msg, [o for _r, o in pairs])
            await self.s._finish(msg)
            return True
        finally:
            self.s.locked.discard(qid)
