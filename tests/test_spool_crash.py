"""Crash test for spool/: kill -9 a process that is committing, reopen, count.

The contract under test (ARCHITECTURE.md, "Durability"): a commit that returned is on
stable storage. The child prints each queue id right after commit() returns; whatever it
printed before SIGKILL must be present and intact after recovery, and nothing duplicated.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import selectors
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from albatross.spool import Spool

SRC = Path(__file__).resolve().parents[1] / "src"

# Eight coroutines commit messages of random sizes (some inline, some spooled files, since
# inline_max is 8 KiB) as fast as they can. Each body carries the SHA-256 of its payload.
_CHILD = textwrap.dedent("""
    import asyncio, hashlib, os, random, sys
    from pathlib import Path
    from albatross.model import Envelope, Recipient
    from albatross.spool import Spool

    async def sender(spool, rng):
        while True:
            payload = os.urandom(rng.choice((50, 500, 5000, 20000, 150000)))
            body = b"X-Check: " + hashlib.sha256(payload).hexdigest().encode() + b"\\r\\n\\r\\n"
            body += payload
            writer = spool.begin(spool.new_id())
            for i in range(0, len(body), 16384):
                await writer.write(body[i:i + 16384])
            await spool.commit(writer, Envelope("a@example.org", [Recipient("b@example.net")]))
            sys.stdout.write(writer.qid + "\\n")
            sys.stdout.flush()

    async def main():
        spool = Spool(Path(sys.argv[1]), inline_max=8192)
        await spool.open()
        sys.stdout.write("open\\n")
        sys.stdout.flush()
        await asyncio.gather(*(sender(spool, random.Random(i)) for i in range(8)))

    asyncio.run(main())
""")


def run_and_kill(data: Path, seconds: float) -> list[str]:
    """Start the child, let it commit for `seconds` after it opened, SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(data)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert proc.stdout is not None
    output = b""
    deadline: float | None = None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    start = time.monotonic()
    try:
        while deadline is None or time.monotonic() < deadline:
            if time.monotonic() - start > 30:
                pytest.fail("child never opened the spool")
            if selector.select(timeout=0.05):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                output += chunk
            if deadline is None and b"open\n" in output:
                deadline = time.monotonic() + seconds
    finally:
        proc.kill()  # SIGKILL: no cleanup, no atexit, no flush
        rest, err = proc.communicate()
        selector.close()
    output += rest
    assert proc.returncode == -9, err.decode()
    # Only whole lines count: a partial line was never fully printed.
    lines = output.split(b"\n")[:-1]
    assert lines and lines[0] == b"open", err.decode()
    return [line.decode() for line in lines[1:]]


@pytest.mark.slow
async def test_kill_9_loses_no_committed_message(tmp_path: Path) -> None:
    data = tmp_path / "d"
    printed: list[str] = []
    for _round in range(3):
        got = await asyncio.to_thread(run_and_kill, data, 1.0)
        assert got, "the child committed nothing in a second"
        printed += got
        spool = Spool(data, inline_max=8192)
        report = await spool.open()
        try:
            assert report.quarantined == 0
            stored = spool.ids()
            assert len(stored) == len(set(stored))
            assert set(printed) <= set(stored)
            checks = set()
            for qid in stored:  # every stored message, printed or not, is intact
                _envelope, body = spool.load(qid)
                header, _, payload = body.partition(b"\r\n\r\n")
                assert header == b"X-Check: " + hashlib.sha256(payload).hexdigest().encode()
                checks.add(header)
            assert len(checks) == len(stored)  # no message stored twice
            assert os.listdir(spool.layout.tmp) == []
        finally:
            await spool.close()
