"""The Maildir courier: local delivery into one Maildir per mailbox under the data dir.

Written the Maildir way (tmp, fsync, rename into new, fsync the directory), so a reader
never sees a partial message and a crash never leaves a half-delivered one in new/.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from albatross.delivery import Delivery
from albatross.model import Outcome, Reply

_counter = itertools.count()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _clean(value: str) -> str:
    """Header-safe text: no CR, LF or NUL from the envelope can start a new header."""
    return "".join(" " if ch in "\r\n\0" else ch for ch in value)


class MaildirCourier:
    """Delivers each recipient to `root/<mailbox>/Maildir/new/`.

    `mailbox(address)` names the mailbox (None: no such user, a permanent 5.1.1).
    """

    def __init__(self, root: Path, mailbox: Callable[[str], str | None],
                 hostname: str | None = None) -> None:
        self.root = Path(root)
        self.mailbox = mailbox
        self.hostname = (hostname or socket.gethostname()).replace("/", "_").replace(":", "_")

    async def deliver(self, delivery: Delivery) -> list[Outcome]:
        return await asyncio.to_thread(self._deliver_all, delivery)

    def _deliver_all(self, delivery: Delivery) -> list[Outcome]:
        out = []
        for r in delivery.recipients:
            name = self.mailbox(r.address)
            if name is None:
                out.append(Outcome(r.address, "bounced",
                                   Reply(550, "5.1.1", f"no mailbox here for {r.address}"),
                                   "local"))
                continue
            try:
                path = self._write(name, r.address, delivery)
            except OSError as exc:
                reply = Reply(451, "4.2.0" if exc.errno != 28 else "4.3.1",
                              f"cannot write to mailbox {name}: {exc.strerror or exc}")
                out.append(Outcome(r.address, "deferred", reply, "local"))
                continue
            out.append(Outcome(r.address, "delivered",
                               Reply(250, "2.0.0", f"delivered to maildir {name} as "
                                     f"{path.name}"), "ok", remote_host="localhost"))
        return out

    def _write(self, name: str, address: str, delivery: Delivery) -> Path:
        box = self.root / name / "Maildir"
        for sub in ("tmp", "new", "cur"):
            (box / sub).mkdir(parents=True, exist_ok=True)
        unique = (f"{time.time_ns() // 1000}.P{os.getpid()}Q{next(_counter)}."
                  f"{self.hostname}")
        tmp = box / "tmp" / unique
        sender = _clean(delivery.envelope.sender)
        head = (f"Return-Path: <{sender}>\r\nDelivered-To: {_clean(address)}\r\n"
                ).encode("utf-8", "surrogateescape")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(head)
                f.write(delivery.body)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        final = box / "new" / unique
        os.rename(tmp, final)
        _fsync_dir(box / "new")
        return final
