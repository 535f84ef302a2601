"""Tests of the relay and queue-scale benchmarks with tiny loads and real processes: smtp-sink,
smtp-source, a private Postfix and Albatross itself. Run with:

    cd /work/main && python3 -m pytest -q bench/test_relay.py
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "src"))

import queue_scale  # noqa: E402 - the bench dir is not a package
import relay  # noqa: E402
from harness import free_port, run_all_cleanups, scratch_dir  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("smtp-source") is None or shutil.which("smtp-sink") is None
    or shutil.which("postfix") is None or os.geteuid() != 0,
    reason="needs root, postfix, smtp-source and smtp-sink",
)


def _cgroups_of_this_process() -> list[str]:
    root = Path("/sys/fs/cgroup/unified")
    if not root.exists():
        root = Path("/sys/fs/cgroup")
    return [p.name for p in root.glob(f"albatross-bench-{os.getpid()}-*")]


@pytest.fixture
def work() -> Iterator[Path]:
    """A temp dir the postfix user can enter (pytest's tmp_path is mode 0700); each test
    checks the benchmark left nothing in it."""
    path = Path(tempfile.mkdtemp(prefix="relay-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        run_all_cleanups()
        shutil.rmtree(path, ignore_errors=True)


def _assert_clean(work: Path) -> None:
    assert list(work.iterdir()) == [], "temp dirs left behind"
    assert _cgroups_of_this_process() == [], "cgroups left behind"


def test_sink_counts_messages_and_recipients(work: Path) -> None:
    sink = relay.Sink(work)
    load = relay.Load(messages=20, sessions=4, recipients=3, size=600)
    _wall, warnings = relay.run_source(load, sink.port)
    assert warnings == []
    counts = sink.wait_counts(20, 60)
    deadline = time.monotonic() + 5
    while sink.messages < 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.messages == 20  # the live counter read through the pty
    assert (counts.messages, counts.recipients) == (20, 60)
    assert counts.domains == {"bench.test": 60}
    sink.stop()
    assert not sink.alive()


def test_relay_tiny_run_counts_every_message_and_recipient(work: Path) -> None:
    out = work / "out.json"
    rc = relay.main(["--messages", "50", "--sessions", "5", "--recipients", "1,3",
                     "--tmpdir", str(work), "--json", str(out)])
    report: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    _assert_clean(work)
    assert rc == 0
    assert [(c["sessions"], c["recipients"]) for c in report["cells"]] == [(5, 1), (5, 3)]
    for cell in report["cells"]:
        systems = [r["system"] for r in cell["results"]]
        assert systems == ["albatross-c50", "postfix"]
        for r in cell["results"]:
            assert r["error"] is None, r["error"]
            assert r["count_ok"]
            assert r["sink_messages"] == 50
            assert r["sink_recipients"] == r["server_delivered"] == 50 * cell["recipients"]
            assert r["left_in_queue"] == 0
            assert r["e2e_msgs_per_s"] > 0 and r["cpu_ms_per_msg"] > 0
            # The clock runs until the sink has everything, so never faster than accepting.
            assert r["e2e_wall_s"] >= r["accept_wall_s"]
        assert set(cell["ratios"]) == {"albatross-c50/postfix"}


def test_mail_that_never_reaches_the_sink_is_an_error(work: Path) -> None:
    """Albatross relays to a port where nothing listens: the run must end at its time
    limit with an error that says how much is still queued, not with a rate."""
    sink = relay.Sink(work)
    config = work / "albatross.toml"
    config.write_text(relay.albatross_config(free_port(), 50))
    server = relay.start_server(relay.command_for(None, relay.DEFAULT_EVENT_LOOP),
                                work / "data", config, work / "albatross.log")
    load = relay.Load(messages=10, sessions=2, recipients=1, size=600, limit_s=3.0)
    r = relay.Result("albatross-c50", 2, 1, 10)
    relay.measure(r, load, server.port, sink, server.cpu, lambda: server.rows_after(0))
    assert r.error is not None and "not drained" in r.error
    assert r.e2e_msgs_per_s is None
    assert r.left_in_queue == 10
    relay.check_counts(r, load, sink, relay.SinkCounts(0, 0, {}), server.events("delivered"))
    assert not r.count_ok and r.sink_messages == 0


def test_backlog_is_what_the_spool_reads_as_deferred(work: Path) -> None:
    from albatross.spool import Spool

    backlog = queue_scale.build_backlog(work / "data", 1000, 2048)
    assert (backlog.messages, backlog.last_seq, backlog.body_size) == (1000, 1000, 2048)
    spool = Spool(work / "data")
    entries = spool.entries()
    assert len(entries) == 1000
    assert len({e.qid for e in entries}) == 1000
    now = time.time()
    for e in entries:
        assert e.schedule.state == "queued" and e.schedule.attempts == 1
        assert e.schedule.next_attempt > now + 29 * 86400
        assert [r.domain for r in e.envelope.recipients] == [queue_scale.BACKLOG_DOMAIN]
        assert not e.envelope.recipients[0].is_final
    assert spool.next_due() is not None and spool.next_due() > now + 29 * 86400  # type: ignore[operator]
    assert spool.due(now + 86400, 10) == []
    _envelope, body = spool.load(entries[0].qid)
    assert len(body) == 2048 and body.endswith(b"\r\n")
    assert queue_scale.backlog_left(work / "data", backlog.last_seq) == {"queued": 1000}


def test_queue_scale_tiny_run(work: Path) -> None:
    out = work / "out.json"
    rc = queue_scale.main(["--messages", "1000", "--load-messages", "50", "--repeat", "1",
                           "--tmpdir", str(work), "--json", str(out)])
    report: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    _assert_clean(work)
    assert rc == 0
    assert report["queue"] == 1000
    assert report["backlog_check"] == {"at_sink": 0, "attempted": 0, "left": {"queued": 1000}}
    assert [run["queue"] for run in report["runs"]] == ["empty", "big"]
    for run in report["runs"]:
        r = run["result"]
        assert r["error"] is None, r["error"]
        assert r["count_ok"] and r["sink_messages"] == 50 and r["server_delivered"] == 50
        assert run["memory"]["rss_mb"] > 0
    s = report["summary"]
    assert s["ratio_big_over_empty"] > 0
    assert s["measured_at_target_size"] is False
    assert "EXTRAPOLATED" in s["extrapolated_to_1m"]["note"]
    assert report["big_startup_s"] > 0


@pytest.mark.parametrize("argv", [
    ["--messages", "0"], ["--recipients", "0"], ["--repeat", "21"], ["--sessions", ""],
    ["--no-postfix", "--no-albatross"],
])
def test_relay_refuses_unbounded_or_empty_runs(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        relay.parse_args(argv)


@pytest.mark.parametrize("argv", [
    ["--messages", "0"], ["--messages", "20000000"], ["--body-size", "100"],
    ["--load-messages", "0"],
])
def test_queue_scale_refuses_unbounded_or_empty_runs(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        queue_scale.parse_args(argv)


def test_build_refuses_an_existing_queue(work: Path) -> None:
    data = scratch_dir("data-", str(work))
    (data / "queue.db").write_bytes(b"")
    with pytest.raises(RuntimeError, match="exists"):
        queue_scale.build_backlog(data, 10, 2048)
