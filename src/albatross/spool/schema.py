"""The queue database format: tables, version and connection settings.

Format version 2 (PRAGMA user_version = 2; version 1 is upgraded in place on open):

- `message` is written once and never updated: the immutable half. `seq` keeps commit
  order stable across VACUUM; `body` holds the message when it is at most inline_max
  bytes, `body_file` names its spool file otherwise (exactly one of the two is set).
- `envelope` is the mutable half: the JSON of Envelope.to_record(). It lives in its own
  table so that per-recipient state updates rewrite a few hundred bytes, never the body.
- `schedule` (version 2) is the scheduler's view: when each message is next due, whether it
  is held, how many attempts it had and whether a delay warning went out. The index on
  (state, next_attempt) makes "what is due next" an O(log n) lookup however large the queue.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

FORMAT_VERSION = 2

_DDL = (
    """
    CREATE TABLE message (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        arrival REAL NOT NULL,
        size INTEGER NOT NULL,
        body BLOB,
        body_file TEXT,
        CHECK ((body IS NULL) <> (body_file IS NULL))
    )
    """,
    """
    CREATE TABLE envelope (
        id TEXT PRIMARY KEY REFERENCES message(id),
        record TEXT NOT NULL
    )
    """,
)

# Version 2: the schedule. Applied to fresh databases and as the upgrade from version 1.
_DDL_V2 = (
    """
    CREATE TABLE schedule (
        id TEXT PRIMARY KEY REFERENCES message(id),
        state TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'held', 'active')),
        next_attempt REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        warned INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    )
    """,
    "CREATE INDEX schedule_due ON schedule (state, next_attempt)",
    "INSERT INTO schedule (id, next_attempt) SELECT id, arrival FROM message",
)


class NewerFormat(Exception):
    """queue.db was written by a newer Albatross; we must not touch it."""


def connect_writer(path: Path) -> sqlite3.Connection:
    """The one read-write connection: WAL, and synchronous=FULL so COMMIT fsyncs the WAL.

    In WAL mode synchronous=NORMAL may lose the last transactions on power failure; a 250
    reply must never be lost, so FULL (ARCHITECTURE.md, "Durability").
    check_same_thread=False because recovery opens it and the writer thread then owns it;
    only one thread uses it at any time.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        conn.execute("PRAGMA journal_mode=WAL").fetchone()
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the tables in a fresh database; refuse a database from a newer version."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > FORMAT_VERSION:
        raise NewerFormat(f"queue.db has format version {version}; this Albatross reads "
                          f"version {FORMAT_VERSION} at most")
    if version == FORMAT_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if version < 1:
            for statement in _DDL:
                conn.execute(statement)
        if version < 2:
            for statement in _DDL_V2:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def connect_reader(path: Path) -> sqlite3.Connection:
    """A short-lived read-only connection for the read side; WAL lets it run beside the writer."""
    return sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30)
