"""MessageWriter: collects one message's bytes, in memory or spilled to a file in spool/tmp.

A small message stays in memory and is stored inline in its database row. Past inline_max
bytes everything is moved to a temporary file and the rest is streamed there, so a large
message is never held whole in memory. File I/O runs in a thread: the event loop must never
wait on the disk (ARCHITECTURE.md, "The event loop never blocks").
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from albatross.errors import SpoolError

# Once spilled, bytes are gathered up to this size before a thread hop writes them out.
FLUSH_AT = 128 * 1024


@dataclass(frozen=True, slots=True)
class SealedBody:
    """A finished message body handed over to the commit: inline bytes or an fsync'd file."""

    size: int
    inline: bytes | None
    tmp_path: Path | None


class MessageWriter:
    """Collects the bytes of one message until it is committed or aborted.

    Not thread-safe: one coroutine writes, in order. `abort()` may be called at any time,
    even while a write is running in a thread (the session was cancelled): the file is then
    removed as soon as that write returns.
    """

    def __init__(self, qid: str, tmp_dir: Path, inline_max: int) -> None:
        self.qid = qid
        self.size = 0
        self._tmp_dir = tmp_dir
        self._inline_max = inline_max
        self._buffer = bytearray()
        self._file: int | None = None  # fd of the spill file
        self._tmp_path: Path | None = None
        # _lock guards _busy/_aborted/_sealed between the loop and the I/O thread; it is
        # never held during I/O.
        self._lock = threading.Lock()
        self._busy = False
        self._aborted = False
        self._sealed = False
        self._failed = False
        self._prefix = b""  # header lines to put before everything written (prepend)
        self._drop = 0  # bytes at the start of what was written to leave out (replace_start)

    @property
    def spilled(self) -> bool:
        """True once the message lives in a temporary file rather than in memory."""
        return self._tmp_path is not None

    @property
    def tmp_path(self) -> Path | None:
        return self._tmp_path

    async def write(self, data: bytes) -> None:
        """Append bytes to the message; raises SpoolError if they cannot be stored."""
        self._check_writable()
        if not data:
            return
        self.size += len(data)
        self._buffer += data
        if self._tmp_path is None:
            if len(self._buffer) > self._inline_max:
                await self._io(self._spill)
        elif len(self._buffer) >= FLUSH_AT:
            chunk, self._buffer = self._buffer, bytearray()
            await self._io(self._write_all, chunk)

    def prepend(self, data: bytes) -> None:
        """Put `data` (whole header lines) before everything written so far and after: the
        Authentication-Results and DKIM-Signature headers, known only at the end of data.
        Cheap in memory; a spilled message is rewritten with it when sealed."""
        self._check_writable()
        self._prefix = data + self._prefix
        self.size += len(data)

    def replace_start(self, drop: int, insert: bytes) -> None:
        """Store `insert` instead of the first `drop` bytes written: a header block with
        fields removed (forged Authentication-Results) and ours added. Once per message,
        before any prepend; the bytes must already have been written."""
        self._check_writable()
        if self._drop or self._prefix:
            raise ValueError("replace_start must come first and only once")
        if not 0 <= drop <= self.size:
            raise ValueError(f"cannot drop {drop} of {self.size} bytes")
        self._drop = drop
        self._prefix = insert
        self.size += len(insert) - drop

    async def read(self) -> bytes:
        """The whole message as it will be stored (prefix included), for checks that need
        it at the end of data. A spilled message is read back from its file in a thread."""
        self._check_writable()
        if self._tmp_path is None:
            return self._prefix + bytes(self._buffer[self._drop:])
        chunk, self._buffer = self._buffer, bytearray()
        await self._io(self._write_all, chunk)
        out: list[bytes] = []
        await self._io(self._read_file, out)
        return self._prefix + out[0][self._drop:]

    async def seal(self) -> SealedBody:
        """Finish the body for commit; a spilled file is flushed and fsync'd (in a thread).

        After this the caller owns the temporary file; abort() no longer touches it.
        """
        self._check_writable()
        if self._tmp_path is None:
            with self._lock:
                self._sealed = True
            body = (self._prefix + bytes(self._buffer[self._drop:])
                    if self._prefix or self._drop else bytes(self._buffer))
            self._buffer = bytearray()
            return SealedBody(size=self.size, inline=body, tmp_path=None)
        chunk, self._buffer = self._buffer, bytearray()
        await self._io(self._finish, chunk)
        if self._prefix or self._drop:
            await self._io(self._rewrite_with_prefix)
        with self._lock:
            if self._aborted:  # aborted while the fsync ran: the file is gone already
                raise SpoolError(f"{self.qid}: message aborted")
            self._sealed = True
        return SealedBody(size=self.size, inline=None, tmp_path=self._tmp_path)

    def abort(self) -> None:
        """Drop the message: free the buffer, remove the temporary file. Idempotent."""
        with self._lock:
            if self._sealed or self._aborted:
                return
            self._aborted = True
            if self._busy:
                return  # the running I/O removes the file when it returns
        self._discard()

    # -- internals ----------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._aborted:
            raise SpoolError(f"{self.qid}: message aborted")
        if self._sealed:
            raise SpoolError(f"{self.qid}: message already committed")
        if self._failed:
            raise SpoolError(f"{self.qid}: an earlier write failed")

    async def _io(self, op: Callable[..., None], *args: object) -> None:
        with self._lock:
            if self._aborted:
                raise SpoolError(f"{self.qid}: message aborted")
            self._busy = True
        try:
            await asyncio.to_thread(self._guarded, op, *args)
        except OSError as exc:
            self._failed = True
            self.abort()
            raise SpoolError(f"{self.qid}: cannot write message body: {exc}") from exc

    def _guarded(self, op: Callable[..., None], *args: object) -> None:
        """Runs in a worker thread."""
        try:
            op(*args)
        finally:
            with self._lock:
                self._busy = False
                discard = self._aborted
            if discard:
                self._discard()

    def _spill(self) -> None:
        """Runs in a worker thread: create the temporary file and move the buffer into it."""
        path = self._tmp_dir / f"{self.qid}-{secrets.token_hex(4)}"
        # O_EXCL: never write into a file someone else created (or a symlink planted there).
        self._file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self._tmp_path = path
        chunk, self._buffer = self._buffer, bytearray()
        self._write_all(chunk)

    def _write_all(self, chunk: bytes | bytearray) -> None:
        assert self._file is not None
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._file, view):]

    def _finish(self, chunk: bytes | bytearray) -> None:
        """Runs in a worker thread: last bytes, fsync, close (the body is then on disk)."""
        assert self._file is not None
        self._write_all(chunk)
        os.fsync(self._file)
        fd, self._file = self._file, None
        os.close(fd)

    def _read_file(self, out: list[bytes]) -> None:
        """Runs in a worker thread: the spilled bytes written so far."""
        assert self._tmp_path is not None
        with open(self._tmp_path, "rb") as fh:
            out.append(fh.read())

    def _rewrite_with_prefix(self) -> None:
        """Runs in a worker thread: a new file holding the prefix then the old file's bytes,
        fsync'd, then put in the old one's place (rename: never a half-written body)."""
        assert self._tmp_path is not None
        old = self._tmp_path
        new = old.with_name(old.name + "p")
        fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(self._prefix)
            while view:
                view = view[os.write(fd, view):]
            with open(old, "rb") as src:
                src.seek(self._drop)
                while block := src.read(1 << 20):
                    view = memoryview(block)
                    while view:
                        view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(new)
            raise
        os.close(fd)
        os.replace(new, old)

    def _discard(self) -> None:
        self._buffer = bytearray()
        fd, self._file = self._file, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        if self._tmp_path is not None:
            try:
                os.unlink(self._tmp_path)
            except OSError:
                pass  # recovery removes leftovers in spool/tmp at the next start
