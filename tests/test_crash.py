"""Crash test: kill -9 the daemon under load; every message that got 250 survives.

The load goes to a local mailbox, so by the time of the kill some messages were already
delivered (and removed from the queue): an acknowledged message must be in the queue,
intact and once, or in the mailbox. A delivery cut short by the kill may be repeated after
the restart (at worst a duplicate, ARCHITECTURE.md), never dropped.
"""

from __future__ import annotations

import hashlib
import os
import signal
import smtplib
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import make_daemon

pytestmark = pytest.mark.slow


def body_for(worker: int, n: int) -> tuple[str, bytes]:
    token = f"w{worker}-m{n}"
    text = (f"Subject: crash test {token}\r\nX-Token: {token}\r\n\r\n"
            + ("line of text for the crash test\r\n" * (20 + n % 50)))
    # Every few messages is large enough to be spooled to a file, not stored inline.
    if n % 7 == 0:
        text += "x" * 998 + "\r\n" * 1
        text += ("y" * 900 + "\r\n") * 400
    return token, text.encode()


@pytest.mark.parametrize("round_", range(2))
def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path: Path, round_: int) -> None:
    d = make_daemon(tmp_path, deliver=True)
    d.start()
    acked: dict[str, tuple[str, bytes]] = {}  # qid -> (token, body)
    lock = threading.Lock()
    stop = threading.Event()

    def worker(w: int) -> None:
        n = 0
        while not stop.is_set():
            try:
                with smtplib.SMTP(d.host, d.port, timeout=5) as s:
                    s.ehlo("crash.example")
                    while not stop.is_set():
                        n += 1
                        token, body = body_for(w, n)
                        s.mail("load@example.org")
                        s.rcpt("sink@localhost")
                        code, resp = s.data(body)
                        if code == 250:
                            qid = resp.decode().rsplit(" ", 1)[-1]
                            with lock:
                                acked[qid] = (token, body)
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(12)]
    for t in threads:
        t.start()
    time.sleep(2.5)
    assert d.proc is not None
    os.killpg(d.proc.pid, signal.SIGKILL)
    d.proc.wait()
    stop.set()
    for t in threads:
        t.join(10)
    with lock:
        snapshot = dict(acked)
    assert len(snapshot) > 50, "the load did not get going before the kill"

    # Look before the restart: a restarted daemon would go on delivering.
    from albatross.spool import Spool

    spool = Spool(d.data_dir)
    queued: dict[str, bytes] = {}
    by_token: dict[str, int] = {}
    # Reading the queue of a killed daemon: WAL replay happens on the first read.
    for qid in spool.ids():
        _env, message = spool.load(qid)
        queued[qid] = message
        token = token_of(message)
        by_token[token] = by_token.get(token, 0) + 1
    delivered: dict[str, bytes] = {}
    new = d.data_dir / "mail" / "postmaster" / "Maildir" / "new"
    for path in new.iterdir() if new.exists() else []:
        message = path.read_bytes()
        delivered[token_of(message)] = message
    assert all(count == 1 for count in by_token.values()), "a message is queued twice"
    for qid, (token, body) in snapshot.items():
        message = queued.get(qid) or delivered.get(token)
        assert message is not None, f"acknowledged message {qid} ({token}) was lost"
        assert hashlib.sha256(message[-len(body):]).digest() == hashlib.sha256(body).digest()

    d.proc = None
    d.start()  # recovery, then the rest is delivered
    try:
        deadline = time.monotonic() + 30
        while d.ids() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert d.ids() == [], "the queue did not drain after the restart"
        tokens = {token_of(p.read_bytes()) for p in new.iterdir()}
        missing = {token for token, _body in snapshot.values()} - tokens
        assert not missing, f"acknowledged messages never delivered: {sorted(missing)[:5]}"
    finally:
        d.stop()


def token_of(message: bytes) -> str:
    return message.split(b"X-Token: ", 1)[1].split(b"\r\n", 1)[0].decode()
