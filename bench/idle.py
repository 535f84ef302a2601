"""The idle-session memory benchmark: Albatross's RSS with N SMTP sessions open and waiting.

Each client connects, reads the 220 greeting, sends EHLO, reads the whole reply, and then
waits with the connection open. With all N open (and again before any), the server's VmRSS
is read from /proc/PID/status (the sum over its process tree, should it ever fork). Clients
connect in waves so that the listen backlog never overflows into SYN retries.

Albatross limits connections per client address (smtp.max_connections_per_ip, default 50),
so by default the server is started with a config raising the limits; ``--source-ips K``
spreads clients over 127.0.0.2 .. 127.0.0.(K+1) instead (bind before connect), to test with
the server's own configuration.

    python3 bench/idle.py [--sessions 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shlex
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The bench dir is not a package: its modules import each other as top-level names.
from harness import (
    AlbatrossCommand,
    machine_facts,
    proc_tree,
    rss_kib,
    run_all_cleanups,
    scratch_dir,
    start_albatross,
)

CONFIG = ("[smtp]\nmax_connections_per_ip = {per_ip}\nmax_connections = {total}\n"
          "[policy]\nreverse_dns = false\n")
MAX_REPLY = 64 * 1024  # a greeting or EHLO reply longer than this is an error, not a wait


def raise_nofile(need: int) -> int:
    """Raise RLIMIT_NOFILE (inherited by the server we start) to at least need, if allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        if hard != resource.RLIM_INFINITY and need > hard:
            # Root may raise the hard limit too.
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
                return need
            except (ValueError, OSError):
                pass
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """One complete SMTP reply (all continuation lines, RFC 5321 section 4.2.1)."""
    out = b""
    while len(out) < MAX_REPLY:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        out += line
        if len(line) < 4 or line[3:4] != b"-":
            return out
    raise ConnectionError("reply too long")


async def open_session(port: int, source: str | None, timeout: float) -> asyncio.StreamWriter:
    """Connect (from source if given), read the greeting, EHLO; returns the open writer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        if source is not None:
            sock.bind((source, 0))
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), timeout)
        reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_REPLY)
    except BaseException:
        sock.close()
        raise
    try:
        greeting = await asyncio.wait_for(read_reply(reader), timeout)
        if not greeting.startswith(b"220"):
            raise ConnectionError(f"greeting {greeting[:60]!r}")
        writer.write(b"EHLO idle.bench.test\r\n")
        ehlo = await asyncio.wait_for(read_reply(reader), timeout)
        if not ehlo.startswith(b"250"):
            raise ConnectionError(f"EHLO reply {ehlo[:60]!r}")
    except BaseException:
        writer.close()
        raise
    return writer


def tree_rss_kib(pid: int) -> int:
    return sum(rss_kib(p) for p in proc_tree(pid))


async def run(args: argparse.Namespace, pid: int, port: int) -> dict[str, object]:
    sources = ([f"127.0.0.{2 + i}" for i in range(args.source_ips)]
               if args.source_ips else [None])
    writers: list[asyncio.StreamWriter] = []
    errors: dict[str, int] = {}
    rss_before = tree_rss_kib(pid)
    t0 = time.monotonic()
    try:
        for start in range(0, args.sessions, args.wave):
            batch = range(start, min(start + args.wave, args.sessions))
            results = await asyncio.gather(
                *(open_session(port, sources[i % len(sources)], args.timeout) for i in batch),
                return_exceptions=True,
            )
            for res in results:
                if isinstance(res, BaseException):
                    key = f"{type(res).__name__}: {res}"[:120]
                    errors[key] = errors.get(key, 0) + 1
                else:
                    writers.append(res)
        open_s = time.monotonic() - t0
        await asyncio.sleep(args.settle)
        # Check the sessions are still open: a server that dropped them would look cheap.
        alive = sum(1 for w in writers if not w.is_closing())
        rss_open = tree_rss_kib(pid)
        await asyncio.sleep(args.hold)
        rss_after_hold = tree_rss_kib(pid)
    finally:
        for w in writers:
            w.close()
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
    await asyncio.sleep(args.settle)
    rss_closed = tree_rss_kib(pid)
    opened = len(writers)
    per_session = (rss_open - rss_before) / opened if opened else 0.0
    return {
        "sessions_requested": args.sessions,
        "sessions_open": opened,
        "sessions_alive_at_measure": alive,
        "open_seconds": round(open_s, 2),
        "errors": errors,
        "rss_mb_before": round(rss_before / 1024, 1),
        "rss_mb_open": round(rss_open / 1024, 1),
        "rss_mb_after_hold": round(rss_after_hold / 1024, 1),
        "rss_mb_after_close": round(rss_closed / 1024, 1),
        "kb_per_session": round(per_session, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=1000)
    p.add_argument("--wave", type=int, default=100, help="connections opened concurrently")
    p.add_argument("--source-ips", type=int, default=0,
                   help="spread clients over this many addresses from 127.0.0.2 and do not "
                        "raise the server's per-IP limit")
    p.add_argument("--timeout", type=float, default=15.0, help="per step of each session")
    p.add_argument("--settle", type=float, default=1.0, help="seconds before each RSS reading")
    p.add_argument("--hold", type=float, default=2.0,
                   help="seconds to keep the sessions open after the first reading")
    p.add_argument("--json", type=Path)
    p.add_argument("--standin", action="store_true")
    p.add_argument("--albatross-cmd")
    p.add_argument("--tmpdir")
    args = p.parse_args(argv)
    if not 1 <= args.sessions <= 60000 or not 0 <= args.source_ips <= 250 or args.wave < 1:
        p.error("--sessions must be 1..60000, --source-ips 0..250, --wave positive")
    if args.standin:
        cmd = AlbatrossCommand.standin()
    elif args.albatross_cmd:
        cmd = AlbatrossCommand(tuple(shlex.split(args.albatross_cmd)), ())
    else:
        cmd = AlbatrossCommand.default()

    # Ours: one fd per client plus slack; the server's: the same, since it inherits ours.
    nofile = raise_nofile(args.sessions * 2 + 256)
    try:
        work = scratch_dir("albatross-idle-", args.tmpdir)
        config = None
        if not args.source_ips:
            config = work / "idle.toml"
            config.write_text(CONFIG.format(per_ip=args.sessions + 100,
                                            total=max(5000, args.sessions + 100)))
        server = start_albatross(cmd, work, config=config)
        try:
            result = asyncio.run(run(args, server.proc.pid, server.port))
            result["server_still_running"] = server.proc.poll() is None
        finally:
            server.stop()
    finally:
        run_all_cleanups()
    report = {
        "benchmark": "idle",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_facts(),
        "albatross_command": cmd.describe(),
        "rlimit_nofile": nofile,
        "source_ips": args.source_ips,
        "result": result,
    }
    print(f"{result['sessions_open']}/{args.sessions} idle sessions open "
          f"({result['sessions_alive_at_measure']} alive when measured) in "
          f"{result['open_seconds']} s")
    print(f"server RSS: {result['rss_mb_before']} MB before, {result['rss_mb_open']} MB with "
          f"all open, {result['rss_mb_after_close']} MB after closing; "
          f"{result['kb_per_session']} KB per session")
    errors = result["errors"]
    assert isinstance(errors, dict)
    for err, n in errors.items():
        print(f"!!! {n} sessions failed: {err}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    ok = result["sessions_open"] == args.sessions and result["server_still_running"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
