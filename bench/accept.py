"""The acceptance benchmark: Albatross and a private Postfix under the same smtp-source load.

For each concurrency level, in one run and on the same machine:

1. Albatross (``serve`` on a fresh data dir): smtp-source's wall time gives messages/s
   accepted; the server's CPU is read before and after; then the rows in DATA_DIR/queue.db
   are counted and must equal the number sent.
2. Postfix, one fresh private instance per mode (see postfix_instance.py): ``relay``
   (to an smtp-sink; the clock and the CPU meter stop when the queue is empty, giving the
   relayed rate, while smtp-source's own wall time gives the accepted rate), and the
   accept-only modes ``hold`` and ``defer`` (the clock stops when every message has reached
   the hold or deferred queue).

CPU is the server's whole cgroup (cpu.stat usage_usec) when cgroup v2 is writable, else a
/proc process-tree sum; the other figure is kept as a cross-check. Everything listens on
127.0.0.1 only, runs for a bounded time, and is stopped and deleted on any exit.

    python3 bench/accept.py [--messages 4000] [--sessions 10,50] [--size 5120] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The bench dir is not a package: its modules import each other as top-level names.
from harness import (
    AlbatrossCommand,
    CpuSample,
    machine_facts,
    run_all_cleanups,
    scratch_dir,
    start_albatross,
    tail,
)
from postfix_instance import MODES, start_postfix, start_sink

SENDER = "sender@bench.test"
RCPT = "rcpt@bench.test"


@dataclass(frozen=True)
class Load:
    """One smtp-source load: how many messages, how many parallel sessions, how big."""

    messages: int
    sessions: int
    size: int
    reuse: bool

    def argv(self, port: int) -> list[str]:
        return [
            "smtp-source", "-c", *(["-d"] if self.reuse else []),
            "-s", str(self.sessions), "-m", str(self.messages), "-l", str(self.size),
            "-f", SENDER, "-t", RCPT, f"127.0.0.1:{port}",
        ]

    @property
    def timeout(self) -> float:
        # Generous: 20 messages/s would be far below either server on any machine.
        return max(120.0, self.messages / 20)


@dataclass
class Result:
    """One server under one load. Rates are messages/s; CPU is the server's, not the client's."""

    system: str
    sessions: int
    messages: int
    accept_wall_s: float = 0.0
    accepted_per_s: float = 0.0
    settled_wall_s: float | None = None
    settled_per_s: float | None = None
    cpu_ms: float = 0.0
    cpu_ms_per_msg: float = 0.0
    cores_used: float = 0.0
    cpu_method: str = ""
    cpu_ms_crosscheck: float = 0.0
    stored: int | None = None
    count_ok: bool = False
    source_warnings: list[str] = field(default_factory=list)
    error: str | None = None
    # 1-minute load average when the run began: a high figure means other work shared the
    # machine and the run is noisy (the whole point of reading this next to Postfix's).
    loadavg_before: float = field(default_factory=lambda: round(os.getloadavg()[0], 2))


def run_source(load: Load, port: int) -> tuple[float, list[str]]:
    """Run smtp-source; returns its wall time and any warning/error lines it printed."""
    t0 = time.monotonic()
    proc = subprocess.run(load.argv(port), capture_output=True, text=True,
                          timeout=load.timeout, check=False)
    wall = time.monotonic() - t0
    lines = [ln for ln in (proc.stderr + proc.stdout).replace("\r", "\n").splitlines()
             if "warning" in ln or "error" in ln or "fatal" in ln]
    if proc.returncode != 0:
        lines.append(f"smtp-source exited with {proc.returncode}")
    return wall, lines


def _fill(r: Result, wall: float, before: CpuSample, after: CpuSample, method: str) -> None:
    r.cpu_ms = (after.usec - before.usec) / 1000
    r.cpu_ms_crosscheck = (after.tree_usec - before.tree_usec) / 1000
    r.cpu_ms_per_msg = r.cpu_ms / r.messages
    r.cores_used = r.cpu_ms / 1000 / wall
    r.cpu_method = method if method == "proc-tree" else f"{method} (crosscheck: proc-tree)"


def bench_albatross(cmd: AlbatrossCommand, load: Load, config: Path | None,
                    base: str | None, label: str) -> Result:
    r = Result(label, load.sessions, load.messages)
    work = scratch_dir("albatross-bench-", base)
    server = start_albatross(cmd, work, config=config)
    try:
        before = server.cpu.sample()
        r.accept_wall_s, r.source_warnings = run_source(load, server.port)
        after = server.cpu.sample()
        r.accepted_per_s = load.messages / r.accept_wall_s
        _fill(r, r.accept_wall_s, before, after, server.cpu.method)
    finally:
        server.stop()
    db = server.data_dir / "queue.db"
    try:
        with sqlite3.connect(db) as conn:
            r.stored = int(conn.execute("select count(*) from message").fetchone()[0])
    except sqlite3.Error as exc:
        r.error = f"cannot count messages in {db}: {exc}"
    r.count_ok = r.stored == load.messages
    if not r.count_ok:
        r.error = r.error or f"queue.db holds {r.stored} messages, {load.messages} were sent"
        print(tail(server.log), file=sys.stderr)
    return r


def _settled(mode: str, counts: dict[str, int], n: int) -> bool:
    busy = counts["maildrop"] + counts["incoming"] + counts["active"]
    if mode == "relay":
        return busy + counts["deferred"] + counts["hold"] == 0
    return busy == 0 and counts["hold" if mode == "hold" else "deferred"] >= n


def bench_postfix(mode: str, load: Load, base: str | None) -> Result:
    r = Result(f"postfix-{mode}", load.sessions, load.messages)
    root = scratch_dir(f"postfix-bench-{mode}-", base)
    sink_port, stop_sink = start_sink(root)
    pf = start_postfix(root / "instance", mode, sink_port)
    try:
        before = pf.cpu.sample()
        t0 = time.monotonic()
        r.accept_wall_s, r.source_warnings = run_source(load, pf.port)
        r.accepted_per_s = load.messages / r.accept_wall_s
        # Stop the clock when the queue has settled; 0.05 s polling granularity.
        deadline = t0 + load.timeout
        counts = pf.queue_counts()
        while not _settled(mode, counts, load.messages) and time.monotonic() < deadline:
            time.sleep(0.05)
            counts = pf.queue_counts()
        settled = time.monotonic() - t0
        after = pf.cpu.sample()
        if _settled(mode, counts, load.messages):
            r.settled_wall_s = settled
            r.settled_per_s = load.messages / settled
        _fill(r, settled, before, after, pf.cpu.method)
        if mode == "relay":
            # postlogd writes asynchronously; give it a moment to catch up.
            for _ in range(50):
                r.stored = pf.maillog().count("status=sent")
                if r.stored >= load.messages:
                    break
                time.sleep(0.1)
        else:
            r.stored = counts[mode if mode == "hold" else "deferred"]
        r.count_ok = r.stored == load.messages
        if not r.count_ok:
            r.error = (f"{r.stored} of {load.messages} messages "
                       f"{'relayed' if mode == 'relay' else 'queued'}; queues: {counts}")
    finally:
        pf.close()
        stop_sink()
    return r


def one_run(system: str, cmd: AlbatrossCommand, load: Load, args: argparse.Namespace) -> Result:
    """One measured run; a server that fails to start or times out becomes an error row."""
    try:
        if system.startswith("postfix-"):
            return bench_postfix(system.removeprefix("postfix-"), load, args.tmpdir)
        return bench_albatross(cmd, load, args.albatross_config, args.tmpdir, system)
    except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
        return Result(system, load.sessions, load.messages, error=str(exc))


def median_run(runs: list[Result]) -> Result:
    """The run with the median accepted rate (the lower middle one for an even count);
    a failed run wins, so that errors are never hidden by a good repeat."""
    failed = [r for r in runs if r.error]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda r: r.accepted_per_s)
    return ordered[(len(ordered) - 1) // 2]


def ratios(rows: list[Result]) -> dict[str, dict[str, float]]:
    """Albatross / Postfix, keyed "albatross/postfix-MODE": >1 on rate and <1 on CPU favour
    Albatross."""
    alb = next((r for r in rows if not r.system.startswith("postfix") and not r.error), None)
    out: dict[str, dict[str, float]] = {}
    if alb is None:
        return out
    for r in rows:
        if r.system.startswith("postfix") and r.accepted_per_s and r.cpu_ms_per_msg:
            out[f"{alb.system}/{r.system}"] = {
                "accepted_rate": round(alb.accepted_per_s / r.accepted_per_s, 2),
                "cpu_per_msg": round(alb.cpu_ms_per_msg / r.cpu_ms_per_msg, 2),
            }
    return out


def print_table(levels: list[dict[str, object]]) -> None:
    head = (f"{'sess':>4}  {'system':<18} {'accepted/s':>10} {'settled/s':>9} "
            f"{'CPU ms/msg':>10} {'xcheck':>7} {'cores':>5} {'load':>5}  count")
    print(head)
    print("-" * len(head))
    for level in levels:
        rows = level["results"]
        assert isinstance(rows, list)
        for r in rows:
            if r["error"] and not r["accepted_per_s"]:
                last = r["error"].strip().splitlines()[-1]
                print(f"{r['sessions']:>4}  {r['system']:<18} ERROR: {last}")
                continue
            settled = f"{r['settled_per_s']:.0f}" if r["settled_per_s"] else "-"
            xcheck = r["cpu_ms_crosscheck"] / r["messages"]
            count = "ok" if r["count_ok"] else f"MISMATCH {r['stored']}/{r['messages']}"
            print(f"{r['sessions']:>4}  {r['system']:<18} {r['accepted_per_s']:>10.0f} "
                  f"{settled:>9} {r['cpu_ms_per_msg']:>10.2f} {xcheck:>7.2f} "
                  f"{r['cores_used']:>5.2f} {r['loadavg_before']:>5.1f}  {count}")
        ratio_map = level["ratios"]
        assert isinstance(ratio_map, dict)
        for pair, q in ratio_map.items():
            print(f"{'':>4}  {pair}: accepted rate x{q['accepted_rate']}, "
                  f"CPU per message x{q['cpu_per_msg']}")
    print("accepted/s: from smtp-source's wall time. settled/s: until the Postfix queue is "
          "empty (relay) or every message is in hold/deferred. CPU: server only; xcheck is "
          "the /proc tree figure. load: 1-min load average before the run (noise if high).")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=4000)
    p.add_argument("--sessions", default="10,50", help="comma-separated concurrency levels")
    p.add_argument("--size", type=int, default=5120, help="message size in bytes (smtp-source -l)")
    p.add_argument("--reuse", action="store_true",
                   help="send every message of a session over one connection (smtp-source -d)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per system and level; the table shows the median run")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--postfix-modes", default="relay,hold",
                   help=f"comma-separated subset of {','.join(MODES)}; empty for none")
    p.add_argument("--no-albatross", action="store_true", help="run the Postfix side only")
    p.add_argument("--standin", action="store_true",
                   help="benchmark bench/standin.py instead of Albatross")
    p.add_argument("--albatross-cmd",
                   help="argv prefix before 'serve ...' (default: python3 -m albatross with "
                        "PYTHONPATH=src)")
    p.add_argument("--albatross-config", type=Path, help="passed to serve as --config")
    p.add_argument("--tmpdir", help="where data dirs and queues go (default: the system tmp)")
    args = p.parse_args(argv)
    args.levels = [int(x) for x in args.sessions.split(",") if x]
    args.modes = [m for m in args.postfix_modes.split(",") if m]
    for m in args.modes:
        if m not in MODES:
            p.error(f"unknown Postfix mode {m!r}")
    if min(args.messages, args.size, args.repeat, *args.levels) < 1:
        p.error("--messages, --sessions, --size and --repeat must be positive")
    if args.repeat > 20 or args.messages > 1_000_000:
        p.error("keep it bounded: --repeat at most 20, --messages at most 1,000,000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.standin:
        cmd, label = AlbatrossCommand.standin(), "standin"
    elif args.albatross_cmd:
        cmd, label = AlbatrossCommand(tuple(shlex.split(args.albatross_cmd)), ()), "albatross"
    else:
        cmd, label = AlbatrossCommand.default(), "albatross"
    levels: list[dict[str, object]] = []
    failed = False
    try:
        for sessions in args.levels:
            load = Load(args.messages, sessions, args.size, args.reuse)
            systems = ([] if args.no_albatross else [label]) + [f"postfix-{m}" for m in args.modes]
            runs: dict[str, list[Result]] = {name: [] for name in systems}
            # Round-robin over the systems so that drift on a shared VM hits them alike.
            for _ in range(args.repeat):
                for name in systems:
                    runs[name].append(one_run(name, cmd, load, args))
                    # Each cleanup removes its temp dir and cgroup as soon as the run ends.
                    run_all_cleanups()
            rows = [median_run(runs[name]) for name in systems]
            for r in (r for name in systems for r in runs[name]):
                if r.error or r.source_warnings:
                    failed = True
                    print(f"!!! {r.system} at {sessions} sessions: {r.error or ''} "
                          f"{'; '.join(r.source_warnings[:5])}", file=sys.stderr)
            levels.append({
                "sessions": sessions,
                "results": [asdict(r) for r in rows],
                "ratios": ratios(rows),
                "all_runs": {name: [asdict(r) for r in rs] for name, rs in runs.items()},
            })
    finally:
        run_all_cleanups()
    report = {
        "benchmark": "accept",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_facts(),
        "load": {"messages": args.messages, "size": args.size, "reuse": args.reuse,
                 "repeat": args.repeat,
                 "sessions": args.levels, "sender": SENDER, "rcpt": RCPT},
        "albatross_command": None if args.no_albatross else cmd.describe(),
        "levels": levels,
    }
    print_table(levels)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
