"""Tests for spool/: round trips, group commit, abort, recovery, maildrop pickup, errors.

Everything runs on real files and a real SQLite database under tmp_path; failures are made
by really breaking the disk layout (or a file size limit in a child process), not by mocks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sqlite3
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from albatross.errors import SpoolError
from albatross.model import Envelope, Recipient
from albatross.spool import IdSource, Spool, deposit, is_valid_id
from albatross.spool.layout import Layout
from albatross.spool.message import FLUSH_AT

SRC = Path(__file__).resolve().parents[1] / "src"


# -- fixtures ---------------------------------------------------------------------------

class EventLog:
    """The `log` callable the spool is given, recording every event for assertions."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [fields for name, fields in self.events if name == event]


@pytest.fixture(autouse=True)
def no_slow_callbacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail any test in which a callback blocked the event loop (fsync or sqlite on it).

    The check is wall-clock, and this machine is shared, so the limit is generous: it
    catches a commit or a large write done on the loop, not a scheduler hiccup.
    """
    caplog.set_level(logging.WARNING, logger="asyncio")
    yield
    slow = [r.getMessage() for r in caplog.get_records("call")
            if r.name == "asyncio" and "took" in r.getMessage()]
    assert not slow, slow


@pytest.fixture(autouse=True)
async def debug_loop() -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 0.5
    yield


@pytest.fixture
def log() -> EventLog:
    return EventLog()


@pytest.fixture
async def spool(tmp_path: Path, log: EventLog) -> AsyncIterator[Spool]:
    s = Spool(tmp_path / "data", inline_max=4096, log=log)
    await s.open()
    yield s
    await s.close()


def make_envelope(n: int = 1, **kw: Any) -> Envelope:
    rcpts = [Recipient(f"rcpt{i}@example.net", notify="FAILURE", orcpt=f"rfc822;r{i}@x.org")
             for i in range(n)]
    return Envelope(sender="sender@example.org", recipients=rcpts,
                    mail_params={"BODY": "8BITMIME", "ENVID": "abc"}, client_ip="192.0.2.7",
                    client_port=4242, helo="mx.example.org", tls="TLSv1.3", **kw)


async def store(spool: Spool, body: bytes, envelope: Envelope | None = None,
                chunk: int = 65536) -> str:
    qid = spool.new_id()
    writer = spool.begin(qid)
    for i in range(0, len(body), chunk):
        await writer.write(body[i:i + chunk])
    await spool.commit(writer, envelope or make_envelope())
    return qid


def db_rows(data: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    conn = sqlite3.connect(data / "queue.db")
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def db_exec(data: Path, sql: str, params: tuple[Any, ...] = ()) -> None:
    conn = sqlite3.connect(data / "queue.db")
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


# -- ids --------------------------------------------------------------------------------

def test_ids_are_unique_time_ordered_and_safe() -> None:
    source = IdSource("C")
    ids = [source.next() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(q) == 16 and q[0] == "C" and is_valid_id(q) for q in ids)
    assert all(q[1:] == q[1:].lower() for q in ids)  # case-insensitive file systems


def test_ids_from_two_sources_do_not_collide() -> None:
    a, b = IdSource("A"), IdSource("A")
    ids = [x for _ in range(5000) for x in (a.next(), b.next())]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("shard", ["", "a", "AB", "1", "É"])
def test_bad_shard_is_refused(shard: str) -> None:
    with pytest.raises(ValueError):
        IdSource(shard)


@pytest.mark.parametrize("qid", ["", "../etc/passwd", "A" * 16, "Aabc", "a0000000000000000",
                                 "A00000000000000w", "A0000000000000.0"])
def test_malformed_ids_are_refused(spool: Spool, qid: str) -> None:
    assert not is_valid_id(qid)
    with pytest.raises(SpoolError):
        spool.begin(qid)


# -- round trips ------------------------------------------------------------------------

async def test_small_message_round_trip(spool: Spool) -> None:
    env = make_envelope(3, arrival=1234.5, auth="alice")
    body = b"Subject: hi\r\n\r\nhello\r\n"
    qid = await store(spool, body, env)
    assert spool.ids() == [qid]
    assert spool.count() == 1
    loaded_env, loaded_body = spool.load(qid)
    assert loaded_body == body
    assert loaded_env == env
    # Inline: the body is in the row, no spool file.
    assert db_rows(spool.layout.data_dir, "SELECT body_file, size FROM message") == [
        (None, len(body))]
    assert not spool.layout.body_path(Layout.body_name(qid)).exists()


async def test_arrival_is_set_when_missing(spool: Spool) -> None:
    before = time.time()
    qid = await store(spool, b"x\r\n", make_envelope())
    env, _ = spool.load(qid)
    assert before <= env.arrival <= time.time()


async def test_empty_message_round_trip(spool: Spool) -> None:
    writer = spool.begin(spool.new_id())
    await spool.commit(writer, make_envelope())
    assert spool.load(writer.qid)[1] == b""


async def test_large_message_is_streamed_to_a_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "d")  # default inline_max, 256 KiB
    await spool.open()
    try:
        body = os.urandom(5 * 1024 * 1024)
        qid = spool.new_id()
        writer = spool.begin(qid)
        chunk = 64 * 1024
        for i in range(0, len(body), chunk):
            await writer.write(body[i:i + chunk])
            if i == 2 * 1024 * 1024:
                # Mid-write the bytes are on disk, not in memory.
                assert writer.spilled and writer.tmp_path is not None
                assert writer.tmp_path.parent == spool.layout.tmp
                assert writer.tmp_path.stat().st_size >= i + chunk - FLUSH_AT
        assert writer.size == len(body)
        await spool.commit(writer, make_envelope())
        assert os.listdir(spool.layout.tmp) == []
        path = spool.layout.body_path(Layout.body_name(qid))
        assert path.read_bytes() == body
        assert db_rows(spool.layout.data_dir, "SELECT body IS NULL, body_file FROM message") == [
            (1, Layout.body_name(qid))]
        assert spool.load(qid)[1] == body
    finally:
        await spool.close()


async def test_inline_limit_boundary(spool: Spool) -> None:
    at_limit = await store(spool, b"a" * 4096)
    over = await store(spool, b"b" * 4097)
    rows = dict(db_rows(spool.layout.data_dir, "SELECT id, body_file FROM message"))
    assert rows[at_limit] is None
    assert rows[over] == Layout.body_name(over)
    assert spool.load(at_limit)[1] == b"a" * 4096
    assert spool.load(over)[1] == b"b" * 4097


async def test_envelope_state_survives_reopen(tmp_path: Path) -> None:
    data = tmp_path / "d"
    spool = Spool(data, inline_max=10)
    await spool.open()
    small = await store(spool, b"tiny")
    big = await store(spool, b"z" * 1000)
    await spool.close()
    again = Spool(data, inline_max=10)
    report = await again.open()
    try:
        assert report.messages == 2 and report.quarantined == 0
        assert again.ids() == [small, big]
        assert again.load(big)[1] == b"z" * 1000
    finally:
        await again.close()


async def test_load_unknown_id_is_key_error(spool: Spool) -> None:
    with pytest.raises(KeyError):
        spool.load(spool.new_id())


# -- group commit -----------------------------------------------------------------------

async def test_concurrent_commits_share_batches(spool: Spool) -> None:
    n = 300
    qids = await asyncio.gather(*(store(spool, f"m{i}".encode() * 50) for i in range(n)))
    assert sorted(spool.ids()) == sorted(qids)
    stats = spool.stats
    assert stats.messages == n
    assert stats.largest_batch > 1
    assert stats.batches < n


async def test_group_commit_throughput(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """5,000 messages of 5 KB from 50 coroutines; prints the rate (not a timed assertion)."""
    asyncio.get_running_loop().set_debug(False)  # measure the real loop, not debug overhead
    spool = Spool(tmp_path / "d")
    await spool.open()
    body = b"x" * 5000
    todo = iter(range(5000))

    async def sender() -> None:
        for _ in todo:
            await store(spool, body)

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(50)))
    elapsed = time.perf_counter() - started
    stats = spool.stats
    try:
        assert spool.count() == 5000
        assert stats.batches < 5000
    finally:
        await spool.close()
    with capsys.disabled():
        print(f"\ngroup commit: {5000 / elapsed:.0f} messages/s, "
              f"{stats.batches} batches, average {stats.messages / stats.batches:.1f}, "
              f"largest {stats.largest_batch}")


async def test_close_finishes_submitted_commits(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "d")
    await spool.open()
    tasks = [asyncio.create_task(store(spool, b"body")) for _ in range(100)]
    await asyncio.sleep(0)  # every task has submitted its job
    await spool.close()
    qids = await asyncio.gather(*tasks)
    reopened = Spool(tmp_path / "d")
    await reopened.open()
    try:
        assert sorted(reopened.ids()) == sorted(qids)
    finally:
        await reopened.close()


async def test_commit_when_not_open_fails(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "d")
    writer = spool.begin(spool.new_id())
    await writer.write(b"x")
    with pytest.raises(SpoolError):
        await spool.commit(writer, make_envelope())
    await spool.open()
    await spool.close()
    writer = spool.begin(spool.new_id())
    with pytest.raises(SpoolError):
        await spool.commit(writer, make_envelope())


async def test_open_twice_fails(spool: Spool) -> None:
    with pytest.raises(SpoolError):
        await spool.open()


# -- abort ------------------------------------------------------------------------------

async def test_abort_small_and_large(spool: Spool) -> None:
    small = spool.begin(spool.new_id())
    await small.write(b"hello")
    small.abort()
    small.abort()  # idempotent
    with pytest.raises(SpoolError):
        await small.write(b"more")
    with pytest.raises(SpoolError):
        await spool.commit(small, make_envelope())

    large = spool.begin(spool.new_id())
    await large.write(b"y" * 10000)
    assert large.tmp_path is not None and large.tmp_path.exists()
    large.abort()
    assert not large.tmp_path.exists()
    large.abort()
    assert spool.count() == 0
    assert os.listdir(spool.layout.tmp) == []


async def test_abort_while_a_write_is_running(spool: Spool) -> None:
    writer = spool.begin(spool.new_id())
    task = asyncio.create_task(writer.write(b"q" * 3_000_000))
    await asyncio.sleep(0)  # the spill has started in a thread
    writer.abort()
    try:
        await task
    except SpoolError:
        pass
    # Whichever finished first, the file is gone once the thread is done.
    assert os.listdir(spool.layout.tmp) == []
    with pytest.raises(SpoolError):
        await spool.commit(writer, make_envelope())


async def test_abort_after_commit_is_harmless(spool: Spool) -> None:
    writer = spool.begin(spool.new_id())
    await writer.write(b"w" * 9000)
    await spool.commit(writer, make_envelope())
    writer.abort()
    assert spool.load(writer.qid)[1] == b"w" * 9000


# -- storage errors ---------------------------------------------------------------------

async def test_duplicate_id_fails_without_touching_the_first(spool: Spool) -> None:
    qid = spool.new_id()
    first = spool.begin(qid)
    await first.write(b"1" * 9000)
    await spool.commit(first, make_envelope())
    for body in (b"2" * 9000, b"small"):
        second = spool.begin(qid)
        await second.write(body)
        with pytest.raises(SpoolError, match="already"):
            await spool.commit(second, make_envelope())
    assert spool.load(qid)[1] == b"1" * 9000
    assert os.listdir(spool.layout.tmp) == []


async def test_duplicate_in_one_batch_fails_only_that_job(spool: Spool) -> None:
    qid = spool.new_id()

    async def attempt(body: bytes, q: str) -> str:
        writer = spool.begin(q)
        await writer.write(body)
        await spool.commit(writer, make_envelope())
        return q

    others = [spool.new_id() for _ in range(20)]
    results = await asyncio.gather(attempt(b"a", qid), attempt(b"b", qid),
                                   *(attempt(b"c", q) for q in others),
                                   return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1 and isinstance(failures[0], SpoolError)
    assert spool.count() == 21
    assert spool.load(qid)[1] in (b"a", b"b")


async def test_unserialisable_envelope_is_spool_error(spool: Spool) -> None:
    writer = spool.begin(spool.new_id())
    await writer.write(b"v" * 9000)
    env = make_envelope()
    env.mail_params["X"] = b"bytes are not JSON"  # type: ignore[assignment]
    with pytest.raises(SpoolError):
        await spool.commit(writer, env)
    assert os.listdir(spool.layout.tmp) == []
    assert spool.count() == 0


async def test_spooled_body_into_a_removed_directory_fails(spool: Spool) -> None:
    kept_small = await store(spool, b"keep me")
    kept_large = await store(spool, b"K" * 9000)
    kept_body = spool.layout.body_path(Layout.body_name(kept_large)).read_bytes()

    writer = spool.begin(spool.new_id())
    await writer.write(b"L" * 9000)
    # The spool directory disappears under us and a plain file takes its place: nothing
    # can be created in spool/<hh>/ any more.
    shutil.rmtree(spool.layout.spool)
    spool.layout.spool.write_bytes(b"")
    with pytest.raises(SpoolError):
        await spool.commit(writer, make_envelope())
    assert spool.count() == 2

    # Inline bodies do not need the directory; a later commit still works.
    later = await store(spool, b"inline still works")
    assert spool.load(later)[1] == b"inline still works"
    assert spool.load(kept_small)[1] == b"keep me"
    assert kept_body == b"K" * 9000


async def test_spill_into_a_removed_tmp_directory_fails(spool: Spool) -> None:
    shutil.rmtree(spool.layout.tmp)
    writer = spool.begin(spool.new_id())
    await writer.write(b"s" * 100)
    with pytest.raises(SpoolError):
        await writer.write(b"s" * 9000)
    with pytest.raises(SpoolError):
        await spool.commit(writer, make_envelope())


async def test_database_path_that_is_a_directory_fails_open(tmp_path: Path) -> None:
    data = tmp_path / "d"
    (data / "queue.db").mkdir(parents=True)
    with pytest.raises(SpoolError):
        await Spool(data).open()


async def test_unreadable_maildrop_fails_open_cleanly(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    (data / "maildrop").write_bytes(b"a file where the maildrop directory belongs")
    spool = Spool(data)
    with pytest.raises(SpoolError):
        await spool.open()
    assert spool.stats.batches == 0
    # The failed open left nothing running: after fixing the layout, open works.
    (data / "maildrop").unlink()
    await spool.open()
    await spool.close()


async def test_newer_format_is_refused_untouched(tmp_path: Path) -> None:
    data = tmp_path / "d"
    spool = Spool(data)
    await spool.open()
    await spool.close()
    db_exec(data, "PRAGMA user_version=99")
    before = (data / "queue.db").read_bytes()
    with pytest.raises(SpoolError, match="version 99"):
        await Spool(data).open()
    assert (data / "queue.db").read_bytes() == before


_FSIZE_CHILD = textwrap.dedent("""
    import asyncio, json, os, resource, signal, sys
    from pathlib import Path
    from albatross.errors import SpoolError
    from albatross.model import Envelope, Recipient
    from albatross.spool import Spool

    async def store(spool, body):
        w = spool.begin(spool.new_id())
        await w.write(body)
        await spool.commit(w, Envelope("a@example.org", [Recipient("b@example.net")]))
        return w.qid

    async def main(data):
        spool = Spool(data, inline_max=1_000_000)
        await spool.open()
        out = {"ok": [await store(spool, b"before %d" % i) for i in range(3)]}
        # Past this size no file of ours may grow: a write fails with EFBIG, as a full
        # disk fails with ENOSPC, inside SQLite's own WAL append.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = max(p.stat().st_size for p in data.iterdir() if p.is_file()) + 4096
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        try:
            await store(spool, os.urandom(500_000))
            out["failed"] = None
        except SpoolError as exc:
            out["failed"] = str(exc)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        out["after"] = await store(spool, b"after the failure")
        await spool.close()
        print(json.dumps(out))

    asyncio.run(main(Path(sys.argv[1])))
""")


async def test_full_disk_during_commit_is_spool_error(tmp_path: Path) -> None:
    data = tmp_path / "d"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _FSIZE_CHILD, str(data), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(SRC)})
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["failed"], "the commit past the file size limit should have failed"
    spool = Spool(data, inline_max=1_000_000)
    report = await spool.open()
    try:
        assert report.quarantined == 0
        assert spool.ids() == [*result["ok"], result["after"]]
        for i, qid in enumerate(result["ok"]):
            assert spool.load(qid)[1] == b"before %d" % i
    finally:
        await spool.close()


# -- free space -------------------------------------------------------------------------

async def test_has_space_for(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "d", min_free_space=1024)
    await spool.open()
    try:
        assert spool.has_space_for(1000)
        assert not spool.has_space_for(1 << 62)
        fussy = Spool(tmp_path / "d", min_free_space=1 << 62)
        assert not fussy.has_space_for(0)
    finally:
        await spool.close()


def test_has_space_for_an_unreadable_directory_says_no(tmp_path: Path) -> None:
    assert not Spool(tmp_path / "does-not-exist", min_free_space=0).has_space_for(1)


# -- recovery ---------------------------------------------------------------------------

async def reopen(data: Path, log: EventLog, inline_max: int = 4096) -> tuple[Spool, Any]:
    spool = Spool(data, inline_max=inline_max, log=log)
    report = await spool.open()
    return spool, report


async def test_recovery_removes_stray_tmp_files_and_orphan_bodies(tmp_path: Path,
                                                                   log: EventLog) -> None:
    data = tmp_path / "d"
    spool, _ = await reopen(data, log)
    kept = await store(spool, b"k" * 9000)
    await spool.close()
    layout = Layout(data)
    (layout.tmp / "A0000000000000000-deadbeef").write_bytes(b"half a message")
    orphan = layout.body_path(Layout.body_name("B00000000000000x"))
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"a commit that never happened")

    spool, report = await reopen(data, log)
    try:
        assert report.tmp_removed == 1
        assert report.orphans_removed == 1
        assert report.quarantined == 0
        assert not orphan.exists()
        assert os.listdir(layout.tmp) == []
        assert spool.load(kept)[1] == b"k" * 9000
        recovered = log.named("spool-recovered")[-1]
        assert recovered["tmp_removed"] == 1 and recovered["orphans_removed"] == 1
    finally:
        await spool.close()


async def test_recovery_quarantines_a_row_whose_body_is_missing(tmp_path: Path,
                                                                 log: EventLog) -> None:
    data = tmp_path / "d"
    spool, _ = await reopen(data, log)
    lost = await store(spool, b"m" * 9000)
    kept = await store(spool, b"fine")
    await spool.close()
    Layout(data).body_path(Layout.body_name(lost)).unlink()

    spool, report = await reopen(data, log)
    try:
        assert report.quarantined == 1
        assert spool.ids() == [kept]
        corrupt = Layout(data).corrupt
        assert "body file missing" in (corrupt / f"{lost}.reason").read_text()
        saved = json.loads((corrupt / f"{lost}.envelope").read_bytes())
        assert saved["sender"] == "sender@example.org"
        assert log.named("quarantined") == [{"qid": lost, "reason": "body file missing"}]
    finally:
        await spool.close()


@pytest.mark.parametrize("record", [
    "{not json",
    json.dumps({"version": 99, "sender": "x", "recipients": []}),
    json.dumps({"version": 1}),
    json.dumps([1, 2, 3]),
    json.dumps({"version": 1, "sender": "x", "recipients": [{"nope": 1}]}),
])
async def test_recovery_quarantines_an_unreadable_envelope(tmp_path: Path, log: EventLog,
                                                           record: str) -> None:
    data = tmp_path / "d"
    spool, _ = await reopen(data, log)
    bad = await store(spool, b"the body survives")
    kept = await store(spool, b"fine")
    await spool.close()
    db_exec(data, "UPDATE envelope SET record = ? WHERE id = ?", (record, bad))

    spool, report = await reopen(data, log)
    try:
        assert report.quarantined == 1
        assert spool.ids() == [kept]
        corrupt = Layout(data).corrupt
        assert (corrupt / f"{bad}.body").read_bytes() == b"the body survives"
        assert (corrupt / f"{bad}.envelope").read_text() == record
        [event] = log.named("quarantined")
        assert event["qid"] == bad and "envelope record unreadable" in event["reason"]
    finally:
        await spool.close()


async def test_recovery_moves_a_spooled_body_aside(tmp_path: Path, log: EventLog) -> None:
    data = tmp_path / "d"
    spool, _ = await reopen(data, log)
    bad = await store(spool, b"B" * 9000)
    await spool.close()
    db_exec(data, "UPDATE envelope SET record = 'garbage' WHERE id = ?", (bad,))
    spool, report = await reopen(data, log)
    try:
        assert report.quarantined == 1 and report.orphans_removed == 0
        assert (Layout(data).corrupt / f"{bad}.body").read_bytes() == b"B" * 9000
        assert not Layout(data).body_path(Layout.body_name(bad)).exists()
    finally:
        await spool.close()


async def test_recovery_quarantines_rows_with_hostile_ids_and_paths(tmp_path: Path,
                                                                    log: EventLog) -> None:
    data = tmp_path / "d"
    spool, _ = await reopen(data, log)
    good = await store(spool, b"good")
    await spool.close()
    record = json.dumps(make_envelope().to_record())
    conn = sqlite3.connect(data / "queue.db")
    with conn:
        conn.execute("INSERT INTO message (id, arrival, size, body_file) VALUES (?,?,?,?)",
                     ("../../escape", 1.0, 4, "../../../etc/passwd"))
        conn.execute("INSERT INTO envelope VALUES (?, ?)", ("../../escape", record))
        ok_id = IdSource().next()
        conn.execute("INSERT INTO message (id, arrival, size, body_file) VALUES (?,?,?,?)",
                     (ok_id, 1.0, 4, "../../../etc/passwd"))
        conn.execute("INSERT INTO envelope VALUES (?, ?)", (ok_id, record))
        # Invalid UTF-8 in a TEXT column must not stop recovery either.
        conn.execute("INSERT INTO message (id, arrival, size, body) VALUES"
                     " (CAST(X'41ff' AS TEXT), 1.0, 1, X'00')")
    conn.close()
    spool, report = await reopen(data, log)
    try:
        assert report.quarantined == 3
        assert spool.ids() == [good]
        assert Path("/etc/passwd").exists()
        names = os.listdir(Layout(data).corrupt)
        assert all("/" not in n and not n.startswith(".") for n in names)
    finally:
        await spool.close()


async def test_recovery_replaces_a_garbage_database(tmp_path: Path, log: EventLog) -> None:
    data = tmp_path / "d"
    data.mkdir()
    garbage = b"this is not an SQLite database at all" * 100
    (data / "queue.db").write_bytes(garbage)
    spool, report = await reopen(data, log)
    try:
        assert report.database_replaced
        [aside] = [p for p in data.iterdir() if p.name.startswith("queue.db.corrupt-")]
        assert aside.read_bytes() == garbage
        assert "not a usable database" in log.named("quarantined")[0]["reason"]
        qid = await store(spool, b"fresh start")
        assert spool.load(qid)[1] == b"fresh start"
    finally:
        await spool.close()


async def test_recovery_of_a_database_with_a_damaged_header(tmp_path: Path, log: EventLog) -> None:
    """A database whose header is damaged (first page overwritten) counts as garbage too."""
    data = tmp_path / "d"
    spool, _ = await reopen(data, log)
    await store(spool, b"lost with the database, kept in the .corrupt file")
    await spool.close()
    with open(data / "queue.db", "r+b") as f:
        f.write(b"\xff" * 100)
    spool, report = await reopen(data, log)
    try:
        assert report.database_replaced
        assert spool.count() == 0
    finally:
        await spool.close()


# -- maildrop ---------------------------------------------------------------------------

async def test_deposit_then_pickup_at_open(tmp_path: Path, log: EventLog) -> None:
    data = tmp_path / "d"
    env = make_envelope(2, auth="mallory")
    qid = await asyncio.to_thread(deposit, data, env, b"Subject: local\r\n\r\nfrom sendmail\r\n")
    assert is_valid_id(qid)
    assert os.listdir(data / "maildrop") == [f"{qid}.msg"]
    spool, report = await reopen(data, log)
    try:
        assert report.picked_up == 1 and report.messages == 1
        assert spool.ids() == [qid]
        loaded, body = spool.load(qid)
        assert body == b"Subject: local\r\n\r\nfrom sendmail\r\n"
        assert loaded.source == "sendmail"
        assert loaded.recipients == env.recipients
        assert loaded.mail_params == env.mail_params
        # A maildrop record cannot claim a network origin or an authentication.
        assert (loaded.auth, loaded.tls, loaded.client_ip) == (None, None, "")
        assert os.listdir(data / "maildrop") == []
        [event] = log.named("pickup")
        assert event["qid"] == qid and event["file"] == f"{qid}.msg"
    finally:
        await spool.close()


async def test_pickup_is_idempotent(tmp_path: Path, log: EventLog) -> None:
    data = tmp_path / "d"
    qid = await asyncio.to_thread(deposit, data, make_envelope(), b"once")
    saved = (data / "maildrop" / f"{qid}.msg").read_bytes()
    spool, _ = await reopen(data, log)
    try:
        # A crash after the commit but before the unlink leaves the file behind.
        (data / "maildrop" / f"{qid}.msg").write_bytes(saved)
        assert await spool.pickup() == 0
        assert spool.ids() == [qid]
        assert os.listdir(data / "maildrop") == []
    finally:
        await spool.close()


async def test_pickup_of_a_colliding_id_keeps_both(tmp_path: Path, log: EventLog) -> None:
    data = tmp_path / "d"
    spool, _ = await reopen(data, log)
    try:
        taken = await store(spool, b"already here")
        drop = data / "maildrop"
        record = json.dumps(make_envelope().to_record()).encode()
        (drop / f"{taken}.msg").write_bytes(record + b"\n" + b"a different message")
        assert await spool.pickup() == 1
        assert spool.count() == 2
        bodies = sorted(spool.load(q)[1] for q in spool.ids())
        assert bodies == [b"a different message", b"already here"]
    finally:
        await spool.close()


async def test_large_maildrop_message_is_spooled(tmp_path: Path, log: EventLog) -> None:
    data = tmp_path / "d"
    body = os.urandom(1_500_000)
    qid = await asyncio.to_thread(deposit, data, make_envelope(), body)
    spool, report = await reopen(data, log)
    try:
        assert report.picked_up == 1
        assert spool.load(qid)[1] == body
        assert Layout(data).body_path(Layout.body_name(qid)).exists()
    finally:
        await spool.close()


@pytest.mark.parametrize(("name", "content"), [
    ("A0000000000000aa.msg", b"{not json}\nbody"),
    ("A0000000000000ab.msg", b"no newline at all"),
    ("A0000000000000ac.msg", b'{"version": 1, "sender": "a", "recipients": []}\nbody'),
    ("A0000000000000ad.msg", b"[1]\nbody"),
    ("not-an-id.msg", json.dumps(make_envelope().to_record()).encode() + b"\nbody"),
    ("A0000000000000ae.msg", b"x" * (1024 * 1024 + 10) + b"\n"),
])
async def test_malformed_maildrop_file_is_moved_aside(tmp_path: Path, log: EventLog,
                                                      name: str, content: bytes) -> None:
    data = tmp_path / "d"
    (data / "maildrop").mkdir(parents=True)
    (data / "maildrop" / name).write_bytes(content)
    spool, report = await reopen(data, log)
    try:
        assert report.picked_up == 0 and report.maildrop_rejected == 1
        assert spool.count() == 0
        assert (Layout(data).corrupt / name).read_bytes() == content
        assert os.listdir(data / "maildrop") == []
        assert await spool.pickup() == 0  # never retried
        [event] = log.named("quarantined")
        assert event["reason"].startswith("maildrop:")
    finally:
        await spool.close()


async def test_maildrop_symlink_is_not_followed(tmp_path: Path, log: EventLog) -> None:
    data = tmp_path / "d"
    secret = tmp_path / "secret"
    secret.write_bytes(json.dumps(make_envelope().to_record()).encode() + b"\nprivate")
    (data / "maildrop").mkdir(parents=True)
    (data / "maildrop" / "A0000000000000aa.msg").symlink_to(secret)
    spool, report = await reopen(data, log)
    try:
        assert report.picked_up == 0 and spool.count() == 0
        assert secret.exists()
    finally:
        await spool.close()


async def test_maildrop_tmp_files_wait_then_expire(tmp_path: Path, log: EventLog) -> None:
    data = tmp_path / "d"
    drop = data / "maildrop"
    drop.mkdir(parents=True)
    young, old = drop / "A0000000000000aa.tmp", drop / "A0000000000000ab.tmp"
    young.write_bytes(b"being written")
    old.write_bytes(b"abandoned")
    an_hour_ago = time.time() - 3700
    os.utime(old, (an_hour_ago, an_hour_ago))
    spool, report = await reopen(data, log)
    try:
        assert report.picked_up == 0
        assert young.exists() and not old.exists()
    finally:
        await spool.close()


def test_deposit_into_an_unwritable_place_is_spool_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(SpoolError):
        deposit(blocker, make_envelope(), b"x")


@pytest.mark.parametrize("size", [0, 100, 4096, 4097, 300_000])
async def test_prepend_puts_headers_first_in_memory_and_on_disk(spool: Spool, size: int) -> None:
    # The fixture's inline_max is 4 KiB: 4097 and 300,000 bytes are spilled to a file.
    body = bytes(i % 251 for i in range(size))
    qid = spool.new_id()
    writer = spool.begin(qid)
    for i in range(0, len(body), 1000):
        await writer.write(body[i:i + 1000])
    writer.prepend(b"B: 2\r\n")
    assert await writer.read() == b"B: 2\r\n" + body  # what checks see before commit
    writer.prepend(b"A: 1\r\n")  # each prepend goes above the ones before
    assert writer.size == size + 12
    await spool.commit(writer, make_envelope())
    assert spool.load(qid)[1] == b"A: 1\r\nB: 2\r\n" + body
    assert os.listdir(spool.layout.tmp) == []


async def test_prepend_after_abort_is_refused(spool: Spool) -> None:
    writer = spool.begin(spool.new_id())
    await writer.write(b"x" * 10_000)
    writer.abort()
    with pytest.raises(SpoolError):
        writer.prepend(b"A: 1\r\n")
    assert os.listdir(spool.layout.tmp) == []


async def test_commit_on_hold(spool: Spool) -> None:
    writer = spool.begin(spool.new_id())
    await writer.write(b"Subject: quarantined\r\n\r\nx\r\n")
    await spool.commit(writer, make_envelope(), held=True)
    [entry] = [e for e in spool.entries() if e.qid == writer.qid]
    assert entry.schedule.state == "held"
    assert spool.due(time.time() + 3600, 10) == []  # never handed to delivery


@pytest.mark.parametrize("size", [200, 1_500_000])
async def test_pickup_prepare_hook_prepends_headers(tmp_path: Path, log: EventLog,
                                                    size: int) -> None:
    data = tmp_path / "d"
    body = b"From: a@example.org\r\n\r\n" + b"x" * size
    qid = await asyncio.to_thread(deposit, data, make_envelope(), body)
    seen: list[bytes] = []

    async def sign(envelope: Envelope, writer: Any) -> None:
        seen.append(await writer.read())
        writer.prepend(b"DKIM-Signature: v=1; test\r\n")

    spool = Spool(data, inline_max=4096, log=log, prepare=sign)
    await spool.open()
    try:
        assert seen == [body]
        assert spool.load(qid)[1] == b"DKIM-Signature: v=1; test\r\n" + body
    finally:
        await spool.close()
    # A crash before the maildrop file was removed: the same file again is a duplicate,
    # although the stored message is larger by the header.
    await asyncio.to_thread(deposit_again, data, qid, body)
    spool = Spool(data, inline_max=4096, log=log, prepare=sign)
    report = await spool.open()
    try:
        assert report.picked_up == 0 and spool.count() == 1
        assert not any((data / "maildrop").iterdir())
    finally:
        await spool.close()


def deposit_again(data: Path, qid: str, body: bytes) -> None:
    spool = Spool(data)
    envelope = spool.load_envelope(qid)
    (data / "maildrop" / f"{qid}.msg").write_bytes(
        json.dumps(envelope.to_record()).encode() + b"\n" + body)


@pytest.mark.parametrize("size", [100, 300_000])
async def test_replace_start_swaps_the_header_block(spool: Spool, size: int) -> None:
    head = b"Received: x\r\nAuthentication-Results: mx.test; forged\r\nSubject: s\r\n\r\n"
    body = b"y" * size
    writer = spool.begin(spool.new_id())
    await writer.write(head + body)
    new_head = b"Authentication-Results: mx.test; spf=pass\r\nReceived: x\r\nSubject: s\r\n\r\n"
    writer.replace_start(len(head), new_head)
    assert await writer.read() == new_head + body
    writer.prepend(b"DKIM-Signature: v=1\r\n")
    with pytest.raises(ValueError):
        writer.replace_start(1, b"")  # once, and before any prepend
    assert writer.size == len(new_head) + len(body) + 21
    await spool.commit(writer, make_envelope())
    assert spool.load(writer.qid)[1] == b"DKIM-Signature: v=1\r\n" + new_head + body
