"""The session's end-of-data hook (what message authentication and DKIM signing plug into):
headers put on top of small and large messages, refusals, storing on hold. An in-process
server with a real spool, driven by smtplib from a thread."""

from __future__ import annotations

import asyncio
import functools
import smtplib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from albatross.model import Reply
from albatross.observe import MailLog
from albatross.server import Arrival, Finish, ServerContext, Session, SessionPolicy
from albatross.smtp.server import Limits
from albatross.spool import Spool


@dataclass
class Hook:
    answer: Callable[[Arrival, bytes], Finish]
    seen: list[tuple[Arrival, bytes]] = field(default_factory=list)

    async def __call__(self, arrival: Arrival, message: bytes) -> Finish:
        await asyncio.sleep(0)  # a real hook awaits DNS and threads
        self.seen.append((arrival, message))
        return self.answer(arrival, message)


@dataclass
class Server:
    spool: Spool
    port: int
    hook: Hook

    async def send(self, body: bytes, rcpt: str = "bob@localhost") -> tuple[int, bytes]:
        def go() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as s:
                s.ehlo("client.example")
                s.mail("alice@example.org")
                s.rcpt(rcpt)
                return s.data(body)
        return await asyncio.to_thread(go)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Callable[[Hook], Awaitable[Server]]]:
    spool = Spool(tmp_path / "data", inline_max=64 * 1024)
    await spool.open()
    log = MailLog(tmp_path / "mail.log")
    servers: list[asyncio.Server] = []

    async def start(hook: Hook) -> Server:
        ctx = ServerContext(
            limits=Limits(hostname="mx.test", tls_available=False), spool=spool, log=log,
            policy=SessionPolicy(local_domains=frozenset({"localhost"}),
                                 trusts=lambda ip: ip == "127.0.0.1",
                                 mailbox=lambda address: address),
            banner="ESMTP", finish=hook)
        srv = await asyncio.get_running_loop().create_server(
            functools.partial(Session, ctx, "mx"), "127.0.0.1", 0)
        servers.append(srv)
        return Server(spool, srv.sockets[0].getsockname()[1], hook)

    yield start
    for srv in servers:
        srv.close()
    await spool.close()
    log.close()


def add(header: bytes) -> Callable[[Arrival, bytes], Finish]:
    return lambda arrival, message: Finish(prepend=header, log={"checked": True})


@pytest.mark.parametrize("size", [100, 400_000])  # in memory, and streamed to the writer
async def test_headers_go_on_top_of_small_and_large_messages(
        server: Callable[[Hook], Awaitable[Server]], size: int) -> None:
    s = await server(Hook(add(b"Authentication-Results: mx.test; none\r\n")))
    body = b"Subject: x\r\n\r\n" + (b"z" * 78 + b"\r\n") * max(1, size // 80)
    code, text = await s.send(body)
    assert code == 250
    qid = text.split()[-1].decode()
    _env, stored = s.spool.load(qid)
    assert stored.startswith(b"Authentication-Results: mx.test; none\r\nReceived: from ")
    assert stored.endswith(body)
    [(arrival, seen)] = s.hook.seen
    assert seen == stored[len(b"Authentication-Results: mx.test; none\r\n"):]
    assert (arrival.qid, arrival.role, arrival.sender, arrival.recipients, arrival.trusted,
            arrival.helo) == (qid, "mx", "alice@example.org", ["bob@localhost"], True,
                              "client.example")


async def test_a_refusal_stores_nothing(server: Callable[[Hook], Awaitable[Server]]) -> None:
    refuse = Reply(550, "5.7.1", "Email rejected per DMARC policy for example.org")
    s = await server(Hook(lambda arrival, message: Finish(reply=refuse)))
    code, text = await s.send(b"Subject: x\r\n\r\ny\r\n")
    assert (code, text) == (550, b"5.7.1 Email rejected per DMARC policy for example.org")
    assert s.spool.entries() == []


async def test_hold_stores_the_message_on_hold(
        server: Callable[[Hook], Awaitable[Server]]) -> None:
    s = await server(Hook(lambda arrival, message: Finish(hold=True)))
    code, _text = await s.send(b"Subject: x\r\n\r\ny\r\n")
    assert code == 250
    [entry] = s.spool.entries()
    assert entry.schedule.state == "held"


@pytest.mark.parametrize("size", [100, 400_000])
async def test_the_hook_may_replace_the_header_block(
        server: Callable[[Hook], Awaitable[Server]], size: int) -> None:
    def strip(arrival: Arrival, message: bytes) -> Finish:
        end = message.index(b"\r\n\r\n") + 2
        head = b"".join(line + b"\r\n" for line in message[:end].split(b"\r\n")[:-1]
                        if not line.startswith(b"X-Forged:"))
        return Finish(prepend=b"X-Ours: yes\r\n" + head, drop=end)

    s = await server(Hook(strip))
    body = b"X-Forged: 1\r\nSubject: x\r\n\r\n" + (b"z" * 78 + b"\r\n") * max(1, size // 80)
    code, text = await s.send(body)
    assert code == 250
    _env, stored = s.spool.load(text.split()[-1].decode())
    assert stored.startswith(b"X-Ours: yes\r\nReceived: from ")
    assert b"X-Forged" not in stored
    assert stored.endswith(body[len(b"X-Forged: 1\r\n"):])
