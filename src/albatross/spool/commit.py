"""The group-commit writer thread: the only code that writes the queue database.

Sessions put a CommitJob on a queue and await a future. The thread takes the first job,
then every job already waiting (up to BATCH_CAP), places the spooled bodies, writes all rows
in ONE transaction (one WAL fsync for the whole batch) and wakes every waiting session with
ONE call_soon_threadsafe. Under load the fsync cost is shared by the batch, which is how a
single disk sustains thousands of durable messages per second (ARCHITECTURE.md, "The hot
path").

Commit order for a spooled body (why a crash at any instant is safe):
  1. the body was written and fsync'd in spool/tmp by MessageWriter.seal();
  2. it is hard-linked to spool/<hh>/<id> (link, not rename: it fails if the name exists,
     so a duplicate id can never replace another message's body) and the tmp name unlinked;
  3. spool/<hh>/ is fsync'd, making the new name durable;
  4. the rows are inserted and COMMIT fsyncs the WAL;
  5. only then is the session told, and only then does it answer 250.
A crash before 4 leaves a body file without a row (deleted by recovery: the client got no
250 and will retry); after 4 everything is durable.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from albatross.errors import SpoolError
from albatross.spool.layout import Layout, fsync_dir

BATCH_CAP = 1024


@dataclass(frozen=True, slots=True)
class CommitJob:
    qid: str
    arrival: float
    size: int
    record: str  # the envelope JSON
    body: bytes | None  # inline body, or
    tmp_path: Path | None  # an fsync'd spill file to move to body_name
    body_name: str | None
    future: asyncio.Future[None]
    state: str = "queued"  # "held": not delivered until released; "active": claimed
    # Called on the loop once the message is durable, even if its session was cancelled
    # meanwhile (a claimed message must reach the scheduler that claimed it).
    stored: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class UpdateJob:
    """Changes to stored messages (schedule, envelope state, removal), committed in the same
    batches as new messages. `unlink` names body files to delete once the change is durable
    (a crash before that leaves an orphan file, which recovery removes)."""

    qid: str
    statements: tuple[tuple[str, tuple[object, ...]], ...]
    unlink: tuple[str | Path, ...]
    future: asyncio.Future[None]


Job = CommitJob | UpdateJob


@dataclass(frozen=True, slots=True)
class CommitStats:
    """Counters for tests and metrics: how well commits are being grouped."""

    batches: int
    messages: int
    largest_batch: int


_STOP = object()


def _settle(results: list[tuple[Job, BaseException | None]]) -> None:
    """Runs on the event loop: resolve every future of one batch, then hand claimed
    messages over (after their sessions are woken, so "queued" is logged before "attempt")."""
    for job, error in results:
        future = job.future
        if future.done():  # the waiting session was cancelled; the outcome stands anyway
            pass
        elif error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
        if error is None and isinstance(job, CommitJob) and job.stored is not None:
            try:
                job.stored()
            except Exception as exc:  # never leave the rest of the batch unanswered
                asyncio.get_running_loop().call_exception_handler(
                    {"message": f"{job.qid}: stored callback failed", "exception": exc})


class CommitThread:
    """Owns the write connection; commits jobs in batches. Start once, stop once."""

    def __init__(self, conn: sqlite3.Connection, layout: Layout,
                 loop: asyncio.AbstractEventLoop, batch_cap: int = BATCH_CAP) -> None:
        self._conn = conn
        self._layout = layout
        self._loop = loop
        self._batch_cap = batch_cap
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="spool-commit", daemon=True)
        self._buckets: set[Path] = set()
        self._batches = 0
        self._messages = 0
        self._largest = 0

    @property
    def stats(self) -> CommitStats:
        return CommitStats(self._batches, self._messages, self._largest)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    def stop(self) -> None:
        """Ask the thread to finish the jobs already queued, close the database and exit."""
        self._queue.put(_STOP)

    def join(self) -> None:
        self._thread.join()

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            stopping = False
            while not stopping:
                item = self._queue.get()
                if item is _STOP:
                    self._refuse_rest()
                    break
                assert isinstance(item, CommitJob | UpdateJob)
                batch: list[Job] = [item]
                while len(batch) < self._batch_cap:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stopping = True
                        self._refuse_rest()
                        break
                    assert isinstance(item, CommitJob | UpdateJob)
                    batch.append(item)
                try:
                    errors = self._commit_batch(batch)
                except BaseException as exc:  # a bug here must fail the batch, not hang it
                    errors = {i: SpoolError(f"commit failed: {exc!r}")
                              for i in range(len(batch))}
                self._batches += 1
                self._messages += len(batch)
                self._largest = max(self._largest, len(batch))
                results: list[tuple[Job, BaseException | None]] = [
                    (job, errors.get(i)) for i, job in enumerate(batch)]
                try:
                    self._loop.call_soon_threadsafe(_settle, results)
                except RuntimeError:
                    pass  # the loop is closed: nobody is waiting any more
        finally:
            self._conn.close()

    def _refuse_rest(self) -> None:
        """Jobs that arrived after the stop marker get an answer, never silence."""
        refused: list[tuple[Job, BaseException | None]] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, CommitJob | UpdateJob):
                refused.append((item, SpoolError("spool is closing")))
        if refused:
            try:
                self._loop.call_soon_threadsafe(_settle, refused)
            except RuntimeError:
                pass

    def _commit_batch(self, batch: list[Job]) -> dict[int, SpoolError]:
        """Store a batch; return the jobs that failed (index -> error)."""
        errors: dict[int, SpoolError] = {}
        placed: dict[int, Path] = {}
        for i, job in enumerate(batch):
            if (not isinstance(job, CommitJob) or job.tmp_path is None
                    or job.body_name is None):
                continue
            final = self._layout.body_path(job.body_name)
            try:
                self._ensure_bucket(final.parent)
                os.link(job.tmp_path, final)
                placed[i] = final
            except FileExistsError:
                errors[i] = SpoolError(f"{job.qid}: queue id already in use")
            except OSError as exc:
                self._buckets.discard(final.parent)  # look again next time
                errors[i] = SpoolError(f"{job.qid}: cannot place message body: {exc}")
            try:
                os.unlink(job.tmp_path)
            except OSError:
                pass  # a leftover in spool/tmp is removed by recovery

        for directory in {path.parent for path in placed.values()}:
            try:
                fsync_dir(directory)
            except OSError as exc:
                for i, path in placed.items():
                    if path.parent == directory:
                        errors[i] = SpoolError(f"{batch[i].qid}: cannot fsync {directory}: {exc}")

        live = [i for i in range(len(batch)) if i not in errors]
        if live:
            self._insert_rows(batch, live, errors)

        for i in errors:
            mine = placed.get(i)
            if mine is not None:
                try:
                    os.unlink(mine)
                except OSError:
                    pass  # an orphan body is removed by recovery
        for i in live:
            job = batch[i]
            if isinstance(job, UpdateJob) and i not in errors:
                for gone in job.unlink:
                    try:
                        os.unlink(gone)
                    except OSError:
                        pass  # an orphan body is removed by recovery
        return errors

    def _insert_rows(self, batch: list[Job], live: list[int],
                     errors: dict[int, SpoolError]) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN")
            for i in live:
                job = batch[i]
                if isinstance(job, UpdateJob):
                    # A savepoint per job: one bad update fails alone, never its batch.
                    conn.execute("SAVEPOINT job")
                    try:
                        for sql, params in job.statements:
                            conn.execute(sql, params)
                    except sqlite3.Error as exc:
                        conn.execute("ROLLBACK TO job")
                        errors[i] = SpoolError(f"{job.qid}: cannot update: {exc}")
                    conn.execute("RELEASE job")
                    continue
                try:
                    conn.execute(
                        "INSERT INTO message (id, arrival, size, body, body_file)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (job.qid, job.arrival, job.size, job.body,
                         job.body_name if job.body is None else None))
                except sqlite3.IntegrityError:
                    # Only this job fails: a statement error leaves the transaction open.
                    errors[i] = SpoolError(f"{job.qid}: queue id already in use")
                    continue
                try:
                    conn.execute("INSERT INTO envelope (id, record) VALUES (?, ?)",
                                 (job.qid, job.record))
                except sqlite3.IntegrityError:
                    conn.execute("DELETE FROM message WHERE id = ?", (job.qid,))
                    errors[i] = SpoolError(f"{job.qid}: envelope id already in use")
                    continue
                # A stray schedule row (a hand edit) must fail this job alone.
                conn.execute("INSERT OR REPLACE INTO schedule (id, next_attempt, state)"
                             " VALUES (?, ?, ?)", (job.qid, job.arrival, job.state))
            conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite already rolled back (for example after SQLITE_FULL)
            for i in live:
                errors.setdefault(i, SpoolError(f"{batch[i].qid}: cannot commit: {exc}"))

    def _ensure_bucket(self, directory: Path) -> None:
        if directory in self._buckets:
            return
        if not directory.is_dir():
            directory.mkdir(exist_ok=True)
            fsync_dir(directory.parent)  # the new folder's own name must be durable too
        self._buckets.add(directory)
