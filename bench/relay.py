"""The end-to-end relay benchmark: smtp-source -> server -> smtp-sink, Albatross beside Postfix.

For each cell (concurrent sessions x recipients per message), in one run and on one machine:

1. Albatross (``serve`` on a fresh data dir, delivering to an smtp-sink as its smart host);
2. a private Postfix (postfix_instance.py, mode ``relay``: relayhost = the sink).

smtp-source sends MESSAGES messages of SIZE bytes with RECIPIENTS recipients each. The clock
starts just before smtp-source connects and stops at the first 20 ms poll at which the sink
has received every message (its ``-c`` counter, read live through a pty) and the server's
queue is empty (Albatross: no row left in queue.db's message table; Postfix: no queue file).
Both servers fsync every message before their 250, as always. After the clock stops, the
sink's dump (``-D``) is counted: it must hold exactly MESSAGES messages and
MESSAGES x RECIPIENTS recipients, and the server's own log must say the same.

CPU is the server's whole cgroup (cpu.stat), all of Postfix's processes included, with a
/proc process-tree sum as cross-check; never the client, the sink or this script. Everything
listens on 127.0.0.1 only, is bounded in time and count, and is stopped and deleted on any
exit.

    python3 bench/relay.py [--messages 4000] [--sessions 10,50] [--recipients 1,10]
                           [--concurrency 50] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pty
import pwd
import re
import shlex
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The bench dir is not a package: its modules import each other as top-level names.
from harness import (
    AlbatrossCommand,
    Cgroup,
    CpuMeter,
    CpuSample,
    free_port,
    machine_facts,
    on_exit,
    run_all_cleanups,
    scratch_dir,
    start,
    stop_process,
    tail,
    wait_for_line,
    wait_port,
)
from postfix_instance import PostfixInstance, start_postfix

SENDER = "sender@bench.test"
RCPT = "rcpt@bench.test"  # smtp-source -r N makes rcpt@, 2rcpt@ ... Nrcpt@ of it
POLL = 0.02  # seconds between two looks at the sink and the queue

# The uvloop transport is not an asyncio.Transport subclass, and delivery/smtp.py's
# _Wire.connection_made asserts that it is: under uvloop every outgoing connection fails and
# nothing is ever delivered. Until that is fixed the benchmark runs the standard loop.
DEFAULT_EVENT_LOOP = "auto"


# ------------------------------------------------------------------ the load


@dataclass(frozen=True)
class Load:
    """One smtp-source load: how many messages, sessions, recipients per message, bytes."""

    messages: int
    sessions: int
    recipients: int
    size: int
    limit_s: float | None = None  # overrides the default bound on sending plus draining

    def argv(self, port: int) -> list[str]:
        return [
            "smtp-source", "-s", str(self.sessions), "-m", str(self.messages),
            "-r", str(self.recipients), "-l", str(self.size),
            "-f", SENDER, "-t", RCPT, f"127.0.0.1:{port}",
        ]

    @property
    def timeout(self) -> float:
        if self.limit_s is not None:
            return self.limit_s
        # Generous: 10 messages/s end to end would be far below either server anywhere.
        return max(120.0, self.messages / 10)


def run_source(load: Load, port: int) -> tuple[float, list[str]]:
    """Run smtp-source to the end; returns its wall time and any warning or error it printed."""
    t0 = time.monotonic()
    proc = subprocess.run(load.argv(port), capture_output=True, text=True,
                          timeout=load.timeout, check=False)
    wall = time.monotonic() - t0
    lines = [ln for ln in (proc.stderr + proc.stdout).replace("\r", "\n").splitlines()
             if "warning" in ln or "error" in ln or "fatal" in ln]
    if proc.returncode != 0:
        lines.append(f"smtp-source exited with {proc.returncode}")
    return wall, lines


# ------------------------------------------------------------------ the sink


_COUNTER = re.compile(rb"mesg=(\d+)")
_MAIL_MARK = b"\nX-Mail-Args: "
_RCPT_LINE = re.compile(rb"\nX-Rcpt-Args: <?([^>\s]*)")


@dataclass(frozen=True)
class SinkCounts:
    """What the sink's dump holds: messages, recipients, and recipients per domain."""

    messages: int
    recipients: int
    domains: dict[str, int]


class Sink:
    """smtp-sink on 127.0.0.1 with a live message counter and a dump of every transaction.

    ``-c`` prints running counters, but only a terminal gets them unbuffered (to a pipe or a
    file they arrive at exit), so its stdout is a pty that a thread drains continuously (a
    full pty would stall the sink). The counter ``mesg`` counts received "." lines, i.e.
    finished messages. ``-D`` appends each transaction to one dump file; its
    ``X-Rcpt-Args`` records are the recipients the sink accepted. The dump lives in page
    cache (smtp-sink never fsyncs), and the sink runs outside both servers' cgroups."""

    def __init__(self, root: Path) -> None:
        self.dump_dir = root / "sink-dump"
        self.dump_dir.mkdir()
        # smtp-sink drops to the postfix user (-u) before writing the dump.
        pw = pwd.getpwnam("postfix")
        os.chown(self.dump_dir, pw.pw_uid, pw.pw_gid)
        self.port = free_port()
        self.log = root / "smtp-sink.log"
        self._messages = 0
        master, slave = pty.openpty()
        logf = open(self.log, "ab")  # noqa: SIM115 - closed by stop()
        try:
            # -m: room for every connection either server may open at once (default 256).
            self.proc = subprocess.Popen(
                ["smtp-sink", "-c", "-u", "postfix", "-m", "1000",
                 "-D", str(self.dump_dir / "dump"), f"127.0.0.1:{self.port}", "1024"],
                stdin=subprocess.DEVNULL, stdout=slave, stderr=logf, start_new_session=True)
        finally:
            os.close(slave)
        self._master = master
        self._reader = threading.Thread(target=self._drain, name="sink-counter", daemon=True)
        self._reader.start()

        def stop() -> None:
            try:
                stop_process(self.proc)
            finally:
                self._reader.join(5.0)
                logf.close()

        self.stop = on_exit(f"smtp-sink :{self.port}", stop)
        wait_port(self.port, 10.0)

    def _drain(self) -> None:
        pending = b""
        try:
            while True:
                try:
                    chunk = os.read(self._master, 65536)
                except OSError:  # EIO: the sink exited and the pty has no writer left
                    break
                if not chunk:
                    break
                # Counter lines end in \r; a line cut by the read is completed next time.
                pending += chunk
                done, _, pending = pending.rpartition(b"\r")
                found = _COUNTER.findall(done)
                if found:
                    self._messages = max(self._messages, int(found[-1]))
        finally:
            os.close(self._master)

    @property
    def messages(self) -> int:
        """Messages the sink has fully received so far (live)."""
        return self._messages

    def alive(self) -> bool:
        return self.proc.poll() is None

    def counts(self) -> SinkCounts:
        """Count the dump. Several transactions append to the one file at once, but each
        one's sink-generated header lines are written together, so every X-Mail-Args and
        X-Rcpt-Args record starts a line."""
        data = b"".join(p.read_bytes() for p in sorted(self.dump_dir.iterdir()) if p.is_file())
        domains: dict[str, int] = {}
        recipients = 0
        for m in _RCPT_LINE.finditer(data):
            recipients += 1
            domain = m.group(1).rpartition(b"@")[2].decode("ascii", "replace").lower()
            domains[domain] = domains.get(domain, 0) + 1
        return SinkCounts(data.count(_MAIL_MARK), recipients, domains)

    def wait_counts(self, messages: int, recipients: int, timeout: float = 3.0) -> SinkCounts:
        """The dump's counts once they reach the expected figures (the last transaction's
        data may still be in the sink's buffer for a moment), or after timeout."""
        deadline = time.monotonic() + timeout
        counts = self.counts()
        while ((counts.messages < messages or counts.recipients < recipients)
               and time.monotonic() < deadline):
            time.sleep(0.05)
            counts = self.counts()
        return counts


# ------------------------------------------------------------------ Albatross


def albatross_config(sink_port: int, concurrency: int, extra: str = "",
                     workers: int = 1) -> str:
    """The relay configuration: deliver everything to the sink as smart host, no TLS (the
    sink has none), and room for every benchmark session from 127.0.0.1. `workers` > 1
    runs that many worker processes (docs/workers.md)."""
    return (
        "# Generated by bench/relay.py for one benchmark run.\n"
        + (f"workers = {workers}\n" if workers > 1 else "")
        + "[queue]\n"
        "deliver = true\n"
        f"concurrency = {concurrency}\n"
        "[delivery]\n"
        f'relay = "127.0.0.1:{sink_port}"\n'
        'tls = "none"\n'
        'relay_tls = "none"\n'
        "[smtp]\n"
        "max_connections_per_ip = 1000\n"
        "max_connections = 2000\n"
        # Postfix runs with smtpd_peername_lookup = no: no reverse DNS on either side.
        "[policy]\n"
        "reverse_dns = false\n"
        + extra
    )


@dataclass
class Server:
    """A running Albatross: its port, data dir, CPU meter and how long it took to start."""

    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log: Path
    cpu: CpuMeter
    startup_s: float
    stop: Callable[[], None]

    @property
    def mail_log(self) -> Path:
        return self.data_dir / "log" / "mail.log"

    def rows_after(self, seq: int) -> int:
        """Messages still queued among those committed after `seq` (a rowid range: cheap
        however many older rows the queue holds)."""
        with contextlib.closing(_reader(self.data_dir)) as conn:
            return int(conn.execute("SELECT count(*) FROM message WHERE seq > ?",
                                    (seq,)).fetchone()[0])

    def queued(self) -> int:
        """Messages still queued in every shard (data_dir and data_dir/shards/<k>: with
        workers > 1 each worker has its own queue database)."""
        total = 0
        for db in [self.data_dir / "queue.db", *sorted(self.data_dir.glob("shards/*/queue.db"))]:
            if db.exists():
                with contextlib.closing(_reader(db.parent)) as conn:
                    total += int(conn.execute("SELECT count(*) FROM message").fetchone()[0])
        return total

    def last_seq(self) -> int:
        with contextlib.closing(_reader(self.data_dir)) as conn:
            return int(conn.execute("SELECT coalesce(max(seq), 0) FROM message").fetchone()[0])

    def events(self, name: str) -> int:
        """How many `name` events the mail log holds (it is flushed every 0.2 s)."""
        needle = f'"event": "{name}"'
        try:
            with open(self.mail_log, errors="replace") as f:
                return sum(1 for line in f if needle in line)
        except OSError:
            return 0

    def tracebacks(self) -> int:
        return self.log.read_text(errors="replace").count("Traceback")


def _reader(data_dir: Path) -> sqlite3.Connection:
    uri = (data_dir / "queue.db").resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=30)


def command_for(argv_prefix: str | None, event_loop: str,
                src: Path | None = None) -> AlbatrossCommand:
    """How to start Albatross: argv prefix before `serve`, the event loop to use, and
    optionally another source tree (a snapshot of a commit, so that a long run measures one
    version while the working tree keeps changing)."""
    if argv_prefix:
        base = AlbatrossCommand(tuple(shlex.split(argv_prefix)), ())
    elif src is not None:
        base = AlbatrossCommand((sys.executable, "-m", "albatross"),
                                (("PYTHONPATH", str(src.resolve())),))
    else:
        base = AlbatrossCommand.default()
    env = base.env
    if event_loop != "auto":
        env = (*env, ("ALBATROSS_EVENT_LOOP", event_loop))
    return AlbatrossCommand(base.argv, env)


def start_server(cmd: AlbatrossCommand, data_dir: Path, config: Path, log: Path,
                 timeout: float = 60.0) -> Server:
    """`serve` on data_dir (which may already hold a queue) in its own cgroup; returns once it
    says "listening" and its port accepts. startup_s is spawn to "listening", which includes
    the spool's recovery pass over every stored row."""
    port = free_port()
    argv = [*cmd.argv, "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}",
            "--config", str(config)]
    env = dict(os.environ)
    for key, value in cmd.env:
        env[key] = value + (os.pathsep + env[key] if key == "PYTHONPATH" and env.get(key) else "")
    cg = Cgroup.create("albatross")
    t0 = time.monotonic()
    proc = start(argv, log=log, cgroup=cg, env=env, label=f"albatross {data_dir}")
    stop_now = on_exit(f"albatross {data_dir}", lambda: stop_process(proc))
    wait_for_line(proc, log, "listening on", timeout)
    startup = time.monotonic() - t0
    wait_port(port, timeout)
    return Server(proc, port, data_dir, log, CpuMeter(cg, proc.pid), startup, stop_now)


# ------------------------------------------------------------------ one measured run


@dataclass
class Result:
    """One server under one load. Rates per second of wall time; CPU is the server's only."""

    system: str
    sessions: int
    recipients: int
    messages: int
    concurrency: int | None = None
    accept_wall_s: float = 0.0
    accepted_per_s: float = 0.0
    e2e_wall_s: float | None = None
    e2e_msgs_per_s: float | None = None
    e2e_rcpts_per_s: float | None = None
    cpu_ms: float = 0.0
    cpu_ms_per_msg: float = 0.0
    cpu_ms_per_rcpt: float = 0.0
    cores_used: float = 0.0
    cpu_method: str = ""
    cpu_ms_crosscheck: float = 0.0
    sink_messages: int | None = None
    sink_recipients: int | None = None
    server_delivered: int | None = None  # recipients the server logged as delivered/sent
    left_in_queue: int | None = None
    count_ok: bool = False
    source_warnings: list[str] = field(default_factory=list)
    error: str | None = None
    # 1-minute load average when the run began: high means other work shared the machine.
    loadavg_before: float = field(default_factory=lambda: round(os.getloadavg()[0], 2))


def measure(r: Result, load: Load, port: int, sink: Sink, cpu: CpuMeter,
            left: Callable[[], int]) -> tuple[CpuSample, CpuSample]:
    """Run the load against port and stop the clock when the sink has every message and
    left() (what is still queued of this load) is 0. Fills the timing fields of r; returns
    the CPU samples. On timeout r.error says so and the end-to-end fields stay None."""
    sink_before = sink.messages
    before = cpu.sample()
    t0 = time.monotonic()
    r.accept_wall_s, r.source_warnings = run_source(load, port)
    r.accepted_per_s = load.messages / r.accept_wall_s
    deadline = t0 + load.timeout
    while True:
        arrived = sink.messages - sink_before
        queued = left() if arrived >= load.messages else None
        if queued == 0:
            break
        if time.monotonic() > deadline or not sink.alive():
            r.left_in_queue = left()
            r.error = (f"not drained after {time.monotonic() - t0:.0f}s: the sink has "
                       f"{arrived} of {load.messages} messages, {r.left_in_queue} still queued"
                       + ("" if sink.alive() else "; smtp-sink exited"))
            break
        time.sleep(POLL)
    wall = time.monotonic() - t0
    after = cpu.sample()
    if r.error is None:
        r.left_in_queue = 0
        r.e2e_wall_s = wall
        r.e2e_msgs_per_s = load.messages / wall
        r.e2e_rcpts_per_s = load.messages * load.recipients / wall
    r.cpu_ms = (after.usec - before.usec) / 1000
    r.cpu_ms_crosscheck = (after.tree_usec - before.tree_usec) / 1000
    r.cpu_ms_per_msg = r.cpu_ms / load.messages
    r.cpu_ms_per_rcpt = r.cpu_ms / (load.messages * load.recipients)
    r.cores_used = r.cpu_ms / 1000 / wall
    r.cpu_method = (cpu.method if cpu.method == "proc-tree"
                    else f"{cpu.method} (crosscheck: proc-tree)")
    return before, after


def check_counts(r: Result, load: Load, sink: Sink, sink_before: SinkCounts,
                 delivered: int) -> None:
    """The sink must hold exactly this load's messages and recipients, and the server must
    have logged each recipient as delivered once."""
    want_rcpts = load.messages * load.recipients
    counts = sink.wait_counts(sink_before.messages + load.messages,
                              sink_before.recipients + want_rcpts)
    r.sink_messages = counts.messages - sink_before.messages
    r.sink_recipients = counts.recipients - sink_before.recipients
    r.server_delivered = delivered
    r.count_ok = (r.sink_messages == load.messages and r.sink_recipients == want_rcpts
                  and delivered == want_rcpts)
    if not r.count_ok and r.error is None:
        r.error = (f"count mismatch: sent {load.messages} messages x {load.recipients} "
                   f"recipients; the sink has {r.sink_messages} messages and "
                   f"{r.sink_recipients} recipients, the server logged {delivered} delivered")


def bench_albatross(cmd: AlbatrossCommand, load: Load, concurrency: int, base: str | None,
                    label: str, workers: int = 1) -> Result:
    r = Result(label, load.sessions, load.recipients, load.messages, concurrency)
    work = scratch_dir("relay-bench-albatross-", base)
    sink = Sink(work)
    try:
        config = work / "albatross.toml"
        config.write_text(albatross_config(sink.port, concurrency, workers=workers))
        server = start_server(cmd, work / "data", config, work / "albatross.log")
        try:
            sink_before = sink.counts()
            measure(r, load, server.port, sink, server.cpu, server.queued)
            time.sleep(0.3)  # the mail log is flushed every 0.2 s
            check_counts(r, load, sink, sink_before, server.events("delivered"))
            if server.tracebacks() and r.error is None:
                r.error = "the server printed a traceback:\n" + tail(server.log)
        finally:
            server.stop()
        if r.error:
            print(tail(server.log), file=sys.stderr)
    finally:
        sink.stop()
    return r


def _postfix_left(pf: PostfixInstance) -> int:
    """Queue files of any kind: Postfix is done when none is left."""
    return sum(pf.queue_counts().values())


def bench_postfix(load: Load, base: str | None) -> Result:
    r = Result("postfix", load.sessions, load.recipients, load.messages)
    root = scratch_dir("relay-bench-postfix-", base)
    sink = Sink(root)
    try:
        pf = start_postfix(root / "instance", "relay", sink.port)
        try:
            sink_before = sink.counts()
            measure(r, load, pf.port, sink, pf.cpu, lambda: _postfix_left(pf))
            # postlogd writes asynchronously: give it a moment to catch up.
            want = load.messages * load.recipients
            sent = 0
            for _ in range(50):
                log = pf.maillog()
                sent = log.count("status=sent")
                if sent >= want:
                    break
                time.sleep(0.1)
            check_counts(r, load, sink, sink_before, sent)
            trouble = [ln for ln in pf.maillog().splitlines() if "fatal:" in ln or "panic:" in ln]
            if trouble and r.error is None:
                r.error = "Postfix logged: " + "; ".join(trouble[:3])
        finally:
            pf.close()
    finally:
        sink.stop()
    return r


# ------------------------------------------------------------------ the report


def one_run(system: str, cmd: AlbatrossCommand, load: Load, args: argparse.Namespace) -> Result:
    """One measured run; a server that fails to start or times out becomes an error row."""
    try:
        if system == "postfix":
            return bench_postfix(load, args.tmpdir)
        concurrency = int(system.rpartition("-c")[2])
        workers = int(system.split("-w", 1)[1].split("-", 1)[0]) if "-w" in system else 1
        return bench_albatross(cmd, load, concurrency, args.tmpdir, system, workers)
    except (RuntimeError, TimeoutError, OSError, subprocess.TimeoutExpired) as exc:
        return Result(system, load.sessions, load.recipients, load.messages, error=str(exc))


def median_run(runs: list[Result]) -> Result:
    """The run with the median end-to-end rate (the lower middle one for an even count); a
    failed run wins, so that errors are never hidden by a good repeat."""
    failed = [r for r in runs if r.error]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda r: r.e2e_msgs_per_s or 0.0)
    return ordered[(len(ordered) - 1) // 2]


def ratios(rows: list[Result]) -> dict[str, dict[str, float]]:
    """Albatross / Postfix per Albatross variant: >1 on rate and <1 on CPU favour Albatross."""
    pf = next((r for r in rows if r.system == "postfix" and not r.error), None)
    out: dict[str, dict[str, float]] = {}
    if pf is None or not pf.e2e_msgs_per_s or not pf.cpu_ms_per_msg:
        return out
    for r in rows:
        if r.system != "postfix" and not r.error and r.e2e_msgs_per_s:
            out[f"{r.system}/postfix"] = {
                "e2e_rate": round(r.e2e_msgs_per_s / pf.e2e_msgs_per_s, 2),
                "cpu_per_msg": round(r.cpu_ms_per_msg / pf.cpu_ms_per_msg, 2),
            }
    return out


def print_table(cells: list[dict[str, object]]) -> None:
    head = (f"{'sess':>4} {'rcpt':>4}  {'system':<17} {'e2e msg/s':>9} {'rcpt/s':>7} "
            f"{'acc/s':>6} {'CPU ms/msg':>10} {'xcheck':>7} {'cores':>5} {'load':>5}  count")
    print(head)
    print("-" * len(head))
    for cell in cells:
        rows = cell["results"]
        assert isinstance(rows, list)
        for r in rows:
            lead = f"{r['sessions']:>4} {r['recipients']:>4}  {r['system']:<17}"
            if r["error"] and not r["accepted_per_s"]:
                print(f"{lead} ERROR: {r['error'].strip().splitlines()[-1]}")
                continue
            e2e = f"{r['e2e_msgs_per_s']:.0f}" if r["e2e_msgs_per_s"] else "-"
            rps = f"{r['e2e_rcpts_per_s']:.0f}" if r["e2e_rcpts_per_s"] else "-"
            xcheck = r["cpu_ms_crosscheck"] / r["messages"]
            count = ("ok" if r["count_ok"] else
                     f"MISMATCH sink {r['sink_messages']}/{r['messages']} msgs, "
                     f"{r['sink_recipients']} rcpts")
            print(f"{lead} {e2e:>9} {rps:>7} {r['accepted_per_s']:>6.0f} "
                  f"{r['cpu_ms_per_msg']:>10.2f} {xcheck:>7.2f} {r['cores_used']:>5.2f} "
                  f"{r['loadavg_before']:>5.1f}  {count}")
        ratio_map = cell["ratios"]
        assert isinstance(ratio_map, dict)
        for pair, q in ratio_map.items():
            print(f"{'':>10}  {pair}: end-to-end rate x{q['e2e_rate']}, "
                  f"CPU per message x{q['cpu_per_msg']}")
    print("e2e: from smtp-source's first connection until the sink has every message and the "
          "queue is empty. acc/s: smtp-source's own wall time. CPU: the server only (all of "
          "Postfix's processes); xcheck is the /proc tree figure. load: 1-min load average.")


def postfix_version() -> str:
    try:
        out = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                             text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out or "unknown"


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=4000, help="messages per run")
    p.add_argument("--sessions", default="10,50", help="comma-separated concurrency levels")
    p.add_argument("--recipients", default="1,10",
                   help="comma-separated recipients per message (smtp-source -r)")
    p.add_argument("--size", type=int, default=5120, help="message size in bytes (smtp-source -l)")
    p.add_argument("--concurrency", default="50",
                   help="Albatross [queue] concurrency; a comma-separated list runs each")
    p.add_argument("--workers", default="1",
                   help="Albatross worker processes (the `workers` key); a comma-separated "
                        "list runs each (systems albatross-c50, albatross-w2-c50, ...)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per system and cell; the table shows the median run")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--no-postfix", action="store_true", help="run the Albatross side only")
    p.add_argument("--no-albatross", action="store_true", help="run the Postfix side only")
    p.add_argument("--albatross-cmd",
                   help="argv prefix before 'serve ...' (default: python3 -m albatross with "
                        "PYTHONPATH=src)")
    p.add_argument("--albatross-src", type=Path,
                   help="run `python3 -m albatross` from this src dir instead of the repo's "
                        "(e.g. a `git archive HEAD src` snapshot)")
    p.add_argument("--event-loop", choices=("asyncio", "auto"), default=DEFAULT_EVENT_LOOP,
                   help="ALBATROSS_EVENT_LOOP for the server; auto picks uvloop when "
                        "installed (default: asyncio, see DEFAULT_EVENT_LOOP)")
    p.add_argument("--tmpdir", help="where data dirs and queues go (default: the system tmp)")
    args = p.parse_args(argv)
    args.levels = _int_list(args.sessions)
    args.rcpt_levels = _int_list(args.recipients)
    args.concurrencies = _int_list(args.concurrency)
    args.worker_counts = _int_list(args.workers)
    numbers = [args.messages, args.size, args.repeat, *args.levels, *args.rcpt_levels,
               *args.concurrencies, *args.worker_counts]
    if not args.levels or not args.rcpt_levels or not args.concurrencies \
            or not args.worker_counts or min(numbers) < 1:
        p.error("--messages, --sessions, --recipients, --size, --concurrency, --workers and "
                "--repeat must be positive")
    if args.repeat > 20 or args.messages > 1_000_000 or max(args.rcpt_levels) > 1000:
        p.error("keep it bounded: --repeat <= 20, --messages <= 1,000,000, --recipients <= 1000")
    if args.no_postfix and args.no_albatross:
        p.error("nothing to run")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cmd = command_for(args.albatross_cmd, args.event_loop, args.albatross_src)
    systems = ([] if args.no_albatross else
               [f"albatross-{'' if w == 1 else f'w{w}-'}c{c}"
                for w in args.worker_counts for c in args.concurrencies])
    systems += [] if args.no_postfix else ["postfix"]
    cells: list[dict[str, object]] = []
    failed = False
    try:
        for sessions in args.levels:
            for rcpts in args.rcpt_levels:
                load = Load(args.messages, sessions, rcpts, args.size)
                runs: dict[str, list[Result]] = {name: [] for name in systems}
                # Round-robin over the systems so that drift on a shared VM hits them alike.
                for _ in range(args.repeat):
                    for name in systems:
                        runs[name].append(one_run(name, cmd, load, args))
                        run_all_cleanups()  # temp dirs and cgroups go as soon as a run ends
                rows = [median_run(runs[name]) for name in systems]
                for r in (r for name in systems for r in runs[name]):
                    if r.error or r.source_warnings:
                        failed = True
                        print(f"!!! {r.system} at {sessions} sessions x {rcpts} rcpt: "
                              f"{r.error or ''} {'; '.join(r.source_warnings[:5])}",
                              file=sys.stderr)
                cells.append({
                    "sessions": sessions,
                    "recipients": rcpts,
                    "results": [asdict(r) for r in rows],
                    "ratios": ratios(rows),
                    "all_runs": {name: [asdict(r) for r in rs] for name, rs in runs.items()},
                })
    finally:
        run_all_cleanups()
    report = {
        "benchmark": "relay",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine_facts(), "postfix": postfix_version()},
        "load": {"messages": args.messages, "size": args.size, "sessions": args.levels,
                 "recipients": args.rcpt_levels, "repeat": args.repeat,
                 "sender": SENDER, "rcpt": RCPT},
        "albatross_command": None if args.no_albatross else cmd.describe(),
        "albatross_config": (None if args.no_albatross else
                             albatross_config(0, args.concurrencies[0],
                                              workers=args.worker_counts[-1]).replace(
                                 "127.0.0.1:0", "127.0.0.1:SINK_PORT")),
        "cells": cells,
    }
    print_table(cells)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
