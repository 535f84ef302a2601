"""`albatross queue`: list, show, stats, flush, hold, release, delete, bounce.

list, show and stats read the queue database directly, so they work on a stopped
daemon's data directory too; the others ask the running daemon over its admin socket.
With several workers each shard has its own database and admin socket (spool/shards.py):
the reads merge every shard, an action on one message goes to the shard its id names
first (then to the others: a message moved out of a retired shard keeps its id), and a
flush of everything or of a domain goes to every shard.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

from albatross.config import load
from albatross.config.values import Invalid, parse_duration
from albatross.errors import ConfigError, SpoolError
from albatross.spool import QueueEntry, Spool, shards

# qshape's age buckets, in minutes.
BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def add_parser(sub: Any) -> None:
    q = sub.add_parser("queue", help="look at and act on the mail queue")
    q.add_argument("--config", metavar="FILE", help="TOML configuration file")
    q.add_argument("--data-dir", metavar="DIR", help="data directory (default ./albatross-data)")
    qs = q.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    ls = qs.add_parser("list", help="messages in the queue (like mailq)")
    ls.add_argument("--domain", help="only messages with pending recipients at this domain")
    ls.add_argument("--sender", help="only messages from this sender")
    ls.add_argument("--older-than", metavar="AGE", help='only messages older than AGE ("2h")')
    ls.add_argument("--json", action="store_true", help="one JSON object per message")
    show = qs.add_parser("show", help="one message: envelope, recipients, schedule")
    show.add_argument("qid")
    show.add_argument("--json", action="store_true")
    stats = qs.add_parser("stats", help="pending recipients per domain and age (like qshape)")
    stats.add_argument("--json", action="store_true")
    flush = qs.add_parser("flush", help="try deferred mail now")
    flush.add_argument("qid", nargs="?")
    flush.add_argument("--domain")
    for name, text in (("hold", "keep a message from delivery until released"),
                       ("release", "let a held message be delivered"),
                       ("delete", "remove a message without notice to the sender"),
                       ("bounce", "return a message to its sender now")):
        p = qs.add_parser(name, help=text)
        p.add_argument("qid")
    q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        overrides = {"data_dir": args.data_dir} if args.data_dir else {}
        cfg = load(Path(args.config) if args.config else None, overrides)
    except ConfigError as exc:
        print(f"albatross queue: invalid configuration:\n{exc}", file=sys.stderr)
        return 78
    data_dir = Path(cfg.data_dir)
    cmd = args.queue_command
    if cmd in ("list", "show", "stats"):
        found = shards.existing(data_dir)
        if not found:
            print(f"albatross queue: no queue at {data_dir / 'queue.db'}", file=sys.stderr)
            return 66
        try:
            entries = [e for k in found for e in Spool(shards.shard_dir(data_dir, k)).entries()]
        except SpoolError as exc:
            print(f"albatross queue: {exc}", file=sys.stderr)
            return 74
        if len(found) > 1:
            entries.sort(key=lambda e: e.arrival)  # each shard's list is in commit order
        if cmd == "list":
            return _list(entries, args)
        if cmd == "show":
            return _show(entries, args)
        return _stats(entries, args)
    return _act(data_dir, cmd, args)


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _entry_json(e: QueueEntry, now: float) -> dict[str, Any]:
    env = e.envelope
    return {
        "qid": e.qid, "arrival": e.arrival, "age": round(now - e.arrival), "size": e.size,
        "sender": env.sender, "state": e.schedule.state,
        "next_attempt": e.schedule.next_attempt, "attempts": e.schedule.attempts,
        "last_error": e.schedule.last_error, "client": env.client_ip, "helo": env.helo,
        "source": env.source, "tls": env.tls, "mail_params": env.mail_params,
        "recipients": [r.to_record() for r in env.recipients],
    }


def _list(entries: list[QueueEntry], args: argparse.Namespace) -> int:
    now = time.time()
    older = 0.0
    if args.older_than:
        try:
            older = parse_duration(args.older_than)
        except Invalid as exc:
            print(f"albatross queue: --older-than: {exc}", file=sys.stderr)
            return 64
    chosen = []
    for e in entries:
        env = e.envelope
        if args.domain and args.domain.lower() not in {
                r.domain for r in env.recipients if not r.is_final}:
            continue
        if args.sender is not None and env.sender.lower() != args.sender.lower():
            continue
        if older and now - e.arrival < older:
            continue
        chosen.append(e)
    if args.json:
        for e in chosen:
            print(json.dumps(_entry_json(e, now)))
        return 0
    if not chosen:
        print("Mail queue is empty" if not entries else "No matching messages")
        return 0
    print(f"{'Queue ID':<17} {'Size':>8} {'Age':>7} {'State':<7} Sender/Recipient")
    for e in chosen:
        env = e.envelope
        state = e.schedule.state
        print(f"{e.qid:<17} {e.size:>8} {_age(now - e.arrival):>7} {state:<7} "
              f"<{env.sender}>")
        for r in env.recipients:
            if r.is_final:
                continue
            print(f"{'':43}<{r.address}>")
            if r.reply:
                print(f"{'':45}({r.reply[:200]})")
    n = sum(len([r for r in e.envelope.recipients if not r.is_final]) for e in chosen)
    total = sum(e.size for e in chosen)
    print(f"-- {total // 1024} KiB in {len(chosen)} messages, {n} pending recipients")
    return 0


def _show(entries: list[QueueEntry], args: argparse.Namespace) -> int:
    now = time.time()
    for e in entries:
        if e.qid == args.qid:
            break
    else:
        print(f"albatross queue: no message {args.qid} in the queue", file=sys.stderr)
        return 67
    data = _entry_json(e, now)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    env = e.envelope
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.arrival))
    nxt = e.schedule.next_attempt
    print(f"Queue ID:     {e.qid}")
    print(f"Arrived:      {when} ({_age(now - e.arrival)} ago) from {env.client_ip or 'local'}"
          f" (helo {env.helo or '-'}, {env.protocol}{', ' + env.tls if env.tls else ''})")
    print(f"Size:         {e.size} bytes")
    print(f"Sender:       <{env.sender}>")
    if env.mail_params:
        params = " ".join(k if v is None else f"{k}={v}" for k, v in env.mail_params.items())
        print(f"Parameters:   {params}")
    print(f"State:        {e.schedule.state}, {e.schedule.attempts} attempts, next "
          + (f"in {_age(nxt - now)}" if nxt > now else "now"))
    if e.schedule.last_error:
        print(f"Last error:   {e.schedule.last_error}")
    print("Recipients:")
    for r in env.recipients:
        extra = []
        if r.notify:
            extra.append(f"NOTIFY={r.notify}")
        if r.orcpt:
            extra.append(f"ORCPT={r.orcpt}")
        print(f"  <{r.address}> {r.state}" + (f" ({' '.join(extra)})" if extra else ""))
        if r.reply:
            print(f"      {r.remote or ''} said: {r.reply}")
    return 0


def _stats(entries: list[QueueEntry], args: argparse.Namespace) -> int:
    now = time.time()
    table: dict[str, list[int]] = {}
    for e in entries:
        minutes = (now - e.arrival) / 60
        col = next((i for i, b in enumerate(BUCKETS) if minutes < b), len(BUCKETS))
        for r in e.envelope.recipients:
            if r.is_final:
                continue
            row = table.setdefault(r.domain or "(none)", [0] * (len(BUCKETS) + 1))
            row[col] += 1
    if args.json:
        print(json.dumps({"buckets_minutes": list(BUCKETS), "domains": table}))
        return 0
    heads = ["T"] + [str(b) for b in BUCKETS] + [f"{BUCKETS[-1]}+"]
    width = max([len(d) for d in table] + [5])
    print(f"{'':>{width}} " + " ".join(f"{h:>5}" for h in heads))
    totals = [0] * (len(BUCKETS) + 1)
    rows = sorted(table.items(), key=lambda kv: -sum(kv[1]))
    for _domain, counts in rows:
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
    print(f"{'TOTAL':>{width}} {sum(totals):>5} " + " ".join(f"{c:>5}" for c in totals))
    for domain, counts in rows:
        print(f"{domain:>{width}} {sum(counts):>5} " + " ".join(f"{c:>5}" for c in counts))
    return 0


def _sockets(data_dir: Path) -> dict[int, Path]:
    """The admin socket of every shard that has one (a running worker), by shard."""
    found = {}
    for k in range(shards.MAX_SHARDS):
        sock = shards.shard_dir(data_dir, k) / "admin.sock"
        if sock.exists():
            found[k] = sock
    return found


def _post(sock: Path, path: str, body: dict[str, Any]) -> tuple[int, str, dict[str, Any]]:
    """POST to one admin socket: (status, reason, JSON answer). Raises OSError,
    ValueError or HTTPException when the daemon cannot be reached or answers nonsense."""
    conn = _UnixConnection(sock)
    try:
        conn.request("POST", path, body=json.dumps({k: v for k, v in body.items() if v}),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read() or b"{}")
    finally:
        conn.close()
    return resp.status, resp.reason, data if isinstance(data, dict) else {}


def _act(data_dir: Path, cmd: str, args: argparse.Namespace) -> int:
    if cmd == "flush":
        path, body = "/queue/flush", {"qid": args.qid, "domain": args.domain}
    else:
        path, body = f"/queue/{args.qid}/{cmd}", {}
    sockets = _sockets(data_dir)
    if not sockets:
        sock = data_dir / "admin.sock"
        print(f"albatross queue: the daemon is not running (no admin socket at {sock}); "
              f"{cmd} needs it", file=sys.stderr)
        return 75
    if args.qid:
        # The shard named by the id first; then the others, for a message that was moved
        # out of a retired shard with its id (spool/shards.py).
        home = shards.index_of(args.qid)
        order = sorted(sockets, key=lambda k: k != home)
    else:
        order = sorted(sockets)  # everything, or a domain: every shard
    flushed = 0
    found = False
    unreachable = 0
    failure: tuple[int, str, dict[str, Any]] | None = None
    for k in order:
        sock = sockets[k]
        try:
            status, reason, data = _post(sock, path, body)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # A worker being restarted, or a socket left by one that died: say so and ask
            # the others (the message may be there, and a flush of everything goes on).
            print(f"albatross queue: cannot reach the daemon at {sock}: {exc}",
                  file=sys.stderr)
            unreachable += 1
            continue
        if status < 400:
            found = True
            flushed += int(data.get("flushed", 0))
            if args.qid:
                break
        elif failure is None or failure[0] == 404:
            failure = (status, reason, data)  # the first error that says more than 404
        if status >= 400 and status != 404:
            break
    if failure is not None and not (found and failure[0] == 404):
        status, reason, data = failure
        print(f"albatross queue: {data.get('error', reason)}", file=sys.stderr)
        return 67 if status == 404 and not unreachable else 75 if status in (404, 409) \
            else 65
    if not found:
        return 75  # every shard that could have it was unreachable
    if cmd == "flush":
        print(f"{flushed} message(s) flushed")
    else:
        print(f"{args.qid}: {cmd} done")
    return 75 if unreachable and not args.qid else 0
