"""A stand-in for `albatross serve` so the benchmark can be developed before the real server.

It speaks just enough SMTP for smtp-source and bench/idle.py (EHLO/HELO, MAIL, RCPT, DATA,
RSET, NOOP, QUIT, PIPELINING), and keeps the one promise the benchmark checks: the 250 after
DATA is sent only once the message row is committed in DATA_DIR/queue.db with
synchronous=FULL. One writer thread commits whatever messages arrived since its last commit
in one transaction (group commit), as ARCHITECTURE.md plans for the real spool. It is not
Albatross and its numbers are labelled as the stand-in's; it has no policy, no limits beyond
a line length, and no delivery.

    python3 bench/standin.py serve --data-dir DIR --listen 127.0.0.1:PORT [--config FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import signal
import sqlite3
import threading
import time
from pathlib import Path

MAX_LINE = 4096


class Writer:
    """The only owner of queue.db: batches inserts and resolves each future after COMMIT."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.jobs: queue.SimpleQueue[tuple[str, str, bytes, asyncio.Future[int]] | None] = (
            queue.SimpleQueue()
        )
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("pragma journal_mode=wal")
        self.db.execute("pragma synchronous=full")
        self.db.execute(
            "create table if not exists message (id integer primary key, sender text,"
            " rcpts text, body blob, received real)"
        )
        self.thread = threading.Thread(target=self._run, name="queue-writer", daemon=True)
        self.thread.start()

    def submit(self, sender: str, rcpts: str, body: bytes) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = self.loop.create_future()
        self.jobs.put((sender, rcpts, body, fut))
        return fut

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(10)
        self.db.close()

    def _run(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            batch = [first]
            while True:
                try:
                    job = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self.jobs.put(None)
                    break
                batch.append(job)
            now = time.time()
            self.db.execute("begin")
            ids = [
                self.db.execute(
                    "insert into message (sender, rcpts, body, received) values (?, ?, ?, ?)",
                    (s, r, b, now),
                ).lastrowid
                or 0
                for s, r, b, _ in batch
            ]
            self.db.execute("commit")
            for (_, _, _, fut), row in zip(batch, ids, strict=True):
                self.loop.call_soon_threadsafe(_resolve, fut, row)


def _resolve(fut: asyncio.Future[int], value: int) -> None:
    if not fut.done():
        fut.set_result(value)


class Session(asyncio.Protocol):
    """One SMTP session: a line buffer, the envelope, and the DATA collector."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.buf = bytearray()
        self.in_data = False
        self.body = bytearray()
        self.sender: str | None = None
        self.rcpts: list[str] = []
        self.transport: asyncio.Transport | None = None
        self.pending = 0  # commits in flight: replies must stay in order (RFC 2920)
        self.queued: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"220 standin.bench ESMTP stand-in\r\n")

    def reply(self, line: bytes) -> None:
        if self.pending:
            self.queued.append(line)
        elif self.transport is not None:
            self.transport.write(line)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\n")
            if end < 0:
                if len(self.buf) > MAX_LINE and not self.in_data:
                    self.reply(b"500 line too long\r\n")
                    self.close()
                return
            line = bytes(self.buf[: end + 1])
            del self.buf[: end + 1]
            if self.in_data:
                self.data_line(line)
            else:
                self.command(line.rstrip(b"\r\n"))

    def data_line(self, line: bytes) -> None:
        if line in (b".\r\n", b".\n"):
            self.in_data = False
            body, sender, rcpts = bytes(self.body), self.sender or "", ",".join(self.rcpts)
            self.body.clear()
            self.sender, self.rcpts = None, []
            self.pending += 1
            fut = self.writer.submit(sender, rcpts, body)
            fut.add_done_callback(self.committed)
            return
        self.body += line[1:] if line.startswith(b".") else line

    def committed(self, fut: asyncio.Future[int]) -> None:
        self.pending -= 1
        out = [b"250 2.0.0 queued as %d\r\n" % fut.result()]
        while self.queued and not self.pending:
            out.append(self.queued.pop(0))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(out))
            if out[-1].startswith(b"221"):
                self.transport.close()

    def command(self, line: bytes) -> None:
        verb = line[:4].upper()
        if verb in (b"EHLO",):
            self.reply(b"250-standin.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 0\r\n")
        elif verb == b"HELO":
            self.reply(b"250 standin.bench\r\n")
        elif verb == b"MAIL":
            self.sender = line[10:].decode("utf-8", "replace").strip()
            self.rcpts = []
            self.reply(b"250 2.1.0 ok\r\n")
        elif verb == b"RCPT":
            if self.sender is None:
                self.reply(b"503 5.5.1 MAIL first\r\n")
                return
            self.rcpts.append(line[8:].decode("utf-8", "replace").strip())
            self.reply(b"250 2.1.5 ok\r\n")
        elif verb == b"DATA":
            if not self.rcpts:
                self.reply(b"503 5.5.1 RCPT first\r\n")
                return
            self.in_data = True
            self.reply(b"354 go ahead\r\n")
        elif verb == b"RSET":
            self.sender, self.rcpts = None, []
            self.reply(b"250 2.0.0 ok\r\n")
        elif verb == b"NOOP":
            self.reply(b"250 2.0.0 ok\r\n")
        elif verb == b"QUIT":
            self.reply(b"221 2.0.0 bye\r\n")
            if not self.pending:
                self.close()
        else:
            self.reply(b"500 5.5.2 unknown command\r\n")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve(data_dir: Path, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    writer = Writer(data_dir / "queue.db", loop)
    server = await loop.create_server(lambda: Session(writer), host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"stand-in listening on {host}:{port}", flush=True)
    await stop.wait()
    server.close()
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--config", type=Path, help="accepted and ignored (the stand-in has no limits)")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(args.data_dir, host, int(port)))


if __name__ == "__main__":
    main()
