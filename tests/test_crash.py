"""Crash test: kill -9 the daemon under load; every message that got 250 survives, once."""

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
    d = make_daemon(tmp_path)
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

    d.proc = None
    d.start()  # recovery runs here
    try:
        ids = d.ids()
        by_token: dict[str, int] = {}
        for qid in ids:
            _env, message = d.load(qid)
            token = message.split(b"X-Token: ", 1)[1].split(b"\r\n", 1)[0].decode()
            by_token[token] = by_token.get(token, 0) + 1
        for qid, (token, body) in snapshot.items():
            assert qid in ids, f"acknowledged message {qid} was lost"
            _env, message = d.load(qid)
            assert hashlib.sha256(message[-len(body):]).digest() == hashlib.sha256(body).digest()
            assert by_token[token] == 1, f"{token} stored {by_token[token]} times"
        assert all(count == 1 for count in by_token.values())
    finally:
        d.stop()
