"""Shards: where each worker's part of the queue lives, and moving the mail of a shard that
no worker owns any more into one that a worker does.

Worker 0 keeps the single-process layout in data_dir itself (so a one-worker deployment is
shard 0 and nothing moves when a second worker is added); worker k >= 1 keeps its queue
database, spool files and admin socket in data_dir/shards/<k>/. A shard's queue ids start
with its letter, "A" for shard 0 (spool/ids.py), so the admin tools know where to look.

Lowering the number of workers leaves shards behind ("orphans"). Their mail is moved at
start by worker 0 (absorb): each message keeps its queue id (so its mail-log history stays
one thread, and a move cut short by a crash is finished without a duplicate: a message
already in the target is only removed from the orphan), its envelope, its body and its
schedule (attempts, next attempt, held or not).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from albatross.errors import SpoolError
from albatross.spool.store import Spool

MAX_SHARDS = 26  # one letter each, A-Z
SHARDS_DIR = "shards"
# Messages moved at once: enough to fill the writer's group commits.
_MOVE_BATCH = 64


def letter(index: int) -> str:
    """The queue-id letter of shard `index` (0 -> "A")."""
    if not 0 <= index < MAX_SHARDS:
        raise ValueError(f"shard index must be 0..{MAX_SHARDS - 1}, not {index}")
    return chr(ord("A") + index)


def index_of(qid: str) -> int | None:
    """The shard whose letter `qid` starts with (where it was made), or None."""
    if qid and "A" <= qid[0] <= "Z":
        return ord(qid[0]) - ord("A")
    return None


def shard_dir(data_dir: Path, index: int) -> Path:
    """Where shard `index` keeps its queue: data_dir itself for 0."""
    letter(index)  # range check
    return Path(data_dir) if index == 0 else Path(data_dir) / SHARDS_DIR / str(index)


def existing(data_dir: Path) -> list[int]:
    """The shards that have a queue database under data_dir, in order."""
    data_dir = Path(data_dir)
    found = [0] if (data_dir / "queue.db").exists() else []
    try:
        names = os.listdir(data_dir / SHARDS_DIR)
    except (FileNotFoundError, NotADirectoryError):
        return found
    for name in names:
        if not (name.isascii() and name.isdigit() and str(int(name)) == name
                and 1 <= int(name) < MAX_SHARDS):
            continue  # not a shard of ours (no leading zeros: one name per shard)
        if (data_dir / SHARDS_DIR / name / "queue.db").exists():
            found.append(int(name))
    return sorted(found)


def orphans(data_dir: Path, workers: int) -> list[int]:
    """Shards with a queue that no worker of `workers` owns."""
    return [k for k in existing(data_dir) if k >= workers]


async def absorb(target: Spool, data_dir: Path, index: int,
                 log: Callable[..., None]) -> int:
    """Move every message of orphan shard `index` into `target`; then retire the orphan's
    files. Returns how many messages moved. The orphan is opened as a Spool (so a crash
    it suffered is recovered first, and its lock keeps a stray daemon away)."""
    directory = shard_dir(data_dir, index)
    source = Spool(directory, shard=letter(index), log=log)
    await source.open()
    moved = 0
    try:
        qids = await asyncio.to_thread(source.ids)
        for i in range(0, len(qids), _MOVE_BATCH):
            batch = qids[i:i + _MOVE_BATCH]
            results = await asyncio.gather(*(_move(source, target, qid) for qid in batch))
            for qid, done in zip(batch, results, strict=True):
                if done:
                    moved += 1
                    log("moved", qid=qid, from_shard=source.shard, to_shard=target.shard)
    finally:
        await source.close()
    if not await asyncio.to_thread(source.count):
        await asyncio.to_thread(_retire, directory)
    return moved


async def _move(source: Spool, target: Spool, qid: str) -> bool:
    """One message: commit into the target unless it is already there, restore its
    schedule, remove it from the source. False when it vanished meanwhile or cannot be
    read (then it stays in the orphan, which is therefore kept, and the error is logged)."""
    try:
        envelope, body = await asyncio.to_thread(source.load, qid)
        sched = await asyncio.to_thread(source.schedule, qid)
    except KeyError:
        return False
    except SpoolError as exc:
        source.log("error", qid=qid, where="absorb", error=str(exc))
        return False
    if await asyncio.to_thread(target.schedule, qid) is None:
        writer = target.begin(qid)
        try:
            await writer.write(body)
            await target.commit(writer, envelope)
        except BaseException:
            writer.abort()  # idempotent; commit() has aborted already if it failed
            raise
        if sched is not None:
            fields: dict[str, Any] = {
                "next_attempt": sched.next_attempt, "attempts": sched.attempts,
                "warned": sched.warned, "last_error": sched.last_error,
                "state": "held" if sched.state == "held" else "queued"}
            await target.update(qid, **fields)
    await source.remove(qid)
    return True


def _retire(directory: Path) -> None:
    """Remove an emptied orphan shard. Records recovery quarantined stay for a human to
    read (only the database goes, so the shard is no longer found by existing())."""
    corrupt = directory / "spool" / "corrupt"
    keep = corrupt.exists() and any(corrupt.iterdir())
    if not keep:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for name in ("queue.db", "queue.db-wal", "queue.db-shm", "admin.sock"):
        try:
            os.unlink(directory / name)
        except FileNotFoundError:
            pass
