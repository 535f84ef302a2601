"""`albatross queue` against a running daemon and a stopped one, with real deliveries to
local Maildirs and a real DSN."""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import Daemon, daemon_env, make_daemon

LOCAL = '[local]\nusers = ["alice", "bob"]\n'
MSG = b"From: bob@localhost\r\nTo: alice@localhost\r\nSubject: queue test\r\n\r\nHello.\r\n"


def queue(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "albatross", "queue", "--config",
                           str(d.config), *args], capture_output=True, text=True,
                          env=daemon_env(), timeout=60)


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
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
        assert code == 250
        return resp.decode().rsplit(" ", 1)[-1]


def attempts(d: Daemon, qid: str) -> int:
    from albatross.spool import Spool

    sched = Spool(d.data_dir).schedule(qid)
    return sched.attempts if sched else -1


def maildir(d: Daemon, user: str) -> list[Path]:
    new = d.data_dir / "mail" / user / "Maildir" / "new"
    return sorted(new.iterdir()) if new.exists() else []


def test_queue_commands_end_to_end(tmp_path: Path) -> None:
    d = make_daemon(tmp_path, extra=LOCAL, deliver=True)
    (d.data_dir / "mail").mkdir(parents=True)
    # alice's mailbox cannot be written: her mail is deferred and waits in the queue.
    (d.data_dir / "mail" / "alice").write_text("not a directory")
    d.start()
    try:
        qid = send(d)
        wait_for(lambda: attempts(d, qid) == 1)

        out = queue(d, "list")
        assert out.returncode == 0, out.stderr
        assert qid in out.stdout and "<alice@localhost>" in out.stdout
        assert "cannot write to mailbox alice" in out.stdout
        rows = [json.loads(line) for line in queue(d, "list", "--json").stdout.splitlines()]
        assert [r["qid"] for r in rows] == [qid] and rows[0]["attempts"] == 1
        assert queue(d, "list", "--domain", "localhost").stdout.count(qid) == 1
        assert qid not in queue(d, "list", "--domain", "example.org").stdout
        assert qid not in queue(d, "list", "--sender", "carol@localhost").stdout
        assert qid not in queue(d, "list", "--older-than", "1h").stdout
        assert queue(d, "list", "--older-than", "soon").returncode == 64

        show = queue(d, "show", qid)
        assert show.returncode == 0
        assert "Sender:       <bob@localhost>" in show.stdout
        assert "<alice@localhost> pending" in show.stdout and "451 4.2.0" in show.stdout
        assert queue(d, "show", "A0000000000000000").returncode == 67

        stats = queue(d, "stats")
        assert "localhost" in stats.stdout and "TOTAL" in stats.stdout

        assert queue(d, "hold", qid).returncode == 0
        assert " held " in queue(d, "list").stdout
        assert queue(d, "flush", qid).returncode == 67  # held mail is not flushed
        assert queue(d, "release", qid).returncode == 0

        # Mend the mailbox and flush: delivered at once, not in five minutes.
        (d.data_dir / "mail" / "alice").unlink()
        out = queue(d, "flush", qid)
        assert out.returncode == 0 and "1 message(s) flushed" in out.stdout
        wait_for(lambda: not d.ids())
        assert len(maildir(d, "alice")) == 1

        # A bounce by the administrator: the DSN lands in bob's (the sender's) mailbox.
        (d.data_dir / "mail" / "alice").rename(tmp_path / "alice-away")
        (d.data_dir / "mail" / "alice").write_text("not a directory")
        qid2 = send(d)
        wait_for(lambda: attempts(d, qid2) == 1)
        assert queue(d, "bounce", qid2).returncode == 0
        wait_for(lambda: len(maildir(d, "bob")) == 1 and not d.ids())
        dsn = email.message_from_bytes(maildir(d, "bob")[0].read_bytes(),
                                       policy=email.policy.default)
        assert dsn.get_content_type() == "multipart/report"
        assert dsn["Auto-Submitted"] == "auto-replied"
        status = next(p for p in dsn.walk()
                      if p.get_content_type() == "message/delivery-status")
        text = status.as_string()
        assert "Final-Recipient: rfc822;alice@localhost" in text.replace("; ", ";")
        assert "Action: failed" in text and "Status: 5.0.0" in text

        qid3 = send(d)
        wait_for(lambda: attempts(d, qid3) == 1)
        assert queue(d, "delete", qid3).returncode == 0
        assert not d.ids()
        assert queue(d, "delete", qid3).returncode == 67
    finally:
        d.stop()
    events = [json.loads(line) for line in d.log_path.read_text().splitlines()]
    names = [e["event"] for e in events]
    for name in ("attempt", "deferred", "delivered", "bounced", "dsn-sent", "deleted"):
        assert name in names, name
    deleted = next(e for e in events if e["event"] == "deleted")
    assert deleted["qid"] == qid3 and deleted["rcpt"] == ["alice@localhost"]


def test_list_works_on_a_stopped_daemon_and_actions_say_why_not(tmp_path: Path) -> None:
    d = make_daemon(tmp_path, extra=LOCAL)
    d.start()
    qid = send(d)
    d.stop()
    out = queue(d, "list")
    assert out.returncode == 0 and qid in out.stdout
    assert queue(d, "show", qid).returncode == 0
    flush = queue(d, "flush")
    assert flush.returncode == 75 and "not running" in flush.stderr
