"""The mail log: vocabulary, line format, escaping, batching, rendering and tail -F reading."""

from __future__ import annotations

import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from albatross.observe import maillog
from albatross.observe.maillog import EVENTS, MailLog, read, render

SRC = Path(maillog.__file__).resolve().parents[2]

# 2026-11-28T07:31:02.123456Z
T0 = 1795851062.123456


def fixed_clock() -> float:
    return T0


def lines_of(path: Path) -> list[str]:
    return path.read_text("ascii").splitlines()


def records_of(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line]


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "log" / "mail.log"


# --- vocabulary -----------------------------------------------------------------------

def test_every_event_of_the_vocabulary_is_accepted(log_path: Path) -> None:
    with MailLog(log_path) as log:
        for name in sorted(EVENTS):
            log.event(name, qid="A0000000000000000")
    assert [r["event"] for r in records_of(log_path)] == sorted(EVENTS)


@pytest.mark.parametrize("name", ["delivery", "bogus", "Queued", "", "queued\n"])
def test_unknown_events_are_programming_errors(log_path: Path, name: str) -> None:
    log = MailLog(log_path)
    with pytest.raises(ValueError, match="unknown mail log event"):
        log.event(name, qid="A1")
    log.close()
    assert log_path.read_bytes() == b""


def test_delivery_events_are_in_the_vocabulary() -> None:
    assert {"attempt", "delivered", "deferred", "bounced", "expired", "dsn-sent",
            "deleted"} <= EVENTS


@pytest.mark.parametrize("name", sorted(maillog.QID_REQUIRED))
def test_message_events_need_a_qid(log_path: Path, name: str) -> None:
    with MailLog(log_path) as log, pytest.raises(ValueError, match="needs a qid"):
        log.event(name, session="s1")


@pytest.mark.parametrize("field", ["ts", "event"])
def test_fields_cannot_overwrite_ts_or_event(log_path: Path, field: str) -> None:
    with MailLog(log_path) as log, pytest.raises(ValueError, match="may not be named"):
        log.event("connect", **{field: "x"})


# --- line format ------------------------------------------------------------------------

def test_one_json_object_per_line_in_stable_key_order(log_path: Path) -> None:
    with MailLog(log_path, clock=fixed_clock) as log:
        log.event("queued", size=5120, session="s7", qid="A1B2C3", from_="a@x", to=["b@y"])
        log.event("connect", client="127.0.0.1", session="s8")
    first, second = lines_of(log_path)
    assert first == ('{"ts": "2026-11-28T07:31:02.123456Z", "event": "queued", "qid": "A1B2C3", '
                     '"session": "s7", "size": 5120, "from": "a@x", "to": ["b@y"]}')
    assert list(json.loads(second)) == ["ts", "event", "session", "client"]


def test_timestamp_microseconds_and_second_changes(log_path: Path) -> None:
    times = iter([100.0, 100.999999, 101.5, 86400 * 365.0])
    with MailLog(log_path, clock=lambda: next(times)) as log:
        for _ in range(4):
            log.event("starting")
    assert [r["ts"] for r in records_of(log_path)] == [
        "1970-01-01T00:01:40.000000Z", "1970-01-01T00:01:40.999999Z",
        "1970-01-01T00:01:41.500000Z", "1971-01-01T00:00:00.000000Z"]


def test_values_json_does_not_know_are_written_as_text(log_path: Path) -> None:
    with MailLog(log_path) as log:
        log.event("error", path=Path("/x/y"), raw=b"a\xffb", tags={"b", "a"})
    (rec,) = records_of(log_path)
    assert rec["path"] == "/x/y"
    assert rec["raw"] == "a\\xffb"
    assert rec["tags"] == ["a", "b"]


@pytest.mark.parametrize("evil", [
    "x\r\nqueued fake line", "x\nx", "x\rx", "nul\x00byte", "ls\u2028ps\u2029", "nel\x85",
    "esc\x1b[2J", "lone surrogate \udcff",
])
def test_wire_data_never_starts_a_new_line(log_path: Path, evil: str) -> None:
    with MailLog(log_path) as log:
        log.event("helo", session="s1", helo=evil, **{"key\r\nwith newline": evil})
        log.event("disconnect", session="s1")
    data = log_path.read_bytes()
    assert data.count(b"\n") == 2
    assert all(byte < 0x7F for byte in data)  # pure ASCII: no separator a tool could split on
    assert data.decode("ascii").splitlines()[1].startswith('{"ts"')
    rec = records_of(log_path)[0]
    assert rec["helo"] == evil
    assert rec["key\r\nwith newline"] == evil


# --- batching ---------------------------------------------------------------------------

def test_lines_are_batched_until_flush(log_path: Path) -> None:
    log = MailLog(log_path)
    assert log_path.exists()  # opened (and parents created) at construction
    log.event("starting")
    log.event("listening", address="127.0.0.1:25")
    assert log_path.read_bytes() == b""
    log.flush()
    assert len(lines_of(log_path)) == 2
    log.flush()  # an empty batch writes nothing
    assert len(lines_of(log_path)) == 2
    log.event("stopping")
    log.close()
    assert len(lines_of(log_path)) == 3


def test_a_full_buffer_is_written_without_waiting_for_flush(log_path: Path) -> None:
    log = MailLog(log_path)
    filler = "x" * 1000
    count = 0
    while log_path.stat().st_size == 0:
        log.event("error", what=filler)
        count += 1
        assert count < 200
    # Written when, and only when, the batch reached 64 KiB.
    size = log_path.stat().st_size
    assert len(lines_of(log_path)) == count
    assert size >= maillog.FLUSH_BYTES > size - size // count
    log.close()


def test_file_is_appended_to_never_truncated(log_path: Path) -> None:
    with MailLog(log_path) as log:
        log.event("starting")
    with MailLog(log_path) as log:
        log.event("stopping")
    assert [r["event"] for r in records_of(log_path)] == ["starting", "stopping"]


def test_events_after_close_reopen_the_file(log_path: Path) -> None:
    log = MailLog(log_path)
    log.close()
    log.event("starting")
    log.close()
    log.close()  # idempotent
    assert [r["event"] for r in records_of(log_path)] == ["starting"]


def test_writer_follows_rotation_by_rename(log_path: Path) -> None:
    log = MailLog(log_path)
    log.event("starting")
    log.flush()
    log_path.rename(log_path.with_name("mail.log.1"))
    log.event("stopping")
    log.close()
    assert [r["event"] for r in records_of(log_path.with_name("mail.log.1"))] == ["starting"]
    assert [r["event"] for r in records_of(log_path)] == ["stopping"]


def test_writer_recreates_a_deleted_file(log_path: Path) -> None:
    log = MailLog(log_path)
    log_path.unlink()
    log.event("starting")
    log.close()
    assert [r["event"] for r in records_of(log_path)] == ["starting"]


def test_unwritable_log_fails_at_construction_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "log").write_text("a file where the directory should be")
    with pytest.raises(OSError) as info:
        MailLog(tmp_path / "log" / "mail.log")
    assert "log" in str(info.value)


def test_write_failures_keep_lines_then_report_and_recover(
        log_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    log = MailLog(log_path)
    log_dir = log_path.parent
    # Take the directory away and put a file in its place: reopening must fail.
    log_path.rename(log_dir.parent / "old.log")
    log_dir.rmdir()
    log_dir.write_text("in the way")
    log.event("connect", session="s1")
    log.flush()
    log.flush()
    err = capsys.readouterr().err
    assert err.count("cannot write the mail log") == 1  # once per outage, not per flush
    assert str(log_path) in err
    # While failing, lines are kept: once the directory is back, they arrive.
    log_dir.unlink()
    log.event("disconnect", session="s1")
    log.flush()
    assert [r["event"] for r in records_of(log_path)] == ["connect", "disconnect"]
    # Past RETAIN_BYTES they are dropped and counted in an "error" line on recovery.
    monkeypatch.setattr(maillog, "RETAIN_BYTES", 300)
    log_path.unlink()
    log_dir.rmdir()
    log_dir.write_text("in the way")
    for _ in range(5):
        log.event("error", what="x" * 100)
        log.flush()
    log_dir.unlink()
    log.event("stopping")
    log.close()
    recs = records_of(log_path)
    assert recs[0]["event"] == "error"
    assert recs[0]["what"] == "mail log write failed"
    assert isinstance(recs[0]["dropped"], int) and recs[0]["dropped"] >= 3
    assert recs[-1]["event"] == "stopping"
    assert capsys.readouterr().err.count("cannot write the mail log") == 1


def test_concurrent_writers_never_interleave_lines(log_path: Path) -> None:
    log = MailLog(log_path)

    def worker(n: int) -> None:
        for i in range(2000):
            log.event("queued", qid=f"Q{n}-{i}", pad="p" * (i % 50))
            if i % 300 == 0:
                log.flush()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    qids = {r["qid"] for r in records_of(log_path)}  # json.loads fails on a torn line
    assert len(qids) == 8000


def test_echo_gets_the_rendered_line(log_path: Path) -> None:
    echo = io.StringIO()
    with MailLog(log_path, echo=echo, clock=fixed_clock) as log:
        log.event("connect", session="s1", client="127.0.0.1")
    assert echo.getvalue() == "2026-11-28 07:31:02 s1 connect client=127.0.0.1\n"


def test_no_path_means_echo_only() -> None:
    echo = io.StringIO()
    log = MailLog(None, echo=echo, clock=fixed_clock)
    log.event("starting", version="0.1.0")
    log.flush()
    log.close()
    assert echo.getvalue() == "2026-11-28 07:31:02 - starting version=0.1.0\n"
    with pytest.raises(ValueError):
        log.event("nope")


# --- render -----------------------------------------------------------------------------

def test_render_the_documented_example() -> None:
    rec = {"ts": "2026-11-28T07:31:02.123456Z", "event": "queued", "qid": "A1B2C3",
           "from": "a@x", "to": "b@y", "size": 5120, "client": "127.0.0.1"}
    assert render(rec) == ("2026-11-28 07:31:02 A1B2C3 queued from=<a@x> to=<b@y> size=5120 "
                           "client=127.0.0.1")


def test_render_shows_session_when_there_is_no_qid_and_both_when_there_are() -> None:
    base = {"ts": "2026-11-28T07:31:02.1Z", "event": "reject"}
    assert render({**base, "session": "s9"}) == "2026-11-28 07:31:02 s9 reject"
    assert render({**base, "qid": "Q1", "session": "s9"}) == \
        "2026-11-28 07:31:02 Q1 reject session=s9"
    assert render({"event": "starting"}) == "- - - starting"


def test_render_addresses_and_a_hostile_timestamp() -> None:
    rec = {"ts": "2026\x1b[2J-11-28Tx y", "event": "queued", "qid": "Q1", "sender": "",
           "recipients": ["a@x", "b@y"]}
    assert render(rec) == '"2026\\x1b[2J-11-28" "x y" Q1 queued sender=<> recipients=<a@x>,<b@y>'


def test_render_quotes_and_escapes() -> None:
    rec = {"ts": "2026-11-28T07:31:02Z", "event": "reject", "session": "s1",
           "reply": "550 5.7.1 no thanks", "helo": "evil\r\n\x1b[2Jhost", "from": "",
           "to": ["a@x", "b@y"], "tls": None, "auth": True, "params": {"SIZE": "10", "RET": None},
           "empty": "", "quote": 'say "hi"\\'}
    assert render(rec) == (
        '2026-11-28 07:31:02 s1 reject reply="550 5.7.1 no thanks" '
        'helo="evil\\r\\n\\x1b[2Jhost" from=<> to=<a@x>,<b@y> tls=- auth=yes '
        'params={SIZE:10,RET:-} empty="" quote="say \\"hi\\"\\\\"')
    assert "\x1b" not in render(rec)


# --- read -------------------------------------------------------------------------------

def test_read_returns_records_and_reports_corrupt_lines(log_path: Path) -> None:
    with MailLog(log_path) as log:
        log.event("starting")
    with open(log_path, "ab") as fh:
        fh.write(b"not json\n\n[1, 2]\n{\"no\": \"event\"}\n\x00\x00\x00\n\xff\xfe\n")
    with MailLog(log_path) as log:
        log.event("stopping")
    with open(log_path, "ab") as fh:
        fh.write(b'{"event": "queued", "qid": "partial"')  # no newline: a cut-off last line
    events = [r["event"] for r in read(log_path)]
    assert events == ["starting"] + ["unparsable"] * 5 + ["stopping", "unparsable"]
    bad = [r for r in read(log_path) if r["event"] == "unparsable"]
    assert bad[0]["line"] == "not json"
    assert bad[4]["line"] == "\\xff\\xfe"


def test_read_missing_file_raises_at_call(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read(tmp_path / "nope.log")


def test_read_bounds_an_endless_line(log_path: Path) -> None:
    log_path.parent.mkdir()
    log_path.write_bytes(b"\x00" * (3 * maillog.MAX_LINE_BYTES) + b"\n"
                         + b'{"event": "starting"}\n')
    recs = list(read(log_path))
    assert [r["event"] for r in recs] == ["unparsable", "starting"]
    assert str(recs[0]["line"]).endswith("bytes)")


def follower(path: Path, **kw: float) -> tuple[queue.Queue[dict[str, object]], threading.Event]:
    """Follow `path` in a thread, putting records on a queue until `stop` is set."""
    out: queue.Queue[dict[str, object]] = queue.Queue()
    stop = threading.Event()
    records: Iterator[dict[str, object]] = read(path, follow=True, poll_interval=0.02)

    def run() -> None:
        for rec in records:
            out.put(rec)
            if stop.is_set():
                break

    threading.Thread(target=run, daemon=True).start()
    return out, stop


def take(out: queue.Queue[dict[str, object]], n: int) -> list[object]:
    return [out.get(timeout=5)["event"] for _ in range(n)]


def test_follow_sees_appends_rotation_and_truncation(log_path: Path) -> None:
    log = MailLog(log_path)
    log.event("starting")
    log.flush()
    out, stop = follower(log_path)
    assert take(out, 1) == ["starting"]

    log.event("listening")
    log.flush()
    assert take(out, 1) == ["listening"]

    # A line written in two pieces is reported once, whole.
    with open(log_path, "ab") as fh:
        fh.write(b'{"event": "connect", ')
        fh.flush()
        time.sleep(0.1)
        fh.write(b'"session": "s1"}\n')
    assert take(out, 1) == ["connect"]

    # Rotation: rename, and the writer starts a new file.
    log_path.rename(log_path.with_name("mail.log.1"))
    log.event("disconnect", session="s1")
    log.flush()
    assert take(out, 1) == ["disconnect"]

    # Deleted, then recreated later: the follower waits for it.
    log_path.unlink()
    time.sleep(0.1)
    log.event("stopping")
    log.flush()
    assert take(out, 1) == ["stopping"]

    # copytruncate: the file shrinks in place; reading restarts at its beginning.
    with open(log_path, "r+b") as fh:
        fh.truncate(0)
    time.sleep(0.1)
    log.event("starting")
    log.flush()
    assert take(out, 1) == ["starting"]

    with open(log_path, "ab") as fh:
        fh.write(b"garbage\n")
    assert take(out, 1) == ["unparsable"]
    log.close()
    stop.set()
    with open(log_path, "ab") as fh:
        fh.write(b'{"event": "stopping"}\n')


def test_follow_reads_what_was_appended_to_the_old_file_before_rotation(log_path: Path) -> None:
    log_path.parent.mkdir()
    log_path.write_bytes(b'{"event": "starting"}\n')
    records = read(log_path, follow=True, poll_interval=0.02)
    assert next(records)["event"] == "starting"
    with open(log_path, "ab") as old:
        log_path.rename(log_path.with_name("mail.log.1"))
        log_path.write_bytes(b'{"event": "listening"}\n')
        old.write(b'{"event": "stopping"}\n')
    assert [next(records)["event"] for _ in range(2)] == ["stopping", "listening"]
    records.close()  # type: ignore[attr-defined]


def test_follow_in_a_separate_process_sees_lines_from_this_one(log_path: Path) -> None:
    log = MailLog(log_path)
    log.event("starting")
    log.flush()
    code = ("import sys\nfrom albatross.observe.maillog import read\n"
            "for i, r in enumerate(read(sys.argv[1], follow=True, poll_interval=0.02)):\n"
            "    print(r['event'], flush=True)\n"
            "    if i == 2: break\n")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(log_path)], env=env,
                            stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    log.event("listening")
    log.flush()
    log_path.rename(log_path.with_name("mail.log.1"))
    log.event("stopping")
    log.close()
    out, _ = proc.communicate(timeout=10)
    assert out.split() == ["starting", "listening", "stopping"]
    assert proc.returncode == 0


# --- albatross log ----------------------------------------------------------------------

def albatross_log(args: list[str], cwd: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(SRC),
           "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "albatross", "log", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60)


def sample_log(data_dir: Path) -> None:
    with MailLog(data_dir / "log" / "mail.log", clock=fixed_clock) as log:
        log.event("connect", session="s1", client="127.0.0.1")
        log.event("queued", qid="A1", session="s1", from_="a@x", to=["b@y"], size=10)
        log.event("disconnect", session="s1")
        log.event("pickup", qid="A2", from_="", to=["c@z"])
    with open(data_dir / "log" / "mail.log", "ab") as fh:
        fh.write(b"torn\n")


def test_log_command_prints_human_lines(tmp_path: Path) -> None:
    sample_log(tmp_path / "d")
    r = albatross_log(["--data-dir", "d"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "2026-11-28 07:31:02 s1 connect client=127.0.0.1",
        "2026-11-28 07:31:02 A1 queued session=s1 from=<a@x> to=<b@y> size=10",
        "2026-11-28 07:31:02 s1 disconnect",
        "2026-11-28 07:31:02 A2 pickup from=<> to=<c@z>",
        "- - - unparsable line=torn",
    ]


def test_log_command_filters_and_json(tmp_path: Path) -> None:
    sample_log(tmp_path / "d")
    r = albatross_log(["--data-dir", "d", "--qid", "A1", "--json"], tmp_path)
    (line,) = r.stdout.splitlines()
    assert json.loads(line)["event"] == "queued"
    r = albatross_log(["--data-dir", "d", "--event", "connect", "--event", "pickup"], tmp_path)
    assert [line.split()[3] for line in r.stdout.splitlines()] == ["connect", "pickup"]
    r = albatross_log(["--data-dir", "d", "-n", "2"], tmp_path)
    assert [line.split()[3] for line in r.stdout.splitlines()] == ["pickup", "unparsable"]
    r = albatross_log(["--data-dir", "d", "-n", "0"], tmp_path)
    assert r.stdout == ""
    assert albatross_log(["--data-dir", "d", "-n", "-1"], tmp_path).returncode == 2


def test_log_command_reads_the_configured_file(tmp_path: Path) -> None:
    with MailLog(tmp_path / "elsewhere.log") as log:
        log.event("starting")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "d"}"\n[log]\nfile = "{tmp_path / "elsewhere.log"}"\n')
    r = albatross_log(["--config", str(cfg)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[3] == "starting"


def test_log_command_missing_file_names_the_path(tmp_path: Path) -> None:
    r = albatross_log(["--data-dir", "nothing-here"], tmp_path)
    assert r.returncode == 1
    assert str(tmp_path / "nothing-here" / "log" / "mail.log") in r.stderr


def test_log_command_follows_until_interrupted(tmp_path: Path) -> None:
    sample_log(tmp_path / "d")
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-m", "albatross", "log", "--data-dir", "d",
                             "-f", "-n", "1"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().split()[3] == "unparsable"  # the backlog: last 1 line
    with MailLog(tmp_path / "d" / "log" / "mail.log") as log:
        log.event("stopping")
    assert proc.stdout.readline().split()[3] == "stopping"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0
    assert proc.stderr is not None and proc.stderr.read() == ""
