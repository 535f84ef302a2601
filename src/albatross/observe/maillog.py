"""The mail log: one JSON object per line from a fixed event vocabulary, read back by tools.

Every line is `{"ts": ..., "event": ..., "qid"/"session" first when present, then fields}`.
Events outside EVENTS are a programming error (ValueError), so that every line an operator
greps for is documented in docs/mail-log.md and asserted on by tests.

Writing runs several times per message on the hot path, so a line is formatted once with a
pre-built JSON encoder and appended to an in-memory batch; the batch reaches the file in one
append-mode write() when flush() is called (the daemon does so on a timer and at shutdown)
or when it grows past FLUSH_BYTES. No logging-module machinery runs per event.
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TextIO

EVENTS: frozenset[str] = frozenset({
    # daemon lifecycle
    "starting", "listening", "stopping", "reload",
    # SMTP sessions
    "connect", "helo", "tls", "auth", "reject", "queued", "disconnect",
    # the local submission path and the spool
    "pickup", "pickup-deferred", "spool-recovered", "quarantined",
    # a message moved out of a shard no worker owns any more (spool/shards.py)
    "moved",
    # delivery
    "attempt", "delivered", "deferred", "bounced", "expired", "dsn-sent", "deleted",
    # anything that went wrong and is not one of the above
    "error",
})

# Events that always concern one stored message: a line without its queue id could not be
# tied to the message it describes, which is the whole point of the log.
QID_REQUIRED: frozenset[str] = frozenset({
    "queued", "pickup", "quarantined", "moved", "attempt", "delivered", "deferred", "bounced",
    "expired", "dsn-sent", "deleted",
})

# The pseudo-event read() reports for a line that is not a JSON object with an event.
UNPARSABLE = "unparsable"

FLUSH_BYTES = 64 * 1024
# While the file cannot be written (disk full, directory gone) lines are kept up to this
# much, then dropped and counted, so a broken disk cannot exhaust the daemon's memory.
RETAIN_BYTES = 8 << 20

_READ_CHUNK = 64 * 1024
# A "line" longer than this is not one of ours (a crash can leave blocks of NULs behind);
# the reader reports it and skips to the next newline instead of buffering it whole.
MAX_LINE_BYTES = 1 << 20
_SHOW_BYTES = 200

_ADDRESS_FIELDS = frozenset({"from", "to", "rcpt", "sender", "recipient", "recipients"})


def _json_default(value: object) -> object:
    """Encode what json does not know: bytes as text (undecodable bytes escaped), sets as
    lists, anything else by str()."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


# ensure_ascii: every byte of a line is ASCII, so a CR, LF, NUL, U+2028 or a lone surrogate
# from the wire is always written as an escape and can never start a new line or make the
# line unencodable (ARCHITECTURE.md, "Nothing from the wire reaches a record unescaped").
_encode = json.JSONEncoder(ensure_ascii=True, default=_json_default).encode


class MailLog:
    """Buffered writer of mail-log lines. Thread-safe; cheap enough to call per event.

    `path` None keeps no file (only `echo`, if given). `echo` receives each event rendered
    for humans as it happens (the daemon's --verbose). `clock` is injectable for tests.
    After close(), a further event reopens the file on the next flush.
    """

    def __init__(self, path: Path | None, *, echo: TextIO | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path) if path is not None else None
        self._echo = echo
        self._clock = clock
        self._lock = threading.Lock()
        self._buf: list[str] = []
        self._size = 0
        self._fd: int | None = None
        self._ident: tuple[int, int] = (0, 0)
        self._ts_sec = -1
        self._ts_prefix = ""
        self._failure: str | None = None
        self._dropped = 0
        if self.path is not None:
            # Open now so that an unwritable log stops the daemon at start, with the path in
            # the error, rather than losing lines silently later.
            self._reopen()

    def __enter__(self) -> MailLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def event(self, event: str, /, **fields: object) -> None:
        """Record one event. A field name ending in "_" loses it (`from_=` logs "from")."""
        if event not in EVENTS:
            raise ValueError(f"unknown mail log event {event!r}")
        if event in QID_REQUIRED and "qid" not in fields:
            raise ValueError(f"mail log event {event!r} needs a qid")
        if "ts" in fields or "event" in fields:
            raise ValueError("mail log fields may not be named 'ts' or 'event'")
        record: dict[str, object] = {"ts": "", "event": event}
        if "qid" in fields:  # qid and session come first in every line
            record["qid"] = fields.pop("qid")
        if "session" in fields:
            record["session"] = fields.pop("session")
        for key, value in fields.items():
            if key[-1:] == "_":
                key = key[:-1]
            record[key] = value
        with self._lock:
            record["ts"] = self._timestamp(self._clock())
            line = _encode(record) + "\n"
            if self.path is not None:
                self._buf.append(line)
                self._size += len(line)
                if self._size >= FLUSH_BYTES:
                    self._flush_locked()
        if self._echo is not None:
            try:
                # Render what was written, not the live objects, so the echo and
                # `albatross log` show the same thing.
                self._echo.write(render(json.loads(line)) + "\n")
            except (OSError, ValueError):
                pass  # a closed stderr must not take the mail path down with it

    def flush(self) -> None:
        """Write the batch to the file in one write() (O_APPEND keeps concurrent batches whole)."""
        with self._lock:
            self._flush_locked()

    def close(self) -> None:
        with self._lock:
            self._flush_locked()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _timestamp(self, now: float) -> str:
        # strftime costs more than the rest of a line; it runs once per second, not per event.
        sec = int(now)
        if sec != self._ts_sec:
            self._ts_sec = sec
            self._ts_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._ts_prefix}.{int((now - sec) * 1_000_000):06d}Z"

    def _reopen(self) -> int:
        assert self.path is not None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        st = os.fstat(fd)
        self._fd, self._ident = fd, (st.st_dev, st.st_ino)
        return fd

    def _current_fd(self) -> int:
        """Our descriptor, reopened when the path now names another file or none.

        That is how log rotation works without copytruncate or a signal: `mv mail.log
        mail.log.1` and the next flush starts a fresh mail.log.
        """
        assert self.path is not None
        if self._fd is not None:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                return self._reopen()
            if (st.st_dev, st.st_ino) == self._ident:
                return self._fd
        return self._reopen()

    def _flush_locked(self) -> None:
        if not self._buf or self.path is None:
            return
        if self._failure is not None and self._dropped:
            self._buf.insert(0, self._failure_line())
        data = "".join(self._buf).encode("ascii")
        try:
            fd = self._current_fd()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            if self._failure is not None and self._dropped:
                self._buf.pop(0)
            self._write_failed(exc)
            return
        self._buf.clear()
        self._size = 0
        self._failure = None
        self._dropped = 0

    def _write_failed(self, exc: OSError) -> None:
        if self._failure is None:
            # Once per outage: stderr is where the operator looks when the log itself fails.
            try:
                sys.stderr.write(f"albatross: cannot write the mail log {self.path}: {exc}\n")
            except (OSError, ValueError):
                pass
        self._failure = str(exc)
        if self._size > RETAIN_BYTES:
            self._dropped += len(self._buf)
            self._buf.clear()
            self._size = 0

    def _failure_line(self) -> str:
        record = {"ts": self._timestamp(self._clock()), "event": "error",
                  "what": "mail log write failed", "error": self._failure,
                  "dropped": self._dropped}
        return _encode(record) + "\n"


# --- rendering for humans -------------------------------------------------------------

def _escape_char(ch: str) -> str:
    if ch in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


_SIMPLE_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _token(text: str) -> str:
    """`text` as one shell-like token: bare when plain, else quoted with escapes.

    Non-printable characters are escaped because render() output goes to a terminal, and
    an escape sequence from the wire must not be able to rewrite what the operator sees.
    """
    if text and all(ch.isprintable() and not ch.isspace() and ch not in '"\\' for ch in text):
        return text
    return '"' + "".join(
        ch if ch.isprintable() and ch not in '"\\' and (ch == " " or not ch.isspace())
        else _escape_char(ch) for ch in text) + '"'


def _value(key: str, value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(_value(key, item) for item in value) or '""'
    if isinstance(value, dict):
        return "{" + ",".join(f"{_token(str(k))}:{_value(str(k), v)}"
                              for k, v in value.items()) + "}"
    if key in _ADDRESS_FIELDS and isinstance(value, str):
        return _token(f"<{value}>")
    return _token(str(value))


def render(record: Mapping[str, object]) -> str:
    """One human line: `2026-11-28 07:31:02 A1B2C3 queued from=<a@x> to=<b@y> size=5120`.

    The time is UTC, as written. The id is the queue id when present, else the session id.
    """
    ts = record.get("ts")
    date, _, clock = ts[:19].partition("T") if isinstance(ts, str) else ("", "", "")
    # Always two columns ("- -" without a time): the event stays in the fourth for awk.
    when = f"{_token(date) if date else '-'} {_token(clock) if clock else '-'}"
    qid, session = record.get("qid"), record.get("session")
    ident_key = "qid" if qid not in (None, "") else "session" if session not in (None, "") \
        else None
    ident = _token(str(record[ident_key])) if ident_key else "-"
    parts = [when, ident, _token(str(record.get("event", "-")))]
    for key, value in record.items():
        if key in ("ts", "event") or key == ident_key:
            continue
        parts.append(f"{_token(key)}={_value(key, value)}")
    return " ".join(parts)


# --- reading --------------------------------------------------------------------------

def _parse(line: bytes) -> dict[str, object]:
    try:
        record = json.loads(line)
    except ValueError:  # includes UnicodeDecodeError
        record = None
    if isinstance(record, dict) and isinstance(record.get("event"), str):
        return record
    return _unparsable(line)


def _unparsable(line: bytes) -> dict[str, object]:
    text = line[:_SHOW_BYTES].decode("utf-8", "backslashreplace")
    if len(line) > _SHOW_BYTES:
        text += f"... ({len(line)} bytes)"
    return {"ts": "", "event": UNPARSABLE, "line": text}


def _file_state(path: Path, fh: io.FileIO) -> str:
    """How `path` relates to the open file: same, gone, replaced (rotated) or truncated."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "gone"
    mine = os.fstat(fh.fileno())
    if (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino):
        return "replaced"
    if mine.st_size < fh.tell():
        return "truncated"
    return "same"


def read(path: Path, *, follow: bool = False, poll_interval: float = 0.25,
         on_idle: Callable[[], None] | None = None) -> Iterator[dict[str, object]]:
    """The records of a mail log, oldest first; corrupt lines come back as "unparsable".

    With `follow`, keeps waiting for new lines like `tail -F`: it survives the file being
    rotated (renamed and recreated: the rest of the old file is read, then the new one from
    its start) or truncated in place (copytruncate), and waits while the path is missing.
    `on_idle`, when following, is called each time the reader has caught up with the file
    and is about to wait (`albatross log -n 10 -f` prints its backlog then).
    The file is opened before this returns, so a missing log raises FileNotFoundError here.
    """
    path = Path(path)
    fh = open(path, "rb", buffering=0)  # noqa: SIM115 - the generator below owns and closes it
    return _records(path, fh, follow, poll_interval, on_idle)


class _Lines:
    """Splits chunks into lines, bounding how much of one line it keeps."""

    def __init__(self) -> None:
        self.pending = b""
        self.skipping = False

    def feed(self, chunk: bytes) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        data = self.pending + chunk
        start = 0
        while (nl := data.find(b"\n", start)) >= 0:
            line, start = data[start:nl], nl + 1
            if self.skipping:  # the tail of an oversized line, already reported
                self.skipping = False
            elif line.strip():
                out.append(_parse(line))
        self.pending = data[start:]
        if len(self.pending) > MAX_LINE_BYTES:
            if not self.skipping:
                out.append(_unparsable(self.pending))
                self.skipping = True
            self.pending = b""
        return out

    def finish(self) -> list[dict[str, object]]:
        """The last line of a file that will not grow any more, newline or not."""
        line, self.pending = self.pending, b""
        skipping, self.skipping = self.skipping, False
        return [_parse(line)] if line.strip() and not skipping else []


def _records(path: Path, fh: io.FileIO, follow: bool, poll_interval: float,
             on_idle: Callable[[], None] | None) -> Iterator[dict[str, object]]:
    lines = _Lines()
    try:
        while True:
            chunk = fh.read(_READ_CHUNK)
            if chunk:
                yield from lines.feed(chunk)
                continue
            if not follow:
                yield from lines.finish()
                return
            state = _file_state(path, fh)
            if state == "replaced":
                try:
                    new = open(path, "rb", buffering=0)  # noqa: SIM115
                except FileNotFoundError:
                    time.sleep(poll_interval)
                    continue
                # A writer may have appended to the old file between our last read and the
                # rename; read it to its end before moving on.
                while rest := fh.read(_READ_CHUNK):
                    yield from lines.feed(rest)
                yield from lines.finish()
                fh.close()
                fh = new
                continue
            if state == "truncated":
                fh.seek(0)
                lines = _Lines()
                continue
            # A partial last line is left pending: the writer is probably mid-write.
            if on_idle is not None:
                on_idle()
            time.sleep(poll_interval)
    finally:
        fh.close()
