"""Tests for delivery.smtp: the SMTP courier against real peers on 127.0.0.x.

Peers: Postfix's smtp-sink (with and without PIPELINING, refusing or tempfailing commands,
slow, disconnecting; each message dumped to a file) and, for what smtp-sink cannot do
(SIZE, CHUNKING, STARTTLS, per-recipient verdicts, a 421 greeting, AUTH), a small scripted
asyncio server written here. DNS is a fake zone (tests/test_delivery_mx.py).
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme

from albatross.delivery import Delivery
from albatross.delivery.mx import RoutePolicy
from albatross.delivery.smtp import Relay, SmtpCourier, Timeouts
from albatross.delivery.tls import TlsPolicies, TlsPolicy
from albatross.dns import Status
from albatross.model import Envelope, Outcome, Recipient
from tests.test_delivery_mx import Zone

SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
needs_sink = pytest.mark.skipif(not os.path.exists(SINK), reason="smtp-sink not installed")

BODY = (b"From: a@albatross.test\r\nSubject: test\r\n\r\nline one\n.dot line\r\n"
        b"..two dots\rbare cr\r\n.\r\nlast line without end")
# What the next hop must store: CRLF everywhere, a final CRLF, dots unstuffed.
BODY_CLEAN = (b"From: a@albatross.test\r\nSubject: test\r\n\r\nline one\r\n.dot line\r\n"
              b"..two dots\r\nbare cr\r\n.\r\nlast line without end\r\n")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def delivery(*rcpts: str | Recipient, sender: str = "a@albatross.test", body: bytes = BODY,
             params: dict[str, str | None] | None = None, domain: str = "example.org",
             ) -> Delivery:
    rs = [r if isinstance(r, Recipient) else Recipient(r) for r in rcpts]
    env = Envelope(sender=sender, recipients=rs, mail_params=params or {})
    return Delivery(qid="Q1", envelope=env, recipients=tuple(rs), body=body, destination=domain)


def zone_for(domain: str, *mxs: tuple[int, str, tuple[str, ...]]) -> Zone:
    z = Zone()
    z.mx_records(domain, *[(p, h) for p, h, _ in mxs])
    for _, h, ips in mxs:
        z.host(h, *ips)
    return z


FAST = Timeouts(connect=3, greeting=5, ehlo=5, starttls=5, auth=5, mail=5, rcpt=5, data=5,
                block=5, dot=5, rset=5, quit=2)


def courier(zone: Zone, port: int, **kw: Any) -> SmtpCourier:
    kw.setdefault("timeouts", FAST)
    return SmtpCourier(zone, helo_name="albatross.test", port=port, **kw)


# --- smtp-sink ---------------------------------------------------------------------------------

@dataclass
class Sink:
    host: str
    port: int
    dump: Path
    log: Path
    proc: subprocess.Popen[bytes]
    probes: int = 0

    def connections(self) -> int:
        text = self.log.read_text("utf-8", "replace")
        return text.count(": connect (") - self.probes

    def messages(self, expect: int = 1, wait: float = 5.0) -> list[str]:
        deadline = time.monotonic() + wait
        while True:
            files = sorted(self.dump.glob("m.*"), key=lambda p: p.stat().st_mtime)
            texts = [p.read_text("utf-8", "replace") for p in files]
            done = [t for t in texts if t.endswith("\n\n")]
            if len(done) >= expect or time.monotonic() > deadline:
                return done
            time.sleep(0.05)


@pytest.fixture
def sinks() -> Iterator[Callable[..., Sink]]:
    started: list[Sink] = []
    dirs: list[str] = []

    def start(host: str, *options: str, port: int | None = None) -> Sink:
        port = port or free_port(host)
        # smtp-sink drops root to the user given by -u, which must be able to write the dump.
        d = tempfile.mkdtemp(prefix="albatross-sink-")
        dirs.append(d)
        os.chmod(d, 0o777)
        dump = Path(d) / "dump"
        dump.mkdir()
        os.chmod(dump, 0o777)
        log = Path(d) / "sink.log"
        user = ["-u", "postfix"] if os.geteuid() == 0 else []
        cmd = [SINK, *user, "-v", "-d", f"{dump}/m.", *options, f"{host}:{port}", "64"]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        sink = Sink(host, port, dump, log, proc)
        started.append(sink)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((host, port), timeout=1).close()
                sink.probes += 1
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("smtp-sink did not start: " + log.read_text()) from None
                time.sleep(0.05)
        # Wait until the probe's session is logged, so it is not counted later.
        while log.read_text().count(": connect (") < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        return sink

    yield start
    for s in started:
        if s.proc.poll() is None:
            os.killpg(s.proc.pid, signal.SIGTERM)
            s.proc.wait(10)
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


# --- a scripted server for what smtp-sink lacks --------------------------------------------------

@dataclass
class Message:
    mail: str
    rcpts: list[str]
    content: bytes  # as received: still dot-stuffed for DATA
    tls: bool
    chunked: bool


@dataclass
class Scripted:
    """A small SMTP server: fixed EHLO keywords, per-recipient verdicts, optional STARTTLS
    and AUTH PLAIN, and a record of what arrived and how it was packed into reads."""

    host: str
    port: int
    greeting: str = "220 scripted.test ESMTP"
    keywords: tuple[str, ...] = ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES")
    tls: ssl.SSLContext | None = None
    tls_breaks: bool = False  # answer STARTTLS with 220, then the ClientHello with garbage
    tls_closes: bool = False  # answer STARTTLS with 220 and hang up
    tls_stalls: bool = False  # answer STARTTLS with 220 and never answer the ClientHello
    silent: bool = False  # never greet
    vanish_at_mail: int | None = None  # hang up without a reply at this MAIL of a connection
    close_at_mail: int | None = None  # answer this MAIL of a connection with 421 and hang up
    rcpt: Callable[[str], str] = lambda addr: "250 2.1.5 ok"
    auth: tuple[str, str] | None = None
    connections: int = 0
    messages: list[Message] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    reads: list[int] = field(default_factory=list)  # command lines per read
    server: asyncio.Server | None = None

    async def start(self) -> Scripted:
        self.server = await asyncio.start_server(self._session, self.host, self.port)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._dialog(reader, writer)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _dialog(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        if self.silent:
            await reader.read()
            return
        say(self.greeting)
        if not self.greeting.startswith("220"):
            await writer.drain()
            return
        buf = bytearray()
        tls = False
        mails = 0
        mode = "cmd"
        need = 0
        mail = ""
        rcpts: list[str] = []
        while True:
            await writer.drain()
            data = await reader.read(65536)
            if not data:
                return
            if mode == "cmd":
                self.reads.append((bytes(buf) + data).count(b"\r\n"))
            buf += data
            while True:
                if mode == "data":
                    if buf.startswith(b".\r\n"):
                        end, skip = 0, 3
                    else:
                        i = buf.find(b"\r\n.\r\n")
                        if i < 0:
                            break
                        end, skip = i + 2, i + 5
                    self.messages.append(Message(mail, rcpts, bytes(buf[:end]), tls, False))
                    del buf[:skip]
                    say("250 2.0.0 queued")
                    mode = "cmd"
                    continue
                if mode == "bdat":
                    if len(buf) < need:
                        break
                    self.messages.append(Message(mail, rcpts, bytes(buf[:need]), tls, True))
                    del buf[:need]
                    say("250 2.0.0 queued")
                    mode = "cmd"
                    continue
                lf = buf.find(b"\r\n")
                if lf < 0:
                    break
                line = bytes(buf[:lf]).decode("utf-8")
                del buf[: lf + 2]
                self.commands.append(line)
                verb, _, arg = line.partition(" ")
                verb = verb.upper()
                if verb == "EHLO":
                    keys = list(self.keywords)
                    if self.tls is not None and not tls:
                        keys.append("STARTTLS")
                    if self.auth is not None:
                        keys.append("AUTH PLAIN")
                    lines = ["scripted.test", *keys]
                    for n, k in enumerate(lines):
                        say(f"250{' ' if n == len(lines) - 1 else '-'}{k}")
                elif verb == "STARTTLS" and self.tls is not None:
                    say("220 2.0.0 go ahead")
                    await writer.drain()
                    if self.tls_closes:
                        return
                    if self.tls_stalls:
                        await reader.read()
                        return
                    if self.tls_breaks:
                        await reader.read(65536)  # the ClientHello
                        writer.write(b"this is not a TLS handshake\r\n" * 10)
                        await writer.drain()
                        return
                    await writer.start_tls(self.tls)
                    tls = True
                    buf.clear()
                elif verb == "AUTH" and self.auth is not None:
                    user, pw = self.auth
                    good = base64.b64encode(f"\0{user}\0{pw}".encode()).decode()
                    say("235 2.7.0 ok" if arg == f"PLAIN {good}" else "535 5.7.8 bad")
                elif verb == "MAIL":
                    mails += 1
                    if mails == self.vanish_at_mail:
                        return
                    if mails == self.close_at_mail:
                        say("421 4.3.2 shutting down")
                        await writer.drain()
                        return
                    mail, rcpts = arg, []
                    say("250 2.1.0 ok")
                elif verb == "RCPT":
                    reply = self.rcpt(arg[4:].split(">")[0])
                    if reply.startswith("2"):
                        rcpts.append(arg)
                    say(reply)
                elif verb == "DATA":
                    if rcpts:
                        say("354 go ahead")
                        mode = "data"
                    else:
                        say("554 5.5.1 no valid recipients")
                elif verb == "BDAT":
                    need = int(arg.split()[0])
                    mode = "bdat"
                elif verb == "RSET":
                    mail, rcpts = "", []
                    say("250 2.0.0 ok")
                elif verb == "QUIT":
                    say("221 2.0.0 bye")
                    await writer.drain()
                    return
                else:
                    say("502 5.5.1 unknown")


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Any]]:
    servers: list[Scripted] = []

    async def start(host: str, port: int | None = None, **kw: Any) -> Scripted:
        s = Scripted(host, port or free_port(host), **kw)
        servers.append(s)
        return await s.start()

    yield start
    for s in servers:
        await s.stop()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA, name: str = "mx.example.org") -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(ctx)
    return ctx


def statuses(outcomes: list[Outcome]) -> list[tuple[str, str, int]]:
    return [(o.recipient, o.status, o.reply.code) for o in outcomes]


# --- delivery through smtp-sink -----------------------------------------------------------------

@needs_sink
async def test_delivery_with_pipelining(sinks: Callable[..., Sink]) -> None:
    sink = sinks("127.0.0.2")
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, sink.port)
    rcpts = [Recipient("b@example.org", notify="SUCCESS,FAILURE",
                       orcpt="rfc822;b+orig@example.org"), Recipient("c@example.org")]
    out = await c.deliver(delivery(*rcpts, params={"RET": "HDRS", "ENVID": "env 1"}))
    await c.close()
    assert statuses(out) == [("b@example.org", "delivered", 250),
                             ("c@example.org", "delivered", 250)]
    assert all(o.category == "ok" and o.remote_host == "mx.example.org"
               and o.remote_ip == "127.0.0.2" and o.tls is None for o in out)
    assert out[0].reply.enhanced == "2.0.0"
    [msg] = sink.messages()
    # smtp-sink offers DSN: the parameters went along, xtext-encoded.
    assert "X-Mail-Args: <a@albatross.test> RET=HDRS ENVID=env+201\n" in msg
    assert ("X-Rcpt-Args: <b@example.org> NOTIFY=SUCCESS,FAILURE "
            "ORCPT=rfc822;b+2Borig@example.org\n") in msg
    assert "X-Rcpt-Args: <c@example.org>\n" in msg
    # The dump has LF line ends; the content is ours, unstuffed, bare CR/LF made lines.
    assert msg.split("(UTC)\n", 1)[1] == BODY_CLEAN.decode().replace("\r\n", "\n") + "\n"
    assert sink.connections() == 1


@needs_sink
async def test_delivery_without_pipelining(sinks: Callable[..., Sink]) -> None:
    sink = sinks("127.0.0.2", "-p", "-E", "-N")  # no PIPELINING, ENHANCEDSTATUSCODES, DSN
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, sink.port)
    out = await c.deliver(delivery(Recipient("b@example.org", notify="NEVER"),
                                   "c@example.org", params={"RET": "FULL"}))
    await c.close()
    assert [o.status for o in out] == ["delivered", "delivered"]
    # smtp-sink -E stops announcing ENHANCEDSTATUSCODES but still sends the codes: taken.
    assert out[0].reply.enhanced == "2.0.0"
    [msg] = sink.messages()
    assert "X-Mail-Args: <a@albatross.test>\n" in msg  # no DSN offered: none passed
    assert "X-Rcpt-Args: <b@example.org>\n" in msg


@needs_sink
async def test_helo_fallback_with_a_server_without_esmtp(sinks: Callable[..., Sink]) -> None:
    sink = sinks("127.0.0.2", "-e")
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, sink.port)
    [o] = await c.deliver(delivery("b@example.org"))
    await c.close()
    assert o.status == "delivered"
    log = sink.log.read_text()
    assert "EHLO albatross.test" in log and "HELO albatross.test" in log
    [msg] = sink.messages()
    assert "X-Client-Proto: SMTP\n" in msg


async def test_garbage_greeting_is_a_protocol_failure(scripted: Callable[..., Any]) -> None:
    srv = await scripted("127.0.0.2", greeting="hello, I am not an SMTP server")
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    [o] = await courier(z, srv.port).deliver(delivery("b@example.org"))
    assert (o.status, o.category, o.reply.code) == ("deferred", "protocol", 451)
    assert "not an SMTP reply" in o.reply.text


@needs_sink
async def test_421_after_rcpt_defers_with_that_reply(sinks: Callable[..., Sink]) -> None:
    sink = sinks("127.0.0.2", "-Q", "RCPT")
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, sink.port)
    out = await c.deliver(delivery("b@example.org", "c@example.org"))
    again = await c.deliver(delivery("d@example.org"))  # a new connection, not the dead one
    await c.close()
    assert [(o.status, o.reply.code, o.category) for o in out] == [
        ("deferred", 421, "policy")] * 2
    assert again[0].reply.code == 421 and c.connections_opened == 2


async def test_no_recipients_no_outcomes() -> None:
    assert await courier(Zone(), 1).deliver(delivery()) == []


@needs_sink
async def test_every_recipient_refused_by_the_sink(sinks: Callable[..., Sink]) -> None:
    hard = sinks("127.0.0.2", "-f", "RCPT")
    soft = sinks("127.0.0.3", "-r", "RCPT")
    for sink, status, code in ((hard, "bounced", 500), (soft, "deferred", 450)):
        z = zone_for("example.org", (10, "mx.example.org", (sink.host,)))
        c = courier(z, sink.port)
        out = await c.deliver(delivery("b@example.org", "c@example.org"))
        await c.close()
        assert [(o.status, o.reply.code, o.category) for o in out] == [
            (status, code, "policy")] * 2
        assert sink.messages(expect=0, wait=0.2) == []


@needs_sink
async def test_disconnect_mid_transaction_defers(sinks: Callable[..., Sink]) -> None:
    sink = sinks("127.0.0.2", "-q", "RCPT")
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, sink.port)
    out = await c.deliver(delivery("b@example.org"))
    await c.close()
    [o] = out
    assert (o.status, o.category, o.reply.code) == ("deferred", "connect", 451)
    assert "lost connection with mx.example.org [127.0.0.2]" in o.reply.text


@needs_sink
async def test_timeout_names_the_stage(sinks: Callable[..., Sink]) -> None:
    # Without PIPELINING each command is its own stage (a pipelining sink holds the MAIL
    # reply back until the RCPT reply is ready, so the wait would be in the MAIL stage).
    sink = sinks("127.0.0.2", "-p", "-W", "RCPT:3")
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, sink.port, timeouts=Timeouts(rcpt=0.5))
    t0 = time.monotonic()
    out = await c.deliver(delivery("b@example.org"))
    await c.close()
    assert time.monotonic() - t0 < 2.5
    [o] = out
    assert (o.status, o.category, o.reply.code, o.reply.enhanced) == (
        "deferred", "timeout", 451, "4.4.2")
    assert "RCPT reply from mx.example.org [127.0.0.2]" in o.reply.text


@needs_sink
async def test_connection_refused_then_second_address(sinks: Callable[..., Sink]) -> None:
    sink = sinks("127.0.0.3")
    with socket.socket() as probe:  # nothing listens on 127.0.0.2 at that port
        probe.bind(("127.0.0.2", sink.port))
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2", "127.0.0.3")))
    c = courier(z, sink.port)
    out = await c.deliver(delivery("b@example.org"))
    await c.close()
    [o] = out
    assert (o.status, o.remote_ip) == ("delivered", "127.0.0.3")
    assert len(sink.messages()) == 1


async def test_all_addresses_refused_defers() -> None:
    port = free_port("127.0.0.2")
    z = zone_for("example.org", (10, "mx1.example.org", ("127.0.0.2",)),
                 (20, "mx2.example.org", ("127.0.0.3",)))
    c = courier(z, port)
    [o] = await c.deliver(delivery("b@example.org"))
    assert (o.status, o.category, o.reply.code, o.reply.enhanced) == (
        "deferred", "connect", 451, "4.4.1")
    assert o.reply.text == "connection refused by mx2.example.org [127.0.0.3]"
    assert (o.remote_host, o.remote_ip) == ("mx2.example.org", "127.0.0.3")


@needs_sink
async def test_421_greeting_then_next_mx(sinks: Callable[..., Sink],
                                        scripted: Callable[..., Any]) -> None:
    sink = sinks("127.0.0.3")
    busy = await scripted("127.0.0.2", sink.port, greeting="421 4.3.2 too busy")
    z = zone_for("example.org", (10, "mx1.example.org", ("127.0.0.2",)),
                 (20, "mx2.example.org", ("127.0.0.3",)))
    c = courier(z, sink.port)
    [o] = await c.deliver(delivery("b@example.org"))
    await c.close()
    assert (o.status, o.remote_host, o.remote_ip) == ("delivered", "mx2.example.org",
                                                      "127.0.0.3")
    assert busy.connections == 1


async def test_421_greeting_everywhere_defers(scripted: Callable[..., Any]) -> None:
    busy = await scripted("127.0.0.2", greeting="554 5.7.1 go away")
    z = zone_for("example.org", (10, "mx1.example.org", ("127.0.0.2",)))
    [o] = await courier(z, busy.port).deliver(delivery("b@example.org"))
    # A refusing greeting is skipped like an unreachable server (Postfix's
    # smtp_skip_5xx_greeting); with nothing left, the mail waits.
    assert (o.status, o.category, o.reply.code) == ("deferred", "connect", 451)
    assert "554 5.7.1 go away" in o.reply.text


@needs_sink
async def test_greeting_timeout_then_next_mx(sinks: Callable[..., Sink],
                                             scripted: Callable[..., Any]) -> None:
    sink = sinks("127.0.0.3")
    mute = await scripted("127.0.0.2", sink.port, silent=True)
    z = zone_for("example.org", (10, "mx1.example.org", ("127.0.0.2",)),
                 (20, "mx2.example.org", ("127.0.0.3",)))
    c = courier(z, sink.port, timeouts=Timeouts(greeting=0.3))
    [o] = await c.deliver(delivery("b@example.org"))
    await c.close()
    assert (o.status, o.remote_ip) == ("delivered", "127.0.0.3")
    assert mute.connections == 1
    # Alone, the silent server gives a timeout naming the greeting.
    z = zone_for("example.org", (10, "mx1.example.org", ("127.0.0.2",)))
    [o] = await courier(z, sink.port, timeouts=Timeouts(greeting=0.3)).deliver(
        delivery("b@example.org"))
    assert (o.status, o.category) == ("deferred", "timeout")
    assert "GREETING reply from mx1.example.org [127.0.0.2]" in o.reply.text


@needs_sink
async def test_smtputf8_missing_bounces_without_sending(sinks: Callable[..., Sink]) -> None:
    sink = sinks("127.0.0.2")
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, sink.port)
    out = await c.deliver(delivery("jö@example.org", "b@example.org",
                                   params={"SMTPUTF8": None}))
    # The connection was not spoiled: an ASCII message goes through it next.
    again = await c.deliver(delivery("b@example.org"))
    await c.close()
    assert [(o.status, o.reply.code, o.reply.enhanced, o.category) for o in out] == [
        ("bounced", 553, "5.6.7", "utf8")] * 2
    assert again[0].status == "delivered"
    [msg] = sink.messages()
    assert "jö" not in msg
    assert sink.connections() == 1


@needs_sink
async def test_connection_reuse(sinks: Callable[..., Sink]) -> None:
    sink = sinks("127.0.0.2")
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, sink.port, max_per_connection=10, idle_timeout=30, rset_after=0.3)
    first = await c.deliver(delivery("b@example.org"))
    second = await c.deliver(delivery("c@example.org"))  # at once: straight to MAIL
    assert [first[0].status, second[0].status] == ["delivered", "delivered"]
    assert "RSET" not in sink.log.read_text()
    await asyncio.sleep(0.5)  # idle longer than rset_after: checked with RSET first
    third = await c.deliver(delivery("d@example.org"))
    assert third[0].status == "delivered"
    assert c.connections_opened == 1
    await c.close()
    assert len(sink.messages(expect=3)) == 3
    assert sink.connections() == 1
    assert sink.log.read_text().count("RSET") == 1


async def test_reuse_after_a_refused_transaction_resets_first(
        scripted: Callable[..., Any]) -> None:
    # No recipient accepted: the server may still hold our MAIL, so RSET before the next.
    srv = await scripted("127.0.0.2", rcpt=verdicts)
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, srv.port)
    [bad] = await c.deliver(delivery("bad@example.org"))
    [ok] = await c.deliver(delivery("ok@example.org"))
    [ok2] = await c.deliver(delivery("ok2@example.org"))
    await c.close()
    assert (bad.status, ok.status, ok2.status) == ("bounced", "delivered", "delivered")
    verbs = [line.split()[0] for line in srv.commands]
    assert verbs == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA",
                     "MAIL", "RCPT", "DATA", "QUIT"]
    assert srv.connections == 1


@pytest.mark.parametrize("fault", [
    # The server hangs up, without a reply, at the second MAIL of each connection: the
    # pooled connection looked alive and nothing was delivered over it.
    {"vanish_at_mail": 2},
    # A server going away may answer the next command with 421 (RFC 5321 §3.8); an RSET
    # sent first would have met that 421 (found in review).
    {"close_at_mail": 2},
], ids=["hang-up", "421"])
async def test_stale_connection_reused_without_rset_retries_on_a_new_one(
        scripted: Callable[..., Any], fault: dict[str, int]) -> None:
    # Either way the message goes over a new connection at once, not deferred for a retry.
    srv = await scripted("127.0.0.2", **fault)
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, srv.port)
    first = await c.deliver(delivery("b@example.org"))
    second = await c.deliver(delivery("c@example.org"))
    await c.close()
    assert [(o.status, o.reply.code) for o in first + second] == [
        ("delivered", 250), ("delivered", 250)]
    assert [m.rcpts for m in srv.messages] == [["TO:<b@example.org>"], ["TO:<c@example.org>"]]
    assert srv.connections == 2 and c.connections_opened == 2


@needs_sink
async def test_max_per_connection(sinks: Callable[..., Sink]) -> None:
    sink = sinks("127.0.0.2")
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, sink.port, max_per_connection=2)
    for r in ("b", "c", "d"):
        [o] = await c.deliver(delivery(f"{r}@example.org"))
        assert o.status == "delivered"
    await c.close()
    assert len(sink.messages(expect=3)) == 3
    assert c.connections_opened == 2 and sink.connections() == 2


@needs_sink
async def test_idle_connection_closed_after_idle_timeout(sinks: Callable[..., Sink]) -> None:
    sink = sinks("127.0.0.2")
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, sink.port, idle_timeout=0.2)
    await c.deliver(delivery("b@example.org"))
    await asyncio.sleep(0.6)
    assert sink.log.read_text().count("QUIT") == 1
    await c.deliver(delivery("c@example.org"))
    await c.close()
    assert c.connections_opened == 2


@needs_sink
async def test_reused_connection_closed_by_server_reconnects(sinks: Callable[..., Sink],
                                                             ) -> None:
    sink = sinks("127.0.0.2", "-q", "RSET")  # the sink hangs up at RSET
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, sink.port, rset_after=0)  # always RSET before reuse
    assert (await c.deliver(delivery("b@example.org")))[0].status == "delivered"
    assert (await c.deliver(delivery("c@example.org")))[0].status == "delivered"
    await c.close()
    assert c.connections_opened == 2


# --- the scripted server: per-recipient verdicts, SIZE, CHUNKING, TLS, AUTH ---------------------

def verdicts(addr: str) -> str:
    if addr.startswith("temp"):
        return "450 4.2.1 mailbox busy"
    if addr.startswith("bad"):
        return "550 5.1.1 no such user"
    return "250 2.1.5 ok"


async def test_per_recipient_4xx_and_5xx(scripted: Callable[..., Any]) -> None:
    srv = await scripted("127.0.0.2", rcpt=verdicts)
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, srv.port)
    out = await c.deliver(delivery("ok@example.org", "temp@example.org", "bad@example.org",
                                   "ok2@example.org"))
    await c.close()
    assert statuses(out) == [("ok@example.org", "delivered", 250),
                             ("temp@example.org", "deferred", 450),
                             ("bad@example.org", "bounced", 550),
                             ("ok2@example.org", "delivered", 250)]
    assert [o.category for o in out] == ["ok", "policy", "policy", "ok"]
    assert out[2].reply.enhanced == "5.1.1" and out[2].reply.text == "no such user"
    [msg] = srv.messages
    assert len(msg.rcpts) == 2
    # PIPELINING: MAIL, the four RCPTs and DATA came in one read.
    assert 6 in srv.reads


async def test_no_pipelining_one_command_per_read(scripted: Callable[..., Any]) -> None:
    srv = await scripted("127.0.0.2", keywords=("8BITMIME",), rcpt=verdicts)
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, srv.port)
    out = await c.deliver(delivery("ok@example.org", "bad@example.org"))
    await c.close()
    assert [o.status for o in out] == ["delivered", "bounced"]
    assert srv.reads and max(srv.reads) == 1


async def test_all_recipients_refused_no_content_sent(scripted: Callable[..., Any]) -> None:
    srv = await scripted("127.0.0.2", rcpt=verdicts)
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, srv.port)
    out = await c.deliver(delivery("bad@example.org", "temp@example.org"))
    again = await c.deliver(delivery("ok@example.org"))
    await c.close()
    assert [o.status for o in out] == ["bounced", "deferred"]
    assert again[0].status == "delivered"
    assert len(srv.messages) == 1 and srv.connections == 1


async def test_dot_stuffing_on_the_wire(scripted: Callable[..., Any]) -> None:
    srv = await scripted("127.0.0.2")
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, srv.port)
    await c.deliver(delivery("ok@example.org"))
    await c.close()
    raw = srv.messages[0].content
    assert raw == BODY_CLEAN.replace(b"\r\n.", b"\r\n..")
    assert raw.count(b"\r") == raw.count(b"\n") == raw.count(b"\r\n")


async def test_size_limit_bounces_before_sending(scripted: Callable[..., Any]) -> None:
    srv = await scripted("127.0.0.2", keywords=("PIPELINING", "SIZE 100"))
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, srv.port)
    [big] = await c.deliver(delivery("ok@example.org", body=b"x" * 200 + b"\r\n"))
    [small] = await c.deliver(delivery("ok@example.org", body=b"x" * 50 + b"\r\n"))
    await c.close()
    assert (big.status, big.reply.code, big.reply.enhanced, big.category) == (
        "bounced", 552, "5.3.4", "size")
    assert small.status == "delivered"
    assert [cmd for cmd in srv.commands if cmd.startswith("MAIL")] == [
        "MAIL FROM:<a@albatross.test> SIZE=52"]


async def test_chunking_sends_bdat(scripted: Callable[..., Any]) -> None:
    srv = await scripted("127.0.0.2", keywords=("PIPELINING", "CHUNKING", "8BITMIME"))
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, srv.port)
    body = BODY + "\r\nnon-ascii é\r\n".encode()
    [o] = await c.deliver(delivery("ok@example.org", body=body))
    await c.close()
    assert o.status == "delivered"
    [msg] = srv.messages
    assert msg.chunked and msg.content == BODY_CLEAN + "non-ascii é\r\n".encode()
    assert "BODY=8BITMIME" in msg.mail


async def test_tls_opportunistic(scripted: Callable[..., Any], ca: trustme.CA) -> None:
    srv = await scripted("127.0.0.2", tls=server_tls(ca))
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, srv.port)
    out = await c.deliver(delivery("ok@example.org", "ok2@example.org"))
    await c.close()
    assert all(o.status == "delivered" for o in out)
    assert out[0].tls is not None and out[0].tls.startswith("TLSv1.")
    [msg] = srv.messages
    assert msg.tls
    # EHLO again after the handshake (RFC 3207 §4.2).
    assert [cmd.split()[0] for cmd in srv.commands[:3]] == ["EHLO", "STARTTLS", "EHLO"]


@pytest.mark.parametrize("fault", ["tls_breaks", "tls_closes", "tls_stalls"])
async def test_tls_opportunistic_failed_handshake_falls_back(scripted: Callable[..., Any],
                                                             ca: trustme.CA, fault: str,
                                                             ) -> None:
    srv = await scripted("127.0.0.2", tls=server_tls(ca), **{fault: True})
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, srv.port, timeouts=Timeouts(starttls=0.5))
    [o] = await c.deliver(delivery("ok@example.org"))
    await c.close()
    assert (o.status, o.tls) == ("delivered", None)
    assert srv.connections == 2  # plaintext on a NEW connection
    assert not srv.messages[0].tls
    assert srv.commands.count("STARTTLS") == 1


async def test_tls_required(scripted: Callable[..., Any], ca: trustme.CA) -> None:
    plain = await scripted("127.0.0.2")
    broken = await scripted("127.0.0.3", plain.port, tls=server_tls(ca), tls_breaks=True)
    z = zone_for("example.org", (10, "mx1.example.org", ("127.0.0.2",)),
                 (20, "mx2.example.org", ("127.0.0.3",)))
    c = courier(z, plain.port, tls_policy=TlsPolicy("required"))
    [o] = await c.deliver(delivery("ok@example.org"))
    await c.close()
    assert (o.status, o.category, o.reply.enhanced) == ("deferred", "tls", "4.7.5")
    assert "TLS handshake with mx2.example.org [127.0.0.3] failed" in o.reply.text
    assert plain.messages == [] and broken.messages == []
    assert broken.connections == 1  # no plaintext fallback when TLS is required
    good = await scripted("127.0.0.4", tls=server_tls(ca))
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.4",)))
    c = courier(z, good.port, tls_policy=TlsPolicy("required"))
    [o] = await c.deliver(delivery("ok@example.org"))
    await c.close()
    assert o.status == "delivered" and o.tls is not None


async def test_tls_required_not_offered(scripted: Callable[..., Any]) -> None:
    plain = await scripted("127.0.0.2")
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    policies = TlsPolicies(TlsPolicy(), {"example.org": TlsPolicy("required")})
    c = courier(z, plain.port, tls_policy=policies)
    [o] = await c.deliver(delivery("ok@example.org"))
    await c.close()
    assert (o.status, o.category, o.reply.enhanced) == ("deferred", "tls", "4.7.4")
    assert plain.messages == []


async def test_tls_verify(scripted: Callable[..., Any], ca: trustme.CA,
                          tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    srv = await scripted("127.0.0.2", tls=server_tls(ca, "mx.example.org"))
    policy = TlsPolicy("verify", ca_file=str(ca_file))
    good = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(good, srv.port, tls_policy=policy)
    [o] = await c.deliver(delivery("ok@example.org"))
    await c.close()
    assert o.status == "delivered" and o.tls is not None
    # Same server, but the MX name is not the certificate's: refused, never in plaintext.
    bad = zone_for("example.org", (10, "other.example.org", ("127.0.0.2",)))
    c = courier(bad, srv.port, tls_policy=policy)
    [o] = await c.deliver(delivery("ok@example.org"))
    await c.close()
    assert (o.status, o.category) == ("deferred", "tls")
    assert "certificate" in o.reply.text.lower() or "hostname" in o.reply.text.lower()
    # An untrusted CA fails the same way.
    c = courier(good, srv.port, tls_policy=TlsPolicy("verify", ca_file=None))
    [o] = await c.deliver(delivery("ok@example.org"))
    await c.close()
    assert (o.status, o.category) == ("deferred", "tls")
    assert len(srv.messages) == 1


async def test_tls_none_never_starts_tls(scripted: Callable[..., Any], ca: trustme.CA) -> None:
    srv = await scripted("127.0.0.2", tls=server_tls(ca))
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, srv.port, tls_policy=TlsPolicy("none"))
    [o] = await c.deliver(delivery("ok@example.org"))
    await c.close()
    assert (o.status, o.tls) == ("delivered", None)
    assert "STARTTLS" not in srv.commands


async def test_relay_with_auth(scripted: Callable[..., Any], ca: trustme.CA) -> None:
    srv = await scripted("127.0.0.2", tls=server_tls(ca), auth=("user", "s3cret"))
    zone = Zone()  # the relay is an address: no DNS at all
    relay = Relay("127.0.0.2", srv.port, username="user", password="s3cret")
    c = courier(zone, 1, relay=relay)
    [o] = await c.deliver(delivery("ok@far.example"))
    wrong = courier(zone, 1, relay=Relay("127.0.0.2", srv.port, username="user",
                                         password="nope"))
    [w] = await wrong.deliver(delivery("ok@far.example"))
    await c.close()
    await wrong.close()
    assert o.status == "delivered" and o.tls is not None and zone.asked == []
    assert (w.status, w.category) == ("deferred", "policy")
    assert "535 5.7.8" in w.reply.text
    assert len(srv.messages) == 1


async def test_relay_refuses_plaintext_credentials(scripted: Callable[..., Any]) -> None:
    srv = await scripted("127.0.0.2", auth=("user", "pw"))
    relay = Relay("127.0.0.2", srv.port, username="user", password="pw")
    [o] = await courier(Zone(), 1, relay=relay).deliver(delivery("ok@far.example"))
    assert (o.status, o.category) == ("deferred", "tls")
    assert not any(cmd.startswith("AUTH") for cmd in srv.commands)
    relay = Relay("127.0.0.2", srv.port, username="user", password="pw",
                  allow_plaintext_auth=True)
    c = courier(Zone(), 1, relay=relay)
    [o] = await c.deliver(delivery("ok@far.example"))
    await c.close()
    assert o.status == "delivered"


async def test_relay_by_name(scripted: Callable[..., Any]) -> None:
    srv = await scripted("127.0.0.2")
    z = Zone()
    z.host("relay.example.net", "127.0.0.2")
    c = courier(z, 1, relay=Relay("relay.example.net", srv.port))
    [o] = await c.deliver(delivery("ok@far.example"))
    await c.close()
    assert (o.status, o.remote_host) == ("delivered", "relay.example.net")
    [o] = await courier(Zone(), 1, relay=Relay("nowhere.example.net", srv.port)).deliver(
        delivery("ok@far.example"))
    assert (o.status, o.category) == ("deferred", "dns")


# --- routing failures through the courier ----------------------------------------------------

async def test_dns_failures() -> None:
    z = Zone()
    z.mx_records("null.example", (0, ""))
    z.mx_status("later.example", Status.TEMPFAIL)
    c = courier(z, 1)
    [nx] = await c.deliver(delivery("a@gone.example", domain="gone.example"))
    [null] = await c.deliver(delivery("a@null.example", domain="null.example"))
    [later] = await c.deliver(delivery("a@later.example", domain="later.example"))
    assert (nx.status, nx.reply.enhanced, nx.category) == ("bounced", "5.1.2", "dns")
    assert (null.status, null.reply.enhanced, null.category) == ("bounced", "5.1.10", "dns")
    assert (later.status, later.reply.enhanced, later.category) == ("deferred", "4.4.3", "dns")


async def test_mx_pointing_back_at_us_is_a_loop() -> None:
    z = zone_for("example.org", (10, "mx.example.org", ("127.0.0.2",)))
    c = courier(z, 1, route_policy=RoutePolicy(local_addresses=frozenset({"127.0.0.2"})))
    [o] = await c.deliver(delivery("b@example.org"))
    assert (o.status, o.reply.code, o.reply.enhanced, o.category) == (
        "bounced", 554, "5.4.6", "loop")
