"""Several worker processes (`workers` > 1): real daemons sharing one port, each worker with its
own shard of the queue, the admin tools finding every message, a killed worker restarted,
and the mail of retired shards moved when the number of workers goes down."""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from albatross.model import Envelope, Recipient
from albatross.spool import Spool, shards
from tests.conftest import Daemon, daemon_env, free_port, make_daemon

LOCAL = '[local]\nusers = ["alice", "bob"]\n'
MSG = b"From: bob@localhost\r\nTo: alice@localhost\r\nSubject: workers\r\n\r\nHello.\r\n"


def with_workers(d: Daemon, workers: int) -> Daemon:
    """Set the top-level `workers` key of the daemon's configuration file."""
    text = re.sub(r"(?m)^workers = .*\n", "", d.config.read_text())
    d.config.write_text(f"workers = {workers}\n" + text)
    return d


def queue(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "albatross", "queue", "--config",
                           str(d.config), *args], capture_output=True, text=True,
                          env=daemon_env(), timeout=60)


def listed(d: Daemon) -> dict[str, dict[str, object]]:
    out = queue(d, "list", "--json")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    return {str(r["qid"]): r for r in rows}


def wait_for(predicate: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def send(d: Daemon, rcpt: str = "alice@localhost") -> str:
    with smtplib.SMTP(d.host, d.port, timeout=10) as s:
        s.ehlo("client.example")
        s.mail("bob@localhost")
        s.rcpt(rcpt)
        code, resp = s.data(MSG)
        assert code == 250, resp
        return resp.decode().rsplit(" ", 1)[-1]


def send_to_both_shards(d: Daemon, at_least: int = 10) -> list[str]:
    """At least `at_least` messages, and more until both workers have taken some (the kernel
    spreads connections over the listeners by a hash of the client's address and port)."""
    qids: list[str] = []
    while len(qids) < at_least or {q[0] for q in qids} != {"A", "B"}:
        qids.append(send(d))
        assert len(qids) < 200, qids
    return qids


def maildir(d: Daemon, user: str) -> list[Path]:
    new = d.data_dir / "mail" / user / "Maildir" / "new"
    return sorted(new.iterdir()) if new.exists() else []


def events(d: Daemon, name: str) -> list[dict[str, object]]:
    if not d.log_path.exists():
        return []
    out = [json.loads(line) for line in d.log_path.read_text().splitlines()]
    return [e for e in out if e["event"] == name]


def worker_pids(d: Daemon) -> list[int]:
    line = next(x for x in "".join(d.output).splitlines() if " workers (pids " in x)
    return [int(p) for p in line.rsplit("(pids ", 1)[1].rstrip(")").split(", ")]


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie nobody has reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def block_mailbox(d: Daemon, user: str = "alice") -> None:
    """A file where the Maildir should be: deliveries to `user` are deferred."""
    (d.data_dir / "mail").mkdir(parents=True, exist_ok=True)
    (d.data_dir / "mail" / user).write_text("not a directory")


def mend_mailbox(d: Daemon, user: str = "alice") -> None:
    (d.data_dir / "mail" / user).unlink()


def check_clean(d: Daemon) -> None:
    output = "".join(d.output)
    assert "Traceback" not in output, output
    assert not d.slow_callbacks(), d.slow_callbacks()


def test_two_workers_share_the_port_and_deliver_everything(tmp_path: Path) -> None:
    d = with_workers(make_daemon(tmp_path, extra=LOCAL, deliver=True), 2)
    d.start()
    try:
        assert any("albatross: 2 workers (pids" in line for line in d.output)
        assert (d.data_dir / "admin.sock").exists()
        assert (d.data_dir / "shards" / "1" / "admin.sock").exists()
        qids = send_to_both_shards(d, at_least=30)
        # sendmail's maildrop is shard 0's: worker 0 picks it up (and only worker 0).
        env = {**daemon_env(), "ALBATROSS_DATA_DIR": str(d.data_dir)}
        dropped = subprocess.run(
            [sys.executable, "-m", "albatross", "sendmail", "-oi", "alice@localhost"],
            input=b"Subject: from sendmail\n\nhello\n", env=env, capture_output=True,
            timeout=60)
        assert dropped.returncode == 0, dropped.stderr
        wait_for(lambda: len(maildir(d, "alice")) == len(qids) + 1)
        wait_for(lambda: not listed(d))
        time.sleep(0.5)  # the mail log is flushed every 0.2 s
        picked = [str(e["qid"]) for e in events(d, "pickup")]
        assert len(picked) == 1 and picked[0].startswith("A")
        delivered = {str(e["qid"]) for e in events(d, "delivered")}
        assert delivered == set(qids) | set(picked)
        # Maildir file names are unique across the worker processes.
        assert len({p.name for p in maildir(d, "alice")}) == len(qids) + 1
        # Session ids too, in the one mail log both workers write.
        connects = [e["session"] for e in events(d, "connect")]
        assert len(connects) == len(set(connects)) == len(qids)
        starting = events(d, "starting")
        assert sorted(e["worker"] for e in starting) == [0, 1]
    finally:
        rc = d.stop()
    assert rc == 0
    check_clean(d)


def test_admin_commands_reach_the_shard_of_each_message(tmp_path: Path) -> None:
    d = with_workers(make_daemon(tmp_path, extra=LOCAL, deliver=True), 2)
    block_mailbox(d)
    d.start()
    try:
        qids = send_to_both_shards(d)
        wait_for(lambda: all(r["attempts"] == 1 for r in listed(d).values())
                 and len(listed(d)) == len(qids))
        rows = listed(d)
        assert set(rows) == set(qids)
        a = next(q for q in qids if q.startswith("A"))
        b = next(q for q in qids if q.startswith("B"))
        text = queue(d, "list").stdout
        assert a in text and b in text
        assert f"{len(qids)} messages" in text
        stats = queue(d, "stats", "--json")
        assert json.loads(stats.stdout)["domains"]["localhost"][0] == len(qids)
        for qid in (a, b):
            show = queue(d, "show", qid)
            assert show.returncode == 0 and f"Queue ID:     {qid}" in show.stdout
            assert queue(d, "hold", qid).returncode == 0
            assert listed(d)[qid]["state"] == "held"
            assert queue(d, "flush", qid).returncode == 67  # held mail is not flushed
            assert queue(d, "release", qid).returncode == 0
            assert listed(d)[qid]["state"] == "queued"
        assert queue(d, "delete", b).returncode == 0
        assert b not in listed(d)
        assert queue(d, "delete", b).returncode == 67
        assert queue(d, "hold", "C000000000000000").returncode == 67

        # Mend the mailbox; one flush reaches both shards.
        mend_mailbox(d)
        out = queue(d, "flush")
        assert out.returncode == 0, out.stderr
        assert f"{len(qids) - 1} message(s) flushed" in out.stdout
        wait_for(lambda: not listed(d))
        assert len(maildir(d, "alice")) == len(qids) - 1
    finally:
        rc = d.stop()
    assert rc == 0
    deleted = [e["qid"] for e in events(d, "deleted")]
    assert deleted == [b]
    check_clean(d)


def test_a_killed_worker_is_restarted_and_its_mail_delivered(tmp_path: Path) -> None:
    d = with_workers(make_daemon(tmp_path, extra=LOCAL, deliver=True), 2)
    block_mailbox(d)
    d.start()
    try:
        qids = send_to_both_shards(d)
        wait_for(lambda: len(listed(d)) == len(qids)
                 and all(r["attempts"] == 1 for r in listed(d).values()))
        first, second = worker_pids(d)
        os.kill(second, signal.SIGKILL)
        # The supervisor starts a new worker 1, which recovers shard 1 and opens its admin
        # socket again; meanwhile worker 0 goes on accepting on the shared port.
        wait_for(lambda: any(e.get("where") == "supervisor" for e in events(d, "error")))
        wait_for(lambda: sum(e.get("worker") == 1 for e in events(d, "starting")) == 2)
        wait_for(lambda: queue(d, "flush").returncode == 0)
        more = [send(d) for _ in range(5)]
        assert alive(first) and not alive(second)
        mend_mailbox(d)
        assert queue(d, "flush").returncode == 0
        wait_for(lambda: not listed(d))
        assert len(maildir(d, "alice")) == len(qids) + len(more)
        died = next(e for e in events(d, "error") if e.get("where") == "supervisor")
        assert died["worker"] == 1 and died["pid"] == second
        assert died["status"] == "killed by SIGKILL"
        pids = [int(str(e["pid"])) for e in events(d, "starting")]
    finally:
        rc = d.stop()
    assert rc == 0
    # Every worker is gone with the supervisor.
    assert not any(alive(pid) for pid in pids)
    check_clean(d)


def test_sigterm_stops_every_worker_and_the_supervisor_exits_0(tmp_path: Path) -> None:
    d = with_workers(make_daemon(tmp_path), 3)
    d.start()
    pids = worker_pids(d)
    assert len(pids) == 3 and all(alive(p) for p in pids)
    assert d.stop() == 0
    assert not any(alive(p) for p in pids)
    assert "albatross: stopping" in "".join(d.output)
    assert sorted(e["worker"] for e in events(d, "stopping")) == [0, 1, 2]
    check_clean(d)


def test_fewer_workers_move_the_mail_of_retired_shards(tmp_path: Path) -> None:
    d = with_workers(make_daemon(tmp_path, extra=LOCAL), 2)
    d.start()
    try:
        qids = send_to_both_shards(d)
        held = next(q for q in qids if q.startswith("B"))
        assert queue(d, "hold", held).returncode == 0
    finally:
        assert d.stop() == 0
    assert len(Spool(d.data_dir / "shards" / "1").ids()) == sum(q[0] == "B" for q in qids)

    # Back to one worker (and now delivering): shard 1's mail moves into shard 0 with its ids
    # and its schedule, and is delivered; the held message stays held.
    d.config.write_text(d.config.read_text().replace("deliver = false", "deliver = true"))
    with_workers(d, 1)
    d.start()
    try:
        assert not (d.data_dir / "shards" / "1").exists()
        wait_for(lambda: set(listed(d)) == {held})
        assert listed(d)[held]["state"] == "held"
        assert len(maildir(d, "alice")) == len(qids) - 1
        # The tools find a moved message although its letter names a shard that is gone.
        assert queue(d, "release", held).returncode == 0
        wait_for(lambda: not listed(d))
        assert len(maildir(d, "alice")) == len(qids)
    finally:
        assert d.stop() == 0
    moved = events(d, "moved")
    assert sorted(str(e["qid"]) for e in moved) == sorted(q for q in qids if q[0] == "B")
    assert {(e["from_shard"], e["to_shard"]) for e in moved} == {("B", "A")}
    delivered = {str(e["qid"]) for e in events(d, "delivered")}
    assert delivered == set(qids)
    check_clean(d)


# -- the move itself ----------------------------------------------------------------------

def envelope(n: int) -> Envelope:
    return Envelope(sender="bob@localhost",
                    recipients=[Recipient(f"r{i}@example.org") for i in range(n)])


async def store(spool: Spool, body: bytes, env: Envelope, qid: str | None = None) -> str:
    writer = spool.begin(qid or spool.new_id())
    await writer.write(body)
    await spool.commit(writer, env)
    return writer.qid


async def test_absorb_keeps_ids_bodies_and_schedules_and_finishes_a_cut_move(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    target = Spool(data, inline_max=100)
    await target.open()
    orphan = Spool(shards.shard_dir(data, 3), shard="D", inline_max=100)
    await orphan.open()
    small = await store(orphan, b"small\r\n", envelope(1))
    large = await store(orphan, b"x" * 5000 + b"\r\n", envelope(2))
    await orphan.update(large, attempts=4, next_attempt=2e9, warned=True,
                        last_error="451 busy", state="held")
    # A move cut short by a crash: the message is in the target already.
    await store(target, b"small\r\n", envelope(1), qid=small)
    await orphan.close()
    assert shards.existing(data) == [0, 3] and shards.orphans(data, 2) == [3]

    logged: list[tuple[str, dict[str, object]]] = []
    moved = await shards.absorb(target, data, 3, lambda e, **f: logged.append((e, f)))
    try:
        assert moved == 2
        assert sorted(target.ids()) == sorted([small, large])
        assert target.load(large)[1] == b"x" * 5000 + b"\r\n"
        assert target.load(large)[0].recipients == envelope(2).recipients
        sched = target.schedule(large)
        assert sched is not None
        assert (sched.state, sched.attempts, sched.next_attempt, sched.warned,
                sched.last_error) == ("held", 4, 2e9, True, "451 busy")
        assert not shards.shard_dir(data, 3).exists()
        assert shards.existing(data) == [0]
        assert [f["qid"] for e, f in logged if e == "moved"] == [small, large]
    finally:
        await target.close()


@pytest.mark.parametrize(("qid", "index"), [("A1j1ad87pvqufkbi", 0), ("B1j1ad87pvqufkbi", 1),
                                            ("Z1j1ad87pvqufkbi", 25), ("", None)])
def test_shard_letters(qid: str, index: int | None) -> None:
    assert shards.index_of(qid) == index
    if index is not None:
        assert shards.letter(index) == qid[0]
    with pytest.raises(ValueError):
        shards.letter(26)


def test_a_second_daemon_on_the_same_data_dir_does_not_start(tmp_path: Path) -> None:
    d = with_workers(make_daemon(tmp_path), 2)
    d.start()
    try:
        other = Daemon(data_dir=d.data_dir, config=tmp_path / "other.toml", port=free_port())
        other.config.write_text(d.config.read_text().replace(f":{d.port}", f":{other.port}"))
        with pytest.raises(RuntimeError, match="could not start"):
            other.start()
        assert other.proc is None or other.proc.poll() is not None
        assert "another Albatross is using" in "".join(other.output)
        qid = send(d)  # the first one carries on
        assert qid in listed(d)
    finally:
        assert d.stop() == 0


def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    d = with_workers(make_daemon(tmp_path), 2)
    d.start()
    pids = worker_pids(d)
    assert d.proc is not None
    os.kill(d.proc.pid, signal.SIGKILL)  # the supervisor only, not its process group
    d.proc.wait()
    wait_for(lambda: not any(alive(p) for p in pids))
    # They stopped cleanly (SIGTERM): the shards' locks are free for the next start.
    assert sorted(e["worker"] for e in events(d, "stopping")) == [0, 1]
    d.proc = None
    d.start()
    assert d.stop() == 0


WORKERS_FAIL_TOGETHER = """
import os, signal, sys, time
from albatross.supervisor import Supervisor

def work(shard, ready):
    if shard == 2:  # the last one forked: hold the supervisor while the others exit
        os.kill(os.getppid(), signal.SIGSTOP)
        time.sleep(0.5)
        os.kill(os.getppid(), signal.SIGCONT)
        time.sleep(0.3)
    else:
        time.sleep(0.1)
    return CODE

sys.exit(Supervisor(3, work).run())
"""


@pytest.mark.parametrize(("code", "expected"), [(3, 3), (0, 71)])
def test_regression_workers_that_fail_together_end_the_start(code: int,
                                                             expected: int) -> None:
    # Workers that exited together were reaped in one go; the supervisor stopped at the
    # first, left the others marked as running and waited for them forever.
    run = subprocess.run([sys.executable, "-c", WORKERS_FAIL_TOGETHER.replace("CODE", str(code))],
                         capture_output=True, text=True, env=daemon_env(), timeout=30)
    assert run.returncode == expected, run.stderr
    assert "could not start" in run.stderr
