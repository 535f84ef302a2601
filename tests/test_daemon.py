"""The daemon end to end, with clients we did not write: smtplib, aiosmtplib and swaks."""

from __future__ import annotations

import asyncio
import json
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Daemon, make_daemon

MSG = (b"From: Alice <alice@example.org>\r\nTo: bob@localhost\r\nSubject: test\r\n"
       b"Message-ID: <m1@example.org>\r\n\r\nHello Bob.\r\n")


def log_events(d: Daemon) -> list[dict[str, object]]:
    deadline = time.monotonic() + 3
    while True:
        lines = d.log_path.read_text("utf-8").splitlines() if d.log_path.exists() else []
        records = [json.loads(line) for line in lines]
        if records or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def wait_for_event(d: Daemon, event: str, timeout: float = 5.0,
                   count: int = 1) -> list[dict[str, object]]:
    """The `event` lines of the mail log, once there are at least `count` (the log is
    flushed in batches, so lines of one test may arrive in several)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in log_events(d) if r["event"] == event]
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {event} event in the mail log")


def test_smtplib_plain_and_tls(daemon: Daemon) -> None:
    with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as s:
        code, caps = s.ehlo("client.example")
        assert code == 250
        for ext in (b"PIPELINING", b"SIZE 52428800", b"8BITMIME", b"SMTPUTF8",
                    b"ENHANCEDSTATUSCODES", b"DSN", b"CHUNKING", b"STARTTLS"):
            assert ext in caps
        assert s.sendmail("alice@example.org", ["bob@localhost"], MSG) == {}
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s.starttls(context=ctx)
        code, caps = s.ehlo("client.example")
        assert b"STARTTLS" not in caps
        assert s.sendmail("alice@example.org", ["bob@localhost", "carol@localhost"], MSG) == {}
    ids = daemon.ids()
    assert len(ids) == 2
    env, body = daemon.load(ids[1])
    assert body.endswith(MSG)
    received = body[: body.index(b"From: Alice")].decode()
    assert received.startswith("Received: from client.example ([127.0.0.1])")
    assert "with ESMTPS id " + ids[1] in received
    assert "version=TLSv1." in received and "cipher=" in received
    assert env.tls and env.tls.startswith("TLSv1.")  # type: ignore[attr-defined]
    assert [r.address for r in env.recipients] == ["bob@localhost", "carol@localhost"]  # type: ignore[attr-defined]
    queued = wait_for_event(daemon, "queued", count=len(ids))
    assert {q["qid"] for q in queued} == set(ids)


def test_envelope_keeps_dsn_parameters(daemon: Daemon) -> None:
    with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as s:
        s.ehlo("client.example")
        s.sendmail("alice@example.org", ["bob@localhost"], MSG,
                   mail_options=["RET=HDRS", "ENVID=abc+2Bdef", "BODY=8BITMIME"],
                   rcpt_options=["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;Bob+40example.org"])
    env, _ = daemon.load(daemon.ids()[0])
    assert env.mail_params == {"RET": "HDRS", "ENVID": "abc+def",  # type: ignore[attr-defined]
                               "SIZE": str(len(MSG)), "BODY": "8BITMIME"}
    rcpt = env.recipients[0]  # type: ignore[attr-defined]
    assert (rcpt.notify, rcpt.orcpt) == ("SUCCESS,DELAY", "rfc822;Bob@example.org")
    assert env.client_ip == "127.0.0.1" and env.helo == "client.example"  # type: ignore[attr-defined]
    assert env.arrival > 0  # type: ignore[attr-defined]


async def test_aiosmtplib(daemon: Daemon) -> None:
    import aiosmtplib

    client = aiosmtplib.SMTP(hostname=daemon.host, port=daemon.port, start_tls=False)
    await client.connect()
    await client.ehlo()
    errors, _ = await client.sendmail("alice@example.org", ["bob@localhost"], MSG)
    assert errors == {}
    await client.starttls(validate_certs=False)
    errors, _ = await client.sendmail("", ["postmaster@localhost"], MSG)
    assert errors == {}
    await client.quit()
    assert len(daemon.ids()) == 2


@pytest.mark.parametrize("flags", [[], ["--pipeline"], ["--tls"], ["--tls", "--pipeline"]],
                         ids=["plain", "pipeline", "tls", "tls-pipeline"])
def test_swaks(daemon: Daemon, flags: list[str]) -> None:
    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.skip("swaks is not installed (scripts/test.sh installs it)")
    out = subprocess.run(
        [swaks, "--server", f"{daemon.host}:{daemon.port}", "--from", "alice@example.org",
         "--to", "bob@localhost,carol@localhost", "--helo", "swaks.example", *flags],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Ok: queued as" in out.stdout
    ids = daemon.ids()
    assert len(ids) == 1
    env, body = daemon.load(ids[0])
    assert [r.address for r in env.recipients] == ["bob@localhost", "carol@localhost"]  # type: ignore[attr-defined]
    assert b"This is a test mailing" in body
    if "--tls" in flags:
        assert b"with ESMTPS" in body.split(b"\r\n\r\n")[0]


def test_bdat_with_real_bytes(daemon: Daemon) -> None:
    with daemon.connect() as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 ")
        s.sendall(b"EHLO c.example\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        part1 = b"Subject: chunks\r\n\r\nfirst part "
        part2 = b"second part\r\n"
        s.sendall(b"MAIL FROM:<a@example.org> BODY=8BITMIME\r\nRCPT TO:<b@localhost>\r\n"
                  + b"BDAT %d\r\n" % len(part1) + part1
                  + b"BDAT %d LAST\r\n" % len(part2) + part2)
        replies = [f.readline() for _ in range(4)]
        assert [r[:3] for r in replies] == [b"250"] * 4, replies
        assert b"queued as" in replies[3]
    _, body = daemon.load(daemon.ids()[0])
    assert body.endswith(part1 + part2)


def test_relay_denied_for_untrusted_client(tmp_path: Path) -> None:
    # Only 127.0.0.1/32 is trusted by default; 127.0.0.2 is another "host".
    d = make_daemon(tmp_path, extra="[relay]\ntrusted_networks = [\"127.0.0.9/32\"]\n")
    d.start()
    try:
        with smtplib.SMTP(d.host, d.port, timeout=10) as s:
            s.ehlo("c.example")
            s.mail("a@example.org")
            assert s.rcpt("someone@elsewhere.test")[0] == 554
            code, msg = s.rcpt("someone@elsewhere.test")
            assert code == 554 and b"5.7.1" in msg
            assert s.rcpt("bob@localhost")[0] == 250
            assert s.rcpt("bob@LOCALHOST")[0] == 250
            assert s.rcpt("Postmaster")[0] == 250
    finally:
        d.stop()
    rejects = [r for r in log_events(d) if r["event"] == "reject"]
    assert any(r.get("phase") == "rcpt" for r in rejects)


def test_no_disk_space_is_452_at_mail(tmp_path: Path) -> None:
    d = make_daemon(tmp_path, extra="[spool]\nmin_free_space = \"1000000G\"\n")
    d.start()
    try:
        with smtplib.SMTP(d.host, d.port, timeout=10) as s:
            s.ehlo("c.example")
            code, msg = s.mail("a@example.org")
            assert code == 452 and msg.startswith(b"4.3.1"), msg
    finally:
        d.stop()


def test_store_failure_is_451_and_session_survives(tmp_path: Path) -> None:
    d = make_daemon(tmp_path, extra="[spool]\ninline_max = 1024\n")
    d.start()
    try:
        # Remove the spool directory under the running daemon: a message too large to be
        # stored inline cannot be written anywhere.
        shutil.rmtree(d.data_dir / "spool")
        (d.data_dir / "spool").write_text("not a directory")
        big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 200
        with smtplib.SMTP(d.host, d.port, timeout=10) as s:
            s.ehlo("c.example")
            with pytest.raises(smtplib.SMTPDataError) as err:
                s.sendmail("a@example.org", ["b@localhost"], big)
            assert err.value.smtp_code == 451 and err.value.smtp_error.startswith(b"4.3.0")
            # The session goes on, and a small (inline) message still gets through.
            assert s.sendmail("a@example.org", ["b@localhost"], MSG) == {}
            assert s.noop()[0] == 250
    finally:
        d.stop()


def test_connection_limit_per_ip(tmp_path: Path) -> None:
    d = make_daemon(tmp_path, {"max_connections_per_ip": 2})
    d.start()
    socks = []
    try:
        for _ in range(2):
            s = d.connect()
            assert s.recv(100).startswith(b"220 ")
            socks.append(s)
        s3 = d.connect()
        data = s3.recv(200)
        assert data.startswith(b"421 4.7.0"), data
        assert s3.recv(100) == b""
        s3.close()
        socks[0].close()
        time.sleep(0.3)
        s4 = d.connect()
        assert s4.recv(100).startswith(b"220 ")
        socks.append(s4)
    finally:
        for s in socks:
            s.close()
        d.stop()


def test_global_connection_limit(tmp_path: Path) -> None:
    d = make_daemon(tmp_path, {"max_connections": 1, "max_connections_per_ip": 1})
    d.start()
    try:
        with d.connect() as s1:
            assert s1.recv(100).startswith(b"220 ")
            with d.connect() as s2:
                assert s2.recv(200).startswith(b"421 4.7.0")
    finally:
        d.stop()


def test_command_timeout(tmp_path: Path) -> None:
    d = make_daemon(tmp_path, extra="[smtp.timeouts]\ncommand = 1\n")
    d.start()
    try:
        with d.connect() as s:
            s.settimeout(10)
            assert s.recv(100).startswith(b"220 ")
            started = time.monotonic()
            data = s.recv(200)
            assert data.startswith(b"421 4.4.2"), data
            assert time.monotonic() - started < 8
    finally:
        d.stop()


def test_sigterm_tempfails_idle_and_lets_a_message_finish(tmp_path: Path) -> None:
    d = make_daemon(tmp_path, extra="[smtp.timeouts]\nshutdown_grace = 5\n")
    d.start()
    idle = d.connect()
    assert idle.recv(100).startswith(b"220 ")
    busy = d.connect()
    f = busy.makefile("rb")
    f.readline()
    busy.sendall(b"EHLO c.example\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    busy.sendall(b"MAIL FROM:<a@example.org>\r\n")
    assert f.readline().startswith(b"250")
    busy.sendall(b"RCPT TO:<b@localhost>\r\n")
    assert f.readline().startswith(b"250")
    busy.sendall(b"DATA\r\n")
    assert f.readline().startswith(b"354")
    busy.sendall(b"Subject: in flight\r\n\r\npart one\r\n")
    assert d.proc is not None
    d.proc.send_signal(15)
    # The idle session is told at once; the one in DATA may finish its message.
    idle.settimeout(5)
    assert idle.recv(200).startswith(b"421 4.3.2")
    # New connections are refused while stopping.
    time.sleep(0.3)
    with pytest.raises(OSError):
        socket.create_connection((d.host, d.port), timeout=2).recv(10) or (_ for _ in ()).throw(
            ConnectionRefusedError())
    busy.sendall(b"part two\r\n.\r\n")
    assert f.readline().startswith(b"250 2.0.0 Ok: queued as")
    assert f.readline().startswith(b"421 4.3.2")
    assert d.stop() == 0
    assert len(d.ids()) == 1
    events = [r["event"] for r in log_events(d)]
    assert "stopping" in events
    idle.close()
    busy.close()


def test_mail_log_follows_the_session(daemon: Daemon) -> None:
    with smtplib.SMTP(daemon.host, daemon.port, timeout=10) as s:
        s.ehlo("client.example")
        s.sendmail("alice@example.org", ["bob@localhost"], MSG)
    time.sleep(0.6)
    events = log_events(daemon)
    names = [e["event"] for e in events]
    for name in ("starting", "listening", "connect", "helo", "queued", "disconnect"):
        assert name in names, names
    queued = next(e for e in events if e["event"] == "queued")
    assert queued["qid"] == daemon.ids()[0]
    assert queued["sender"] == "alice@example.org"


def test_data_dir_and_listen_flags(tmp_path: Path) -> None:
    port = __import__("tests.conftest", fromlist=["free_port"]).free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "albatross", "serve", "--data-dir", str(tmp_path / "d"),
         "--listen", f"127.0.0.1:{port}", "--dns", "127.0.0.53:53"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=__import__("tests.conftest", fromlist=["daemon_env"]).daemon_env())
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().decode()
        second = proc.stdout.readline().decode()
        assert f"listening on 127.0.0.1:{port}" in first
        assert str(tmp_path / "d") in second
        assert (tmp_path / "d" / "queue.db").exists()
        assert (tmp_path / "d" / "tls" / "selfsigned.crt").exists()
    finally:
        proc.terminate()
        proc.wait(20)
    assert proc.returncode == 0


def test_asyncio_loop_not_blocked(daemon: Daemon) -> None:
    async def many() -> None:
        import aiosmtplib

        async def one(i: int) -> None:
            await aiosmtplib.send(MSG, sender=f"s{i}@example.org", recipients=["b@localhost"],
                                  hostname=daemon.host, port=daemon.port, start_tls=False)

        await asyncio.gather(*(one(i) for i in range(40)))

    asyncio.run(many())
    assert len(daemon.ids()) == 40
    daemon.stop()
    assert not daemon.slow_callbacks(), daemon.slow_callbacks()


def test_on_uvloop(tmp_path: Path) -> None:
    """Production runs on uvloop when installed; the tests above use the standard loop for
    its debug mode, so the same session paths run here on uvloop."""
    pytest.importorskip("uvloop")
    d = make_daemon(tmp_path)
    d.env["ALBATROSS_EVENT_LOOP"] = "auto"
    d.env.pop("PYTHONASYNCIODEBUG", None)
    d.start()
    try:
        with smtplib.SMTP(d.host, d.port, timeout=10) as s:
            s.ehlo("client.example")
            assert s.sendmail("alice@example.org", ["bob@localhost"], MSG) == {}
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s.starttls(context=ctx)
            s.ehlo("client.example")
            assert s.sendmail("alice@example.org", ["bob@localhost"], MSG) == {}
        assert len(d.ids()) == 2
    finally:
        assert d.stop() == 0
    assert "Traceback" not in "".join(d.output), "".join(d.output)


def test_large_message_is_streamed_to_a_spool_file(tmp_path: Path) -> None:
    d = make_daemon(tmp_path)
    d.start()
    try:
        line = b"0123456789" * 9 + b"\r\n"
        big = b"Subject: large\r\n\r\n" + line * 60_000  # about 5.5 MB
        with smtplib.SMTP(d.host, d.port, timeout=30) as s:
            s.ehlo("c.example")
            assert s.sendmail("a@example.org", ["b@localhost"], big) == {}
        qid = d.ids()[0]
        _env, body = d.load(qid)
        assert body.endswith(big)
        files = [p for p in (d.data_dir / "spool").rglob("*") if p.is_file()]
        assert any(p.name == qid for p in files), files
        assert not list((d.data_dir / "spool" / "tmp").iterdir())
    finally:
        d.stop()


def test_smtp_source_load(daemon: Daemon) -> None:
    source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    if not Path(source).exists():
        pytest.skip("smtp-source is not installed (scripts/test.sh installs postfix)")
    out = subprocess.run([source, "-c", "-s", "20", "-m", "400", "-l", "2048",
                          "-f", "load@example.org", "-t", "sink@localhost",
                          f"{daemon.host}:{daemon.port}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(daemon.ids()) == 400


def test_regression_starttls_silence_gives_the_slot_back(tmp_path: Path) -> None:
    """A client that sends STARTTLS and then nothing used to keep its connection slot
    forever (asyncio's TLS layer swallowed connection_lost after the handshake timeout)."""
    d = make_daemon(tmp_path, {"max_connections_per_ip": 2},
                    extra="[smtp.timeouts]\ntls_handshake = 1\n")
    d.start()
    try:
        silent = []
        for _ in range(2):
            s = d.connect()
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"EHLO c.example\r\nSTARTTLS\r\n")
            while not f.readline().startswith(b"220 "):
                pass
            silent.append(s)
        time.sleep(2.5)
        with d.connect() as s3:
            assert s3.recv(100).startswith(b"220 "), "the slots were not given back"
        for s in silent:
            s.close()
    finally:
        d.stop()


def test_regression_client_that_never_reads_cannot_grow_our_memory(daemon: Daemon) -> None:
    def rss_kib() -> int:
        assert daemon.proc is not None
        status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
        return int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS")).split()[1])

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((daemon.host, daemon.port))
    sock.settimeout(0.5)
    before = rss_kib()
    sent = 0
    chunk = b"HELP\r\n" * 10000  # each HELP costs about 20 times its size in replies
    try:
        while sent < 4_000_000:
            sock.sendall(chunk)
            sent += len(chunk)
    except (TimeoutError, OSError):
        pass  # the server stopped reading from us: that is the backpressure
    time.sleep(0.5)
    grown = rss_kib() - before
    sock.close()
    assert grown < 20_000, f"RSS grew by {grown} KiB for {sent} bytes of HELP"


def test_regression_half_close_after_the_final_dot_still_gets_250(daemon: Daemon) -> None:
    with daemon.connect() as s:
        s.sendall(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@localhost>\r\n")
        time.sleep(0.3)
        s.sendall(b"DATA\r\n")
        time.sleep(0.3)
        s.sendall(b"Subject: half\r\n\r\nx\r\n.\r\nQUIT\r\n")
        s.shutdown(socket.SHUT_WR)  # like printf ... | nc -N
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert b"250 2.0.0 Ok: queued as" in data and data.rstrip().endswith(b"221 2.0.0 Bye")
    assert len(daemon.ids()) == 1
