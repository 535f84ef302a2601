"""Spool: the durable message store that sessions commit to and the scheduler reads from.

Durability contract (ARCHITECTURE.md, "Durability"): commit() returns only when the message
and its envelope are on stable storage, so the session may answer 250; anything that goes
wrong on the way is a SpoolError (451 4.3.0) and nothing committed earlier is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from albatross.errors import SpoolError
from albatross.model import Envelope
from albatross.spool.commit import CommitJob, CommitStats, CommitThread, UpdateJob
from albatross.spool.ids import IdSource, is_valid_id
from albatross.spool.layout import Layout, fsync_dir
from albatross.spool.maildrop import (
    MAX_RECORD,
    STALE_TMP_SECONDS,
    MalformedMaildrop,
    parse_record,
)
from albatross.spool.message import MessageWriter
from albatross.spool.recovery import RecoveryReport, recover
from albatross.spool.schema import NewerFormat, connect_reader

# has_space_for is asked on every MAIL; statvfs once a second is plenty.
_SPACE_CACHE_SECONDS = 1.0
_PICKUP_CHUNK = 256 * 1024


# Bodies up to this size travel with their envelope to the scheduler (read in the same
# query, or handed over from the commit); larger ones are read when a courier needs them.
PREFETCH = 32 * 1024


def _no_log(event: str, **fields: Any) -> None:
    pass


class Spool:
    """One shard's queue: a database of envelopes and bodies plus spooled body files."""

    def __init__(self, data_dir: Path, *, inline_max: int = 256 * 1024,
                 min_free_space: int = 100 * 1024 * 1024,
                 log: Callable[..., None] | None = None, shard: str = "A",
                 prepare: Callable[[Envelope, MessageWriter], Awaitable[None]] | None = None,
                 ) -> None:
        if inline_max < 0 or min_free_space < 0:
            raise ValueError("inline_max and min_free_space must not be negative")
        self.layout = Layout(Path(data_dir))
        # Built once: Path arithmetic per message showed in the relay profile.
        self._tmp_dir = self.layout.tmp
        self._spool_dir = str(self.layout.spool)
        self.inline_max = inline_max
        self.min_free_space = min_free_space
        self._log = log or _no_log
        self._ids = IdSource(shard)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._committer: CommitThread | None = None
        self._closing = False
        self._pickup_lock = asyncio.Lock()
        # Called for each maildrop message before it is committed: it may read the whole
        # message and prepend headers (DKIM-Signature); raising defers the file.
        self.prepare = prepare
        self._free_bytes = 0
        self._free_checked_at = -_SPACE_CACHE_SECONDS * 2
        self._lock_fd: int | None = None
        self._readers = threading.local()

    # -- life cycle ---------------------------------------------------------------------

    async def open(self) -> RecoveryReport:
        """Create the layout, recover from whatever a crash left, start the writer, pick up."""
        if self._committer is not None:
            raise SpoolError("spool is already open")
        self._loop = asyncio.get_running_loop()
        self._lock_data_dir()
        try:
            conn, report = await asyncio.to_thread(recover, self.layout, self._log)
        except (OSError, sqlite3.Error, NewerFormat) as exc:
            self._unlock_data_dir()
            raise SpoolError(f"cannot open the spool in {self.layout.data_dir}: {exc}") from exc
        self._closing = False
        self._committer = CommitThread(conn, self.layout, self._loop)
        self._committer.start()
        try:
            picked, rejected = await self._pickup()
        except BaseException:
            await self.close()  # do not leave a writer thread behind a failed open
            raise
        report = replace(report, picked_up=picked, maildrop_rejected=rejected,
                         messages=report.messages + picked)
        self._log("spool-recovered", tmp_removed=report.tmp_removed,
                  orphans_removed=report.orphans_removed, quarantined=report.quarantined,
                  database_replaced=report.database_replaced, messages=report.messages,
                  picked_up=report.picked_up, maildrop_rejected=report.maildrop_rejected)
        return report

    async def close(self) -> None:
        """Finish every commit already submitted, stop the writer, close the database."""
        committer = self._committer
        if committer is None:
            return
        self._closing = True  # no new jobs may arrive after the stop marker
        committer.stop()
        await asyncio.to_thread(committer.join)
        self._committer = None
        self._unlock_data_dir()

    def _lock_data_dir(self) -> None:
        """One process per data directory: a second daemon's recovery would delete the
        first one's uncommitted files and deliver its claimed mail again."""
        self.layout.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.layout.data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise SpoolError(f"another Albatross is using {self.layout.data_dir} "
                             f"(lock held on {self.layout.data_dir / 'lock'})") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock_data_dir(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    @property
    def shard(self) -> str:
        """The letter that starts this shard's queue ids."""
        return self._ids.shard

    def log(self, event: str, /, **fields: Any) -> None:
        """Write a mail-log event through the log this spool was given."""
        self._log(event, **fields)

    @property
    def stats(self) -> CommitStats:
        """Group-commit counters (batches, messages, largest batch) since open()."""
        if self._committer is None:
            return CommitStats(0, 0, 0)
        return self._committer.stats

    # -- the write side -----------------------------------------------------------------

    def new_id(self) -> str:
        return self._ids.next()

    def has_space_for(self, size: int) -> bool:
        """True when `size` more bytes leave at least min_free_space free on the spool's disk.

        Refusing at MAIL time (452 4.3.1, RFC 5321 section 4.5.3.1.10) beats failing at the
        end of DATA after the client has sent everything.
        """
        now = time.monotonic()
        if now - self._free_checked_at >= _SPACE_CACHE_SECONDS:
            try:
                st = os.statvfs(self.layout.data_dir)
                self._free_bytes = st.f_bavail * st.f_frsize
            except OSError:
                self._free_bytes = 0  # cannot tell: say no, a 452 is retried
            self._free_checked_at = now
        return self._free_bytes >= size + self.min_free_space

    def begin(self, qid: str) -> MessageWriter:
        if not is_valid_id(qid):
            raise SpoolError(f"not a queue id: {qid!r}")
        return MessageWriter(qid, self._tmp_dir, self.inline_max)

    async def commit(self, writer: MessageWriter, envelope: Envelope, *,
                     held: bool = False,
                     handoff: Callable[[str, bytes | None], None] | None = None) -> None:
        """Store the message and its envelope; return only once both are durable. `held`
        stores it on hold (quarantine): listed, but not delivered until released.

        `handoff` (from Scheduler.intake) stores it as already claimed for delivery and is
        called on the loop with the queue id and the body (None when it is larger than
        PREFETCH or a file) as soon as it is durable, even if the caller was cancelled
        meanwhile."""
        committer = self._committer
        if committer is None or self._closing or self._loop is None:
            writer.abort()
            raise SpoolError("spool is not open")
        try:
            if not envelope.arrival:
                envelope.arrival = time.time()
            text = _envelope_json(envelope)
            arrival = float(envelope.arrival)
        except (TypeError, ValueError) as exc:
            writer.abort()
            raise SpoolError(f"{writer.qid}: envelope cannot be stored: {exc}") from exc
        sealed = await writer.seal()
        if self._closing or self._committer is None:
            # close() came while the body was being sealed: the writer thread may be gone.
            writer.abort()
            if sealed.tmp_path is not None:
                _unlink_quietly(sealed.tmp_path)
            raise SpoolError("spool is closing")
        future: asyncio.Future[None] = self._loop.create_future()
        committer.submit(CommitJob(
            qid=writer.qid, arrival=arrival, size=sealed.size, record=text, body=sealed.inline,
            tmp_path=sealed.tmp_path,
            body_name=None if sealed.tmp_path is None else Layout.body_name(writer.qid),
            future=future,
            state="held" if held else "queued" if handoff is None else "active",
            stored=None if held or handoff is None else functools.partial(
                handoff, writer.qid,
                # As load_for_delivery: mail waiting for its destination keeps at most
                # PREFETCH bytes of body in memory; a larger one is read when it is sent.
                sealed.inline if sealed.size <= PREFETCH else None)))
        await future

    # -- the scheduler's side: changes to stored messages, group-committed -------------

    def claim(self, qids: list[str]) -> asyncio.Future[None]:
        """Mark messages as being delivered (state 'active'), so that due() and next_due()
        skip them. Not awaited by the scheduler: the writer applies jobs in order, so the
        claim always lands before the attempt's own update. Recovery turns 'active' back
        into 'queued'."""
        marks = ", ".join("?" for _ in qids)
        # "+state": look rows up by id, not through the (state, next_attempt) index, which
        # SQLite would otherwise scan across every queued row (slow with a large queue).
        statement = (f"UPDATE schedule SET state = 'active' WHERE +state = 'queued'"
                     f" AND id IN ({marks})", tuple(qids))
        return self._submit_now(qids[0] if qids else "", statement)

    def unclaim(self, qid: str, next_attempt: float) -> asyncio.Future[None]:
        """End a claim without an attempt: 'queued' again (unless an operator held it),
        due at `next_attempt`. Submitted before this returns, like claim(), so it lands
        before any job submitted after it; the future needs no awaiting."""
        statement = ("UPDATE schedule SET next_attempt = ?,"
                     " state = CASE state WHEN 'held' THEN 'held' ELSE 'queued' END"
                     " WHERE id = ?", (next_attempt, qid))
        return self._submit_now(qid, statement)

    def _submit_now(self, qid: str, statement: tuple[str, tuple[object, ...]]
                    ) -> asyncio.Future[None]:
        """Hand one statement to the writer before returning; nobody needs to await it."""
        future = self._new_future()
        future.add_done_callback(_consume)
        committer = self._committer
        if committer is None or self._closing:
            future.set_exception(SpoolError("spool is not open"))
        else:
            committer.submit(UpdateJob(qid, (statement,), (), future))
        return future

    async def update(self, qid: str, *, envelope: Envelope | None = None,
                     next_attempt: float | None = None, attempts: int | None = None,
                     warned: bool | None = None, last_error: str | None = None,
                     state: str | None = None) -> None:
        """Record an attempt's results durably: the envelope (per-recipient state) and/or
        the schedule. Only the fields given change. state "requeue" ends a claim: the
        message becomes 'queued' again unless an operator held it meanwhile."""
        statements: list[tuple[str, tuple[object, ...]]] = []
        if envelope is not None:
            statements.append(("UPDATE envelope SET record = ? WHERE id = ?",
                               (_envelope_json(envelope), qid)))
        sets: list[str] = []
        params: list[object] = []
        for column, value in (("next_attempt", next_attempt), ("attempts", attempts),
                              ("warned", None if warned is None else int(warned)),
                              ("last_error", last_error)):
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        if state == "requeue":
            sets.append("state = CASE state WHEN 'held' THEN 'held' ELSE 'queued' END")
        elif state is not None:
            sets.append("state = ?")
            params.append(state)
        if sets:
            statements.append((f"UPDATE schedule SET {', '.join(sets)} WHERE id = ?",
                               (*params, qid)))
        if statements:
            await self._submit(UpdateJob(qid, tuple(statements), (), self._new_future()))

    async def remove(self, qid: str) -> None:
        """Delete a message whose every recipient is final (or that an operator deleted)."""
        statements = (("DELETE FROM schedule WHERE id = ?", (qid,)),
                      ("DELETE FROM envelope WHERE id = ?", (qid,)),
                      ("DELETE FROM message WHERE id = ?", (qid,)))
        unlink = ((os.path.join(self._spool_dir, Layout.body_name(qid)),)
                  if is_valid_id(qid) else ())
        await self._submit(UpdateJob(qid, statements, unlink, self._new_future()))

    def _new_future(self) -> asyncio.Future[None]:
        if self._loop is None:
            raise SpoolError("spool is not open")
        return self._loop.create_future()

    async def _submit(self, job: UpdateJob) -> None:
        committer = self._committer
        if committer is None or self._closing:
            raise SpoolError("spool is not open")
        committer.submit(job)
        await job.future

    def due(self, before: float, limit: int) -> list[tuple[str, float]]:
        """Queued (not held) messages due before `before`, soonest first, at most `limit`."""
        rows = self._read("SELECT id, next_attempt FROM schedule WHERE state = 'queued'"
                          " AND next_attempt < ? ORDER BY next_attempt LIMIT ?",
                          (before, limit))
        return [(str(r[0]), float(r[1])) for r in rows]

    def next_due(self) -> float | None:
        """When the soonest queued message is due (an index lookup), or None when empty."""
        rows = self._read("SELECT min(next_attempt) FROM schedule WHERE state = 'queued'")
        return None if rows[0][0] is None else float(rows[0][0])

    def schedule(self, qid: str) -> Schedule | None:
        rows = self._read("SELECT state, next_attempt, attempts, warned, last_error"
                          " FROM schedule WHERE id = ?", (qid,))
        if not rows:
            return None
        state, next_attempt, attempts, warned, last_error = rows[0]
        return Schedule(str(state), float(next_attempt), int(attempts), bool(warned),
                        last_error)

    def entries(self) -> list[QueueEntry]:
        """Every message with its schedule and envelope, arrival order (for queue list)."""
        rows = self._read(
            "SELECT m.id, m.arrival, m.size, e.record, s.state, s.next_attempt, s.attempts,"
            " s.warned, s.last_error FROM message m JOIN envelope e ON e.id = m.id"
            " LEFT JOIN schedule s ON s.id = m.id ORDER BY m.seq")
        out = []
        for qid, arrival, size, record, state, next_attempt, attempts, warned, err in rows:
            try:
                envelope = Envelope.from_record(json.loads(record))
            except (ValueError, KeyError, TypeError):
                continue
            out.append(QueueEntry(str(qid), float(arrival), int(size), envelope,
                                  Schedule(str(state or "queued"), float(next_attempt or 0),
                                           int(attempts or 0), bool(warned), err)))
        return out

    # -- the read side (synchronous: admin tools, tests, or a thread of the scheduler) ----

    def ids(self) -> list[str]:
        """Committed messages in commit order."""
        return [row[0] for row in self._read("SELECT id FROM message ORDER BY seq")]

    def count(self) -> int:
        return int(self._read("SELECT count(*) FROM message")[0][0])

    def load_envelope(self, qid: str) -> Envelope:
        """Only the envelope (the scheduler keeps bodies out of memory until it sends)."""
        rows = self._read("SELECT record FROM envelope WHERE id = ?", (qid,))
        if not rows:
            raise KeyError(qid)
        try:
            return Envelope.from_record(json.loads(rows[0][0]))
        except (ValueError, KeyError, TypeError) as exc:
            raise SpoolError(f"{qid}: envelope record unreadable: {exc}") from exc

    def load_for_delivery(self, qid: str, prefetch: int = PREFETCH
                          ) -> tuple[Envelope, Schedule, bytes | None] | None:
        """The envelope, schedule and (when stored inline and at most `prefetch` bytes) the
        body of a message, in one query; None when it is gone."""
        rows = self._read(
            "SELECT e.record, s.state, s.next_attempt, s.attempts, s.warned, s.last_error,"
            " CASE WHEN m.size <= ? THEN m.body END"
            " FROM envelope e JOIN schedule s ON s.id = e.id JOIN message m ON m.id = e.id"
            " WHERE e.id = ?", (prefetch, qid))
        if not rows:
            return None
        record, state, next_attempt, attempts, warned, last_error, body = rows[0]
        try:
            envelope = Envelope.from_record(json.loads(record))
        except (ValueError, KeyError, TypeError) as exc:
            raise SpoolError(f"{qid}: envelope record unreadable: {exc}") from exc
        return (envelope, Schedule(str(state), float(next_attempt), int(attempts),
                                   bool(warned), last_error),
                None if body is None else bytes(body))

    def load_body(self, qid: str) -> bytes:
        return self.load(qid)[1]

    async def flush(self, now: float, qids: list[str] | None = None) -> int:
        """Make queued messages due at `now`: all of them, or those in `qids`. One
        transaction whatever the count; returns how many rows were due to change."""
        if qids is None:
            count = int((await asyncio.to_thread(
                self._read, "SELECT count(*) FROM schedule WHERE state = 'queued'"))[0][0])
            statements: tuple[tuple[str, tuple[object, ...]], ...] = ((
                "UPDATE schedule SET next_attempt = ? WHERE state = 'queued'", (now,)),)
        else:
            if not qids:
                return 0
            marks = ", ".join("?" for _ in qids)
            count = int((await asyncio.to_thread(
                self._read, f"SELECT count(*) FROM schedule WHERE +state = 'queued'"
                f" AND id IN ({marks})", tuple(qids)))[0][0])
            statements = ((f"UPDATE schedule SET next_attempt = ? WHERE +state = 'queued'"
                           f" AND id IN ({marks})", (now, *qids)),)
        await self._submit(UpdateJob("flush", statements, (), self._new_future()))
        return count

    def load(self, qid: str) -> tuple[Envelope, bytes]:
        """The envelope and body of a committed message; KeyError when there is none."""
        rows = self._read(
            "SELECT m.body, m.body_file, e.record FROM message m JOIN envelope e"
            " ON e.id = m.id WHERE m.id = ?", (qid,))
        if not rows:
            raise KeyError(qid)
        body, body_file, record = rows[0]
        try:
            envelope = Envelope.from_record(json.loads(record))
        except (ValueError, KeyError, TypeError) as exc:
            raise SpoolError(f"{qid}: envelope record unreadable: {exc}") from exc
        if body is not None:
            return envelope, bytes(body)
        # Derive the path from the id, never from the row: a damaged row must not make us
        # read some other file.
        if body_file != Layout.body_name(qid):
            raise SpoolError(f"{qid}: body_file {body_file!r} does not match the id")
        try:
            return envelope, self.layout.body_path(body_file).read_bytes()
        except OSError as exc:
            raise SpoolError(f"{qid}: cannot read message body: {exc}") from exc

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Run a query on this thread's read-only connection (opened once per thread: the
        scheduler reads from a small pool of worker threads on every delivery, and opening
        a connection costs more than the query). Each statement sees the latest commit."""
        local = self._readers
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        try:
            if conn is None:
                conn = connect_reader(self.layout.db)
                local.conn = conn
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            if conn is not None:
                local.conn = None
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            raise SpoolError(f"cannot read the queue: {exc}") from exc

    # -- maildrop pickup ----------------------------------------------------------------

    async def pickup(self) -> int:
        """Import every complete maildrop file; returns how many were queued."""
        picked, _rejected = await self._pickup()
        return picked

    async def _pickup(self) -> tuple[int, int]:
        async with self._pickup_lock:
            try:
                names = await asyncio.to_thread(self._scan_maildrop)
            except OSError as exc:
                raise SpoolError(f"cannot read the maildrop: {exc}") from exc
            picked = rejected = 0
            for name in names:
                outcome = await self._pickup_one(self.layout.maildrop / name)
                picked += outcome == "queued"
                rejected += outcome == "rejected"
            return picked, rejected

    def _scan_maildrop(self) -> list[str]:
        """Runs in a thread: the complete files, oldest id first; stale *.tmp removed."""
        ready = []
        now = time.time()
        with os.scandir(self.layout.maildrop) as entries:
            for entry in entries:
                if entry.name.endswith(".msg"):
                    ready.append(entry.name)
                elif entry.name.endswith(".tmp"):
                    try:
                        if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TMP_SECONDS:
                            os.unlink(entry.path)
                    except FileNotFoundError:
                        pass
        return sorted(ready)

    async def _pickup_one(self, path: Path) -> str:
        qid = path.name[:-len(".msg")]
        try:
            # O_NOFOLLOW: a symlink in the maildrop must not make us import another file.
            fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return "gone"
        except OSError as exc:
            await asyncio.to_thread(self._reject_maildrop, path, qid, f"cannot open: {exc}")
            return "rejected"
        with os.fdopen(fd, "rb") as f:
            uid = os.fstat(fd).st_uid
            try:
                if not is_valid_id(qid):
                    raise MalformedMaildrop("file name is not a queue id")
                line = await asyncio.to_thread(f.readline, MAX_RECORD + 1)
                envelope = parse_record(line)
            except (MalformedMaildrop, OSError) as exc:
                f.close()
                await asyncio.to_thread(self._reject_maildrop, path, qid, str(exc))
                return "rejected"
            try:
                stored = await asyncio.to_thread(self._stored_size, qid)
            except SpoolError as exc:
                self._log("pickup-deferred", qid=qid, file=path.name, reason=str(exc))
                return "deferred"
            body_size = os.fstat(fd).st_size - len(line)
            if stored is not None:
                if stored == body_size or (
                        self.prepare is not None and stored > body_size
                        and await asyncio.to_thread(self._same_arrival, qid, envelope)):
                    # Queued before a crash that came ahead of the unlink: just finish.
                    await asyncio.to_thread(_unlink_quietly, path)
                    return "duplicate"
                # Another message already holds this id (two processes, one microsecond).
                qid = self.new_id()
            writer = self.begin(qid)
            try:
                while chunk := await asyncio.to_thread(f.read, _PICKUP_CHUNK):
                    await writer.write(chunk)
                if self.prepare is not None:
                    await self.prepare(envelope, writer)
                await self.commit(writer, envelope)
            except Exception as exc:  # the file stays in the maildrop for the next sweep
                writer.abort()
                self._log("pickup-deferred", qid=qid, file=path.name, reason=str(exc))
                return "deferred"
        await asyncio.to_thread(_unlink_quietly, path)
        self._log("pickup", qid=qid, file=path.name, uid=uid)
        return "queued"

    def _same_arrival(self, qid: str, envelope: Envelope) -> bool:
        """Whether the stored `qid` is this maildrop message, queued with headers added
        before a crash kept the file from being removed (so the sizes differ)."""
        try:
            stored = self.load_envelope(qid)
        except (KeyError, SpoolError):
            return False
        return (stored.arrival == envelope.arrival and stored.sender == envelope.sender
                and [r.address for r in stored.recipients]
                == [r.address for r in envelope.recipients])

    def _stored_size(self, qid: str) -> int | None:
        rows = self._read("SELECT size FROM message WHERE id = ?", (qid,))
        return int(rows[0][0]) if rows else None

    def _reject_maildrop(self, path: Path, qid: str, reason: str) -> None:
        """Runs in a thread: move a malformed maildrop file aside so it is never retried."""
        target = self.layout.corrupt / path.name
        n = 0
        while target.exists():
            n += 1
            target = self.layout.corrupt / f"{path.name}.{n}"
        try:
            os.rename(path, target)
            fsync_dir(self.layout.corrupt)
        except FileNotFoundError:
            return
        except OSError:
            _unlink_quietly(path)  # it can never be imported; do not spin on it
        self._log("quarantined", qid=qid, reason=f"maildrop: {reason}", file=path.name)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A message's place in the schedule."""

    state: str  # "queued" or "held"
    next_attempt: float
    attempts: int
    warned: bool
    last_error: str | None


@dataclass(frozen=True, slots=True)
class QueueEntry:
    qid: str
    arrival: float
    size: int
    envelope: Envelope
    schedule: Schedule


def _consume(future: asyncio.Future[None]) -> None:
    """Retrieve a fire-and-forget job's exception so asyncio does not warn about it."""
    if not future.cancelled():
        future.exception()


def _envelope_json(envelope: Envelope) -> str:
    return json.dumps(envelope.to_record(), ensure_ascii=True, separators=(",", ":"),
                      allow_nan=False)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
