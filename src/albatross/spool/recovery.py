"""Recovery at start: bring the spool back to a consistent state whatever a crash left.

Rules (docs/spool-format.md has the reasoning):
- files in spool/tmp were never committed: delete them;
- a body file without a message row was never committed: delete it;
- a row that cannot be delivered (body file missing, envelope unreadable, malformed id) is
  moved to spool/corrupt for a human, its rows deleted, and start-up continues;
- a queue.db that is not a database is renamed aside and a fresh one started.
Nothing here may raise for bad data: a spool that cannot start is a crash loop, and a crash
loop delays every message in it.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from albatross.model import Envelope
from albatross.spool.ids import is_valid_id
from albatross.spool.layout import Layout, fsync_dir, is_bucket_name, write_file_durably
from albatross.spool.schema import connect_writer, ensure_schema

LogFn = Callable[..., None]

# SQLite's primary result codes for "this is not a database" and "the image is damaged".
_BROKEN_DB_CODES = (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What open() found and did."""

    tmp_removed: int = 0  # uncommitted bodies deleted from spool/tmp
    orphans_removed: int = 0  # body files with no row (a commit that never happened)
    quarantined: int = 0  # rows moved to spool/corrupt
    database_replaced: bool = False  # queue.db was not a database and was set aside
    messages: int = 0  # committed messages in the queue after recovery and pickup
    picked_up: int = 0  # maildrop files imported
    maildrop_rejected: int = 0  # malformed maildrop files moved to spool/corrupt


def recover(layout: Layout, log: LogFn) -> tuple[sqlite3.Connection, RecoveryReport]:
    """Runs in a thread before the writer starts; returns the write connection."""
    for directory in layout.directories():
        directory.mkdir(parents=True, exist_ok=True)
    fsync_dir(layout.data_dir)
    fsync_dir(layout.spool)
    conn, replaced = _open_database(layout, log)
    try:
        tmp_removed = _clear_tmp(layout)
        orphans, quarantined = _check_rows(conn, layout, log)
        _check_schedule(conn)
        messages = int(conn.execute("SELECT count(*) FROM message").fetchone()[0])
    except BaseException:
        conn.close()
        raise
    return conn, RecoveryReport(tmp_removed=tmp_removed, orphans_removed=orphans,
                                quarantined=quarantined, database_replaced=replaced,
                                messages=messages)


def _open_database(layout: Layout, log: LogFn) -> tuple[sqlite3.Connection, bool]:
    try:
        return _open_checked(layout.db), False
    except sqlite3.DatabaseError as exc:
        if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) not in _BROKEN_DB_CODES:
            raise
        reason = str(exc)
    # Keep the damaged file (and its WAL) for a human or a salvage tool; never delete it.
    aside = f"queue.db.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9}"
    for suffix in ("", "-wal", "-shm"):
        source = layout.data_dir / f"queue.db{suffix}"
        if source.exists():
            os.rename(source, layout.data_dir / f"{aside}{suffix}")
    fsync_dir(layout.data_dir)
    log("quarantined", qid=None, reason=f"queue.db is not a usable database: {reason}",
        file=aside)
    return _open_checked(layout.db), True


def _open_checked(path: Path) -> sqlite3.Connection:
    conn = connect_writer(path)
    try:
        ensure_schema(conn)
        conn.execute("SELECT count(*) FROM message").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn


def _clear_tmp(layout: Layout) -> int:
    removed = 0
    with os.scandir(layout.tmp) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            removed += 1
    return removed


def _body_files(layout: Layout) -> set[str]:
    """Every file in the hashed body folders, as the body_file column names them."""
    found: set[str] = set()
    with os.scandir(layout.spool) as buckets:
        for bucket in buckets:
            if not (bucket.is_dir(follow_symlinks=False) and is_bucket_name(bucket.name)):
                continue
            with os.scandir(bucket.path) as files:
                found.update(f"{bucket.name}/{f.name}" for f in files)
    return found


def _row_problem(qid: str, body_file: str | None, has_inline: bool, record: bytes | None,
                 files: set[str]) -> str | None:
    """Why a row cannot be delivered, or None when it is sound."""
    if not is_valid_id(qid):
        return "malformed queue id"
    if record is None:
        return "envelope row missing"
    if body_file is not None:
        if body_file != Layout.body_name(qid):
            return f"body_file {body_file!r} is not where {qid} belongs"
        if body_file not in files:
            return "body file missing"
    elif not has_inline:
        return "no body"
    try:
        parsed = json.loads(record)
        if not isinstance(parsed, dict):
            raise ValueError("not a JSON object")
        Envelope.from_record(parsed)
    except Exception as exc:  # anything from_record can raise means the same: unreadable
        return f"envelope record unreadable: {exc!r}"[:300]
    return None


@dataclass(frozen=True, slots=True)
class _BadRow:
    """A message to move aside, addressed by rowid: its id itself may be garbage."""

    qid: str
    reason: str
    message_seq: int | None
    envelope_rowid: int | None
    body_file: str | None
    record: bytes | None


def _lenient_text(raw: bytes) -> str:
    # A damaged TEXT value must not make the very query that looks for damage fail.
    return raw.decode("utf-8", "surrogateescape")


def _check_rows(conn: sqlite3.Connection, layout: Layout, log: LogFn) -> tuple[int, int]:
    files = _body_files(layout)
    referenced: set[str] = set()
    bad: list[_BadRow] = []
    conn.text_factory = _lenient_text
    try:
        rows = conn.execute(
            "SELECT m.seq, m.id, m.body_file, m.body IS NOT NULL, e.rowid,"
            " CAST(e.record AS BLOB) FROM message m LEFT JOIN envelope e ON e.id = m.id")
        for seq, qid, body_file, has_inline, env_rowid, record in rows:
            qid = str(qid)
            if body_file is not None:
                body_file = str(body_file)
                referenced.add(body_file)
            problem = _row_problem(qid, body_file, bool(has_inline), record, files)
            if problem is not None:
                bad.append(_BadRow(qid, problem, seq, env_rowid, body_file, record))
        for env_rowid, qid, record in conn.execute(
                "SELECT rowid, id, CAST(record AS BLOB) FROM envelope"
                " WHERE id NOT IN (SELECT id FROM message)").fetchall():
            bad.append(_BadRow(str(qid), "envelope without a message", None, env_rowid, None,
                               record))
    finally:
        conn.text_factory = str

    # Quarantine first: it moves a referenced body file out of the way.
    for item in bad:
        _quarantine(conn, layout, item, log)

    orphans = 0
    for name in files - referenced:
        try:
            os.unlink(layout.body_path(name))
            orphans += 1
        except FileNotFoundError:
            pass
    return orphans, len(bad)


def _corrupt_base(layout: Layout, qid: str) -> str:
    """A file name stem in spool/corrupt that is safe whatever the id holds, and unused."""
    safe = "".join(c if c.isascii() and c.isalnum() else "_" for c in qid)[:64] or "unnamed"
    base, n = safe, 0
    while any(layout.corrupt.glob(f"{base}.*")):
        n += 1
        base = f"{safe}-{n}"
    return base


def _quarantine(conn: sqlite3.Connection, layout: Layout, item: _BadRow, log: LogFn) -> None:
    """Write whatever exists of a message into spool/corrupt, then delete its rows."""
    base = _corrupt_base(layout, item.qid)
    reason = f"{item.qid!r}: {item.reason}\n".encode("utf-8", "backslashreplace")
    write_file_durably(layout.corrupt / f"{base}.reason", reason)
    if item.record is not None:
        write_file_durably(layout.corrupt / f"{base}.envelope", bytes(item.record))
    if item.message_seq is not None:
        row = conn.execute("SELECT body FROM message WHERE seq = ?",
                           (item.message_seq,)).fetchone()
        if row is not None and row[0] is not None:
            write_file_durably(layout.corrupt / f"{base}.body", bytes(row[0]))
        elif item.body_file is not None and item.body_file == _expected_body(item.qid):
            path = layout.body_path(item.body_file)
            if path.is_file():
                os.rename(path, layout.corrupt / f"{base}.body")
    fsync_dir(layout.corrupt)
    conn.execute("BEGIN")
    if item.message_seq is not None:
        conn.execute("DELETE FROM schedule WHERE id = (SELECT id FROM message WHERE seq = ?)",
                     (item.message_seq,))
    if item.envelope_rowid is not None:
        conn.execute("DELETE FROM envelope WHERE rowid = ?", (item.envelope_rowid,))
    if item.message_seq is not None:
        conn.execute("DELETE FROM message WHERE seq = ?", (item.message_seq,))
    conn.execute("COMMIT")
    log("quarantined", qid=item.qid, reason=item.reason)


def _check_schedule(conn: sqlite3.Connection) -> None:
    """Every message has exactly one schedule row: a message without one (a bug, or a hand
    edit) becomes due now rather than stranded; a row without a message is dropped; a
    message claimed by a delivery that a stop or crash cut short is due again."""
    conn.execute("BEGIN")
    conn.execute("DELETE FROM schedule WHERE id NOT IN (SELECT id FROM message)")
    # Nothing is being delivered at start: what was active when we stopped is due again.
    conn.execute("UPDATE schedule SET state = 'queued' WHERE state = 'active'")
    conn.execute("INSERT INTO schedule (id, next_attempt) SELECT id, arrival FROM message"
                 " WHERE id NOT IN (SELECT id FROM schedule)")
    conn.execute("COMMIT")


def _expected_body(qid: str) -> str | None:
    """Where the body of a well-formed id lives; None for an id we would not trust in a path."""
    return Layout.body_name(qid) if is_valid_id(qid) else None
