"""The queue-scale benchmark: Albatross relaying new mail with a huge deferred backlog.

Target (issue 3, "How fast"): with 1,000,000 messages deferred in the queue, Albatross stays
under 500 MB RSS and relays new mail at no less than 80% of its empty-queue rate.

1. Build the backlog fast: rows written straight into a fresh queue.db with the spool's own
   schema (``albatross.spool.schema.ensure_schema``), ids (``IdSource``) and envelope records
   (``Envelope.to_record``), in one transaction: QUEUE messages with an inline body of
   BODY_SIZE bytes, one recipient each at a domain the load never uses, schedule state
   'queued', one failed attempt behind them and the next one 30 days ahead. That is exactly
   what a deferred message looks like to the daemon.
2. Start Albatross on it (the spool's recovery reads every row once: the time from spawn to
   "listening" is reported) and, beside it, an Albatross on an empty data dir; each has its
   own smtp-sink as smart host. VmRSS and VmHWM (peak) of the big one are read after start,
   after each run and at the end.
3. Run the relay benchmark's load (relay.py: by default 10 sessions, 1 recipient, 5 KB),
   alternating empty and big queue, ``--repeat`` times; the end-to-end rate of each is
   measured exactly as relay.py does (until the sink has every new message and none of
   them is left in queue.db). The ratio big/empty of the medians is the figure.
4. Check: the sink saw no recipient of the backlog, the mail log shows no attempt at it,
   and after the daemon stopped the backlog is still all there.

    python3 bench/queue_scale.py [--messages 1000000] [--load-messages 4000] [--repeat 3]
                                 [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import REPO, machine_facts, run_all_cleanups, scratch_dir, tail
from relay import (
    DEFAULT_EVENT_LOOP,
    Load,
    Result,
    Server,
    Sink,
    albatross_config,
    check_counts,
    command_for,
    measure,
    median_run,
    postfix_version,
    start_server,
)

TARGET_QUEUE = 1_000_000
TARGET_RSS_MB = 500.0
TARGET_RATIO = 0.8
BACKLOG_DOMAIN = "deferred.invalid"  # never the load's domain; .invalid never resolves
BACKLOG_SENDER = "backlog-sender@bench.test"
RETRY_IN = 30 * 86400.0  # the backlog's next attempt: far beyond any run
_CHUNK = 20_000


# ------------------------------------------------------------------ the backlog


@dataclass(frozen=True)
class Backlog:
    """A queue.db built by build_backlog: how many rows, how long it took, how big it is."""

    messages: int
    body_size: int
    build_s: float
    db_bytes: int
    last_seq: int


def _body(size: int) -> bytes:
    """A plausible RFC 5322 message of exactly `size` bytes (CRLF lines)."""
    head = (b"From: <" + BACKLOG_SENDER.encode() + b">\r\nTo: <someone@" + BACKLOG_DOMAIN.encode()
            + b">\r\nSubject: deferred backlog\r\nMessage-ID: <backlog@bench.test>\r\n\r\n")
    line = b"The quick brown fox jumps over the lazy dog, waiting for its next attempt.\r\n"
    body = head + line * (max(0, size - len(head)) // len(line) + 1)
    return body[: size - 2] + b"\r\n" if size >= len(head) + 2 else body[:size]


def build_backlog(data_dir: Path, count: int, body_size: int,
                  src: Path = REPO / "src") -> Backlog:
    """Write `count` deferred messages into data_dir/queue.db, which must not exist yet.

    Journal off and synchronous off while building: a build that fails is thrown away with
    its temp dir, so there is nothing to roll back or to make durable. The database is
    switched to WAL at the end, as the daemon leaves it. The format comes from the albatross
    package in `src` (the tree under test)."""
    sys.path.insert(0, str(src.resolve()))
    from albatross.model import Envelope, Recipient
    from albatross.spool.ids import IdSource
    from albatross.spool.schema import FORMAT_VERSION, ensure_schema

    t0 = time.monotonic()
    data_dir.mkdir(parents=True, exist_ok=True)
    db = data_dir / "queue.db"
    if db.exists():
        raise RuntimeError(f"{db} exists already")
    now = time.time()
    arrival = now - 3600.0
    placeholder = "@@RCPT@@"
    reply = f"451 4.4.1 {BACKLOG_DOMAIN}: connection timed out (bench backlog)"
    record = json.dumps(Envelope(
        sender=BACKLOG_SENDER,
        recipients=[Recipient(placeholder, reply=reply, remote=f"mx.{BACKLOG_DOMAIN}",
                              updated=now - 600.0)],
        client_ip="127.0.0.1", client_port=40000, client_name="localhost", helo="bench",
        protocol="ESMTP", arrival=arrival, source="smtp",
    ).to_record(), ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    before, _, after = record.partition(placeholder)
    body = _body(body_size)
    ids = IdSource("A")

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=OFF").fetchone()
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-262144")  # 256 MiB for the build only
        ensure_schema(conn)
        assert int(conn.execute("PRAGMA user_version").fetchone()[0]) == FORMAT_VERSION
        conn.execute("BEGIN")
        done = 0
        while done < count:
            n = min(_CHUNK, count - done)
            chunk = [ids.next() for _ in range(n)]
            conn.executemany(
                "INSERT INTO message (id, arrival, size, body) VALUES (?, ?, ?, ?)",
                ((qid, arrival, len(body), body) for qid in chunk))
            conn.executemany(
                "INSERT INTO envelope (id, record) VALUES (?, ?)",
                ((qid, f"{before}user{done + i}@{BACKLOG_DOMAIN}{after}")
                 for i, qid in enumerate(chunk)))
            # Spread over an hour, 30 days ahead: all far in the future, in index order.
            conn.executemany(
                "INSERT INTO schedule (id, state, next_attempt, attempts, warned, last_error)"
                " VALUES (?, 'queued', ?, 1, 1, ?)",
                ((qid, now + RETRY_IN + (done + i) * 3600.0 / count, reply)
                 for i, qid in enumerate(chunk)))
            done += n
        conn.execute("COMMIT")
        last_seq = int(conn.execute("SELECT coalesce(max(seq), 0) FROM message").fetchone()[0])
        conn.execute("PRAGMA journal_mode=WAL").fetchone()
    finally:
        conn.close()
    return Backlog(count, len(body), time.monotonic() - t0, db.stat().st_size, last_seq)


def backlog_left(data_dir: Path, last_seq: int) -> dict[str, int]:
    """What is left of the backlog (rows up to last_seq) by schedule state, read after the
    daemon stopped."""
    uri = (data_dir / "queue.db").resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
        rows = conn.execute(
            "SELECT s.state, count(*) FROM message m JOIN schedule s ON s.id = m.id"
            " WHERE m.seq <= ? GROUP BY s.state", (last_seq,)).fetchall()
    return {str(state): int(n) for state, n in rows}


# ------------------------------------------------------------------ memory


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak since start) of pid, in MB (10^6 bytes)."""
    out = {"rss_mb": 0.0, "peak_rss_mb": 0.0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "VmRSS":
                out["rss_mb"] = round(int(value.split()[0]) * 1024 / 1e6, 1)
            elif key == "VmHWM":
                out["peak_rss_mb"] = round(int(value.split()[0]) * 1024 / 1e6, 1)
    except OSError:
        pass
    return out


# ------------------------------------------------------------------ runs


@dataclass
class Side:
    """One Albatross (empty or big queue) with its sink and its runs."""

    name: str
    server: Server
    sink: Sink
    runs: list[Result] = field(default_factory=list)
    memory: list[dict[str, float]] = field(default_factory=list)


def run_once(side: Side, load: Load, concurrency: int) -> Result:
    """The relay load against one side; only the messages of this run are waited for."""
    r = Result(f"albatross-{side.name}", load.sessions, load.recipients, load.messages,
               concurrency)
    server, sink = side.server, side.sink
    seq = server.last_seq()
    delivered_before = server.events("delivered")
    sink_before = sink.counts()
    try:
        measure(r, load, server.port, sink, server.cpu, lambda: server.rows_after(seq))
        time.sleep(0.3)  # the mail log is flushed every 0.2 s
        check_counts(r, load, sink, sink_before, server.events("delivered") - delivered_before)
    except (RuntimeError, TimeoutError, OSError, sqlite3.Error) as exc:
        r.error = r.error or str(exc)
    if server.proc.poll() is not None and r.error is None:
        r.error = f"the server exited with {server.proc.returncode}:\n{tail(server.log)}"
    side.runs.append(r)
    side.memory.append(memory_mb(server.proc.pid))
    return r


def summarize(report: dict[str, object], big: Side, empty: Side, queue: int) -> dict[str, object]:
    """Medians, the ratio, the targets, and (below 1,000,000) a clearly marked linear
    extrapolation of startup time and memory growth."""
    mb, me = median_run(big.runs), median_run(empty.runs)
    ratio = (round(mb.e2e_msgs_per_s / me.e2e_msgs_per_s, 3)
             if mb.e2e_msgs_per_s and me.e2e_msgs_per_s and not (mb.error or me.error) else None)
    start_mem = report["big_after_start"]
    assert isinstance(start_mem, dict)
    peak = max([start_mem["peak_rss_mb"], *(m["peak_rss_mb"] for m in big.memory)])
    empty_peak = max([0.0, *(m["peak_rss_mb"] for m in empty.memory)])
    out: dict[str, object] = {
        "queue": queue,
        "empty_e2e_msgs_per_s": me.e2e_msgs_per_s,
        "big_e2e_msgs_per_s": mb.e2e_msgs_per_s,
        "ratio_big_over_empty": ratio,
        "empty_cpu_ms_per_msg": me.cpu_ms_per_msg,
        "big_cpu_ms_per_msg": mb.cpu_ms_per_msg,
        "big_peak_rss_mb": peak,
        "empty_peak_rss_mb": empty_peak,
        "startup_s": report["big_startup_s"],
        "empty_startup_s": report["empty_startup_s"],
        "rss_target_met": peak < TARGET_RSS_MB,
        "rate_target_met": None if ratio is None else ratio >= TARGET_RATIO,
        "measured_at_target_size": queue >= TARGET_QUEUE,
    }
    if queue < TARGET_QUEUE:
        scale = TARGET_QUEUE / queue
        startup = float(report["big_startup_s"]) - float(report["empty_startup_s"])  # type: ignore[arg-type]
        out["extrapolated_to_1m"] = {
            "note": ("EXTRAPOLATED, not measured: linear in the queue size from the one size "
                     "measured; the rate ratio is not extrapolated"),
            "startup_s": round(float(report["empty_startup_s"]) + startup * scale, 1),  # type: ignore[arg-type]
            "peak_rss_mb": round(empty_peak + max(0.0, peak - empty_peak) * scale, 1),
        }
    return out


def print_summary(report: dict[str, object]) -> None:
    s = report["summary"]
    assert isinstance(s, dict)
    print(f"queue: {s['queue']:,} deferred messages; built in {report['build_s']:.1f} s, "
          f"queue.db {int(report['db_bytes']) / 1e9:.2f} GB")  # type: ignore[call-overload]
    print(f"startup: {s['startup_s']:.1f} s with the backlog, {s['empty_startup_s']:.1f} s empty")
    head = (f"{'run':>3}  {'queue':<6} {'e2e msg/s':>9} {'acc/s':>6} {'CPU ms/msg':>10} "
            f"{'RSS MB':>7} {'peak MB':>7} {'load':>5}  count")
    print(head)
    print("-" * len(head))
    runs = report["runs"]
    assert isinstance(runs, list)
    for i, run in enumerate(runs):
        r, m = run["result"], run["memory"]
        e2e = f"{r['e2e_msgs_per_s']:.0f}" if r["e2e_msgs_per_s"] else "-"
        count = "ok" if r["count_ok"] else f"ERROR {(r['error'] or '').splitlines()[0]}"
        print(f"{i + 1:>3}  {run['queue']:<6} {e2e:>9} {r['accepted_per_s']:>6.0f} "
              f"{r['cpu_ms_per_msg']:>10.2f} {m['rss_mb']:>7.1f} {m['peak_rss_mb']:>7.1f} "
              f"{r['loadavg_before']:>5.1f}  {count}")
    print(f"median e2e: empty {s['empty_e2e_msgs_per_s'] or 0:.0f}/s, "
          f"big {s['big_e2e_msgs_per_s'] or 0:.0f}/s, ratio {s['ratio_big_over_empty']} "
          f"(target >= {TARGET_RATIO}: {s['rate_target_met']})")
    print(f"peak RSS with the backlog: {s['big_peak_rss_mb']} MB "
          f"(target < {TARGET_RSS_MB:.0f} MB: {s['rss_target_met']})")
    if "extrapolated_to_1m" in s:
        x = s["extrapolated_to_1m"]
        print(f"EXTRAPOLATED to 1,000,000 (not measured): startup {x['startup_s']} s, "
              f"peak RSS {x['peak_rss_mb']} MB")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=TARGET_QUEUE,
                   help="deferred messages in the backlog (the queue size)")
    p.add_argument("--body-size", type=int, default=2048, help="bytes per backlog message")
    p.add_argument("--load-messages", type=int, default=4000,
                   help="new messages per measured run")
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--recipients", type=int, default=1)
    p.add_argument("--size", type=int, default=5120, help="bytes per new message")
    p.add_argument("--concurrency", type=int, default=50, help="Albatross [queue] concurrency")
    p.add_argument("--repeat", type=int, default=3, help="runs per side, alternating")
    p.add_argument("--startup-timeout", type=float, default=1800.0,
                   help="seconds the big-queue server may take to say 'listening'")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--albatross-cmd", help="argv prefix before 'serve ...'")
    p.add_argument("--albatross-src", type=Path,
                   help="run `python3 -m albatross` from this src dir instead of the repo's")
    p.add_argument("--event-loop", choices=("asyncio", "auto"), default=DEFAULT_EVENT_LOOP)
    p.add_argument("--tmpdir", help="where the data dirs go (default: the system tmp)")
    args = p.parse_args(argv)
    numbers = [args.messages, args.body_size, args.load_messages, args.sessions, args.recipients,
               args.size, args.concurrency, args.repeat]
    if min(numbers) < 1:
        p.error("every count and size must be positive")
    if args.messages > 10_000_000 or args.repeat > 20 or args.load_messages > 1_000_000:
        p.error("keep it bounded: --messages <= 10,000,000, --repeat <= 20, "
                "--load-messages <= 1,000,000")
    if args.body_size < 128 or args.body_size > 256 * 1024:
        p.error("--body-size must be 128 .. 262144 (inline bodies only)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cmd = command_for(args.albatross_cmd, args.event_loop, args.albatross_src)
    load = Load(args.load_messages, args.sessions, args.recipients, args.size)
    report: dict[str, object] = {
        "benchmark": "queue_scale",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine_facts(), "postfix": postfix_version()},
        "load": {"messages": args.load_messages, "sessions": args.sessions,
                 "recipients": args.recipients, "size": args.size, "repeat": args.repeat},
        "albatross_command": cmd.describe(),
        "concurrency": args.concurrency,
        "targets": {"queue": TARGET_QUEUE, "rss_mb_below": TARGET_RSS_MB,
                    "rate_ratio_at_least": TARGET_RATIO},
    }
    failed = False
    try:
        work = scratch_dir("queue-scale-", args.tmpdir)
        print(f"building {args.messages:,} deferred messages ...", flush=True)
        backlog = build_backlog(work / "big" / "data", args.messages, args.body_size,
                                args.albatross_src or REPO / "src")
        report.update(queue=backlog.messages, body_size=backlog.body_size,
                      build_s=round(backlog.build_s, 2), db_bytes=backlog.db_bytes)
        print(f"built in {backlog.build_s:.1f} s ({backlog.db_bytes / 1e9:.2f} GB); "
              "starting Albatross on it ...", flush=True)

        sides: dict[str, Side] = {}
        for name, timeout in (("big", args.startup_timeout), ("empty", 60.0)):
            root = work / name
            root.mkdir(exist_ok=True)
            sink = Sink(root)
            config = root / "albatross.toml"
            config.write_text(albatross_config(sink.port, args.concurrency))
            server = start_server(cmd, root / "data", config, root / "albatross.log", timeout)
            sides[name] = Side(name, server, sink)
            report[f"{name}_startup_s"] = round(server.startup_s, 2)
            report[f"{name}_after_start"] = memory_mb(server.proc.pid)
        big, empty = sides["big"], sides["empty"]
        print(f"started in {big.server.startup_s:.1f} s (empty: {empty.server.startup_s:.1f} s)",
              flush=True)

        runs: list[dict[str, object]] = []
        for _ in range(args.repeat):
            for side in (empty, big):  # alternate so that drift hits both alike
                r = run_once(side, load, args.concurrency)
                runs.append({"queue": side.name, "result": asdict(r),
                             "memory": side.memory[-1]})
                failed = failed or bool(r.error or r.source_warnings)
                if r.error or r.source_warnings:
                    print(f"!!! {side.name}: {r.error or ''} {'; '.join(r.source_warnings[:5])}",
                          file=sys.stderr)
        report["runs"] = runs
        report["big_at_end"] = memory_mb(big.server.proc.pid)

        # The backlog must not have been touched: nothing of it at the sink or attempted.
        leaked = big.sink.counts().domains.get(BACKLOG_DOMAIN, 0)
        attempted = 0
        with contextlib.suppress(OSError), open(big.server.mail_log, errors="replace") as f:
            attempted = sum(1 for line in f
                            if '"event": "attempt"' in line and BACKLOG_DOMAIN in line)
        for side in (big, empty):
            side.server.stop()
        left = backlog_left(big.server.data_dir, backlog.last_seq)
        report["backlog_check"] = {"at_sink": leaked, "attempted": attempted, "left": left}
        if leaked or attempted or left != {"queued": backlog.messages}:
            failed = True
            print(f"!!! the backlog was touched: {report['backlog_check']}", file=sys.stderr)
        report["summary"] = summarize(report, big, empty, backlog.messages)
    finally:
        run_all_cleanups()
    if "summary" in report:
        print_summary(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if failed or "summary" not in report else 0


if __name__ == "__main__":
    sys.exit(main())
