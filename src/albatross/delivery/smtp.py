"""The SMTP courier: delivers a message to its recipients' MX hosts (or a relay) over ESMTP.

It drives the sans-IO `smtp.client.ClientConnection` over asyncio transports, and owns
what needs I/O and time: connecting to each candidate in turn, STARTTLS by policy, the
per-stage timeouts of RFC 5321 §4.5.3.2, and a pool of idle connections so that one
connection carries many messages to the same server (RSET between them).

Which failures move on to the next address or MX (RFC 5321 §5.1, "try the next"): a
connection that cannot be made, a greeting other than 220, EHLO/HELO refused, a TLS
requirement not met, a lost connection before the transaction. Once MAIL is sent, the
replies of that server decide: 2xx delivered, 4xx deferred, 5xx bounced, per recipient. A
failure without a reply (timeout, lost connection, garbage) gets a synthesized 4xx reply
and a `category` (see docs/delivery.md); the message is retried later.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from albatross.delivery import Delivery
from albatross.delivery.mx import Candidate, RouteError, RoutePolicy, RouteResolver, find_route
from albatross.delivery.mx import literal_address as _literal
from albatross.delivery.tls import TlsPolicies, TlsPolicy, client_context, describe
from albatross.dns import Status
from albatross.model import Outcome, Recipient, Reply
from albatross.smtp.client import (
    AuthDone,
    ClientConnection,
    ClientProtocolError,
    Event,
    Greeting,
    Hello,
    QuitDone,
    ResetDone,
    ServerClosing,
    Stage,
    StartTLSReply,
    Transaction,
    TransactionDone,
    normalize_body,
)

BLOCK = 64 * 1024  # one write of message content; each gets the "data block" timeout


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds to wait, per stage. Defaults are RFC 5321 §4.5.3.2's minimums where it
    gives one (greeting, MAIL, RCPT 5 min; DATA 2 min; data block 3 min; final dot 10 min)."""

    connect: float = 30.0
    greeting: float = 300.0
    ehlo: float = 300.0
    starttls: float = 120.0  # the STARTTLS reply, and again the handshake
    auth: float = 120.0
    mail: float = 300.0
    rcpt: float = 300.0
    data: float = 120.0
    block: float = 180.0
    dot: float = 600.0
    rset: float = 60.0
    quit: float = 60.0

    def for_stage(self, stage: Stage) -> float:
        value: float = getattr(self, _STAGE_TIMEOUT[stage])
        return value


_STAGE_TIMEOUT = {
    Stage.GREETING: "greeting", Stage.EHLO: "ehlo", Stage.HELO: "ehlo",
    Stage.STARTTLS: "starttls", Stage.AUTH: "auth", Stage.MAIL: "mail", Stage.RCPT: "rcpt",
    Stage.DATA: "data", Stage.DOT: "dot", Stage.BDAT: "dot", Stage.RSET: "rset",
    Stage.NOOP: "rset", Stage.QUIT: "quit",
}


@dataclass(frozen=True, slots=True)
class Relay:
    """A smart host: all mail goes to `host`:`port` instead of the MX hosts. `tls` overrides
    the courier's policy; `username`/`password` enable AUTH (`mechanism` PLAIN or LOGIN),
    sent only over TLS unless `allow_plaintext_auth`."""

    host: str
    port: int = 25
    tls: TlsPolicy | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    mechanism: str = "PLAIN"
    allow_plaintext_auth: bool = False


class _Stale(Exception):
    """A pooled connection reused without RSET turned out to be gone before the server
    answered anything: nothing was delivered, try again on a new connection."""


class _Failure(Exception):
    """This candidate did not work: `reply` (real or synthesized) and a category."""

    def __init__(self, reply: Reply, category: str, *, fallback_plain: bool = False) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.category = category
        self.fallback_plain = fallback_plain  # opportunistic TLS failed: retry in the clear


class _Wire(asyncio.Protocol):
    """Bytes in and out of one connection, with flow control and an end-of-file flag."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.eof = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: uvloop's transports are not asyncio.Transport subclasses.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self, timeout: float) -> bytes:
        """What has arrived (waiting up to `timeout`); b"" at end of file."""
        if not self.buf and not self.eof:
            # A timer on the waiter rather than asyncio.wait_for, which costs two more
            # futures and callbacks on every read (py-spy: 3% of the relay's CPU).
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(max(timeout, 0.0), _time_out, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        out = bytes(self.buf)
        self.buf.clear()
        return out

    async def write(self, data: bytes, timeout: float) -> None:
        for i in range(0, len(data), BLOCK):
            tr = self.transport
            if tr is None or tr.is_closing() or self.eof:
                raise ConnectionResetError("connection closed by the server")
            tr.write(data[i : i + BLOCK])
            if self._drain is not None and not self._drain.done():
                await asyncio.wait_for(asyncio.shield(self._drain), timeout)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


@dataclass(eq=False)
class _Session:
    """One open, greeted connection and its protocol state."""

    wire: _Wire
    conn: ClientConnection
    candidate: Candidate
    key: tuple[str, int, str, str]
    tls: str | None = None
    messages: int = 0
    idle: asyncio.TimerHandle | None = None
    clean: bool = False  # the last transaction ended with the message accepted
    released: float = 0.0  # monotonic time it went back to the pool
    unverified: bool = False  # taken from the pool without an RSET round trip

    def where(self) -> str:
        return f"{self.candidate.host} [{self.candidate.ip}]"


def _show(reply: Reply) -> str:
    """A remote reply inside one of our texts, on one line."""
    return " ".join(p for p in (str(reply.code), reply.enhanced, reply.text.replace("\n", " "))
                    if p)


def _status(reply: Reply) -> str:
    if reply.is_positive:
        return "delivered"
    return "bounced" if reply.is_permanent else "deferred"


def _needs_utf8(sender: str, recipients: Sequence[Recipient]) -> bool:
    return not (sender.isascii() and all(r.address.isascii() for r in recipients))


class SmtpCourier:
    """Delivers by SMTP to the MX hosts of the destination (or to `relay`).

    `max_per_connection` messages go over one connection at most; an idle connection is
    kept `idle_timeout` seconds for the next message to the same (ip, port, TLS policy).
    A connection that went back to the pool less than `rset_after` seconds ago, after a
    message the server accepted (which ends the transaction, RFC 5321 §4.1.1.4), carries
    the next MAIL at once; one idle longer, or whose last transaction ended otherwise, is
    checked with RSET first. Should a connection reused without that check turn out to be
    gone before the server answered anything, the message goes over a new connection.
    Call `close()` at shutdown to QUIT the idle ones.
    """

    def __init__(self, resolver: RouteResolver, *, helo_name: str, port: int = 25,
                 tls_policy: TlsPolicy | TlsPolicies | None = None,
                 timeouts: Timeouts | None = None, max_per_connection: int = 100,
                 idle_timeout: float = 30.0, rset_after: float = 2.0,
                 relay: Relay | None = None,
                 source_address: str | None = None,
                 route_policy: RoutePolicy | None = None) -> None:
        self.resolver = resolver
        self.helo_name = helo_name
        self.port = port
        if isinstance(tls_policy, TlsPolicies):
            self.tls_policies = tls_policy
        else:
            self.tls_policies = TlsPolicies(default=tls_policy or TlsPolicy())
        self.timeouts = timeouts or Timeouts()
        self.max_per_connection = max(1, max_per_connection)
        self.idle_timeout = idle_timeout
        self.rset_after = rset_after
        self.relay = relay
        self.source_address = source_address
        self.route_policy = route_policy or RoutePolicy()
        self.connections_opened = 0  # for tests and metrics
        self._idle: dict[tuple[str, int, str, str], list[_Session]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._contexts: dict[TlsPolicy, ssl.SSLContext] = {}
        self._relay_fixed: tuple[Candidate, ...] | None = None  # a relay given as an address

    # --- the Courier contract --------------------------------------------------------------

    async def deliver(self, delivery: Delivery) -> list[Outcome]:
        rcpts = delivery.recipients
        if not rcpts:
            return []
        env = delivery.envelope
        domain = delivery.destination or rcpts[0].address.rpartition("@")[2]
        need_utf8 = _needs_utf8(env.sender, rcpts)
        body = normalize_body(delivery.body)
        if self.relay is not None:
            policy = self.relay.tls or self.tls_policies.default
            port = self.relay.port
        else:
            policy = self.tls_policies.for_domain(domain)
            port = self.port
        try:
            candidates = await self._candidates(domain)
        except RouteError as err:
            return [Outcome(r.address, _status(err.reply), err.reply, err.category)
                    for r in rcpts]
        failure: _Failure | None = None
        failed_on: Candidate | None = None
        for cand in candidates:
            try:
                session = await self._session(cand, port, policy)
            except _Failure as err:
                failure, failed_on = err, cand
                continue
            try:
                return await self._transact(session, delivery, body, need_utf8)
            except _Stale:
                pass
            try:
                session = await self._session(cand, port, policy, pooled=False)
            except _Failure as err:
                failure, failed_on = err, cand
                continue
            return await self._transact(session, delivery, body, need_utf8)
        assert failure is not None and failed_on is not None
        return [Outcome(r.address, _status(failure.reply), failure.reply, failure.category,
                        failed_on.host, failed_on.ip) for r in rcpts]

    async def close(self) -> None:
        """QUIT every idle connection (shutdown)."""
        sessions = [s for group in self._idle.values() for s in group]
        self._idle.clear()
        for s in sessions:
            if s.idle is not None:
                s.idle.cancel()
        await asyncio.gather(*(self._quit(s) for s in sessions), *self._closing,
                             return_exceptions=True)

    # --- routing ---------------------------------------------------------------------------

    async def _candidates(self, domain: str) -> tuple[Candidate, ...]:
        relay = self.relay
        if relay is None:
            return await find_route(domain, self.resolver, self.route_policy)
        if self._relay_fixed is not None:
            return self._relay_fixed
        host = relay.host
        ip = _literal(host) if host.startswith("[") else _ip_or_none(host)
        if ip is not None:
            self._relay_fixed = (Candidate(host.strip("[]"), ip),)  # parsed once, not per message
            return self._relay_fixed
        ans = await self.resolver.addresses(host)
        name = ans.status.name
        if ans.status is Status.OK and ans.records:
            return tuple(Candidate(host, str(a)) for a in
                         ans.records[: self.route_policy.max_addresses])
        # A relay that does not resolve is our configuration's problem: keep the mail.
        raise RouteError(Reply(451, "4.4.3", f"cannot resolve the relay host {host} ({name})"),
                         "dns")

    # --- connections -----------------------------------------------------------------------

    async def _session(self, cand: Candidate, port: int, policy: TlsPolicy, *,
                       pooled: bool = True) -> _Session:
        key = (cand.ip, port, policy.mode, cand.host if policy.verify else "")
        idle = self._idle.get(key) if pooled else None
        while idle:
            s = idle.pop()
            if s.idle is not None:
                s.idle.cancel()
            if s.wire.eof or s.conn.closed:
                s.wire.close()
                continue
            if s.clean and time.monotonic() - s.released < self.rset_after:
                # Just used, and its transaction is over: an RSET round trip would only
                # tell us what we know. (A server gone meanwhile is handled by _Stale.)
                s.unverified = True
                return s
            try:
                s.conn.send_rset()
                ev = await self._event(s)
            except _Failure:
                s.wire.close()
                continue
            if isinstance(ev, ResetDone) and ev.reply.is_positive:
                return s
            s.wire.close()
        try:
            return await self._open(cand, port, policy, key, use_tls=policy.wants_tls)
        except _Failure as err:
            if not err.fallback_plain:
                raise
        # RFC 7435 §3: opportunistic TLS that fails falls back to the clear, on a new
        # connection (the old one is in an unknown state after a failed handshake).
        return await self._open(cand, port, policy, key, use_tls=False)

    async def _open(self, cand: Candidate, port: int, policy: TlsPolicy,
                    key: tuple[str, int, str, str], *, use_tls: bool) -> _Session:
        loop = asyncio.get_running_loop()
        where = f"{cand.host} [{cand.ip}]"
        local = (self.source_address, 0) if self.source_address else None
        try:
            _, wire = await asyncio.wait_for(
                loop.create_connection(_Wire, cand.ip, port, local_addr=local),
                self.timeouts.connect)
        except TimeoutError:
            raise _Failure(Reply(451, "4.4.1", f"connection to {where} timed out"),
                           "connect") from None
        except OSError as err:
            reason = err.strerror or type(err).__name__
            if isinstance(err, ConnectionRefusedError):
                reason = "connection refused"
            raise _Failure(Reply(451, "4.4.1", f"{reason} by {where}"), "connect") from None
        self.connections_opened += 1
        s = _Session(wire, ClientConnection(self.helo_name), cand, key)
        try:
            await self._start(s, policy, use_tls)
        except BaseException:
            await self._quit(s)
            raise
        return s

    async def _start(self, s: _Session, policy: TlsPolicy, use_tls: bool) -> None:
        """Greeting, EHLO, STARTTLS and EHLO again, AUTH: up to a session ready for MAIL."""
        where = s.where()
        ev = await self._event(s)
        assert isinstance(ev, Greeting)
        if ev.reply.code != 220:
            # Postfix's smtp_skip_5xx_greeting: a refusing server is skipped like an
            # unreachable one, and when none is left the mail waits for another try.
            raise _Failure(Reply(451, "4.4.1" if ev.reply.code != 421 else "4.3.2",
                                 f"{where} refused the session: {_show(ev.reply)}"), "connect")
        await self._hello(s)
        ext = s.conn.extensions
        if use_tls and not ext.starttls:
            if policy.must_tls:
                raise _Failure(Reply(451, "4.7.4",
                                     f"TLS is required but {where} does not offer STARTTLS"),
                               "tls")
        elif use_tls:
            s.conn.send_starttls()
            ev = await self._event(s)
            assert isinstance(ev, StartTLSReply)
            if ev.reply.code == 220:
                await self._handshake(s, policy)
                s.conn.tls_established()
                await self._hello(s)
            elif policy.must_tls:
                raise _Failure(Reply(451, "4.7.4", f"TLS is required but {where} refused "
                                     f"STARTTLS: {_show(ev.reply)}"), "tls")
        relay = self.relay
        if relay is not None and relay.username is not None:
            await self._auth(s, relay)

    async def _hello(self, s: _Session) -> None:
        s.conn.send_ehlo()
        ev = await self._event(s)
        assert isinstance(ev, Hello)
        if not ev.reply.is_positive:
            raise _Failure(ev.reply, "policy")

    async def _handshake(self, s: _Session, policy: TlsPolicy) -> None:
        where = s.where()
        ctx = self._contexts.get(policy)
        if ctx is None:
            ctx = self._contexts[policy] = client_context(policy)
        name = s.candidate.host if _ip_or_none(s.candidate.host) is None else None
        tr = s.wire.transport
        assert tr is not None
        # Anything that arrived in the clear after the 220 is an injection attempt
        # (CVE-2011-0411 and family): drop it, never read it as TLS-protected.
        s.wire.buf.clear()
        if s.wire.eof or tr.is_closing():
            # A handshake on a connection the server already closed would only wait for
            # its timeout.
            raise _Failure(Reply(451, "4.7.5", f"TLS handshake with {where} failed: "
                                 "connection closed after the 220 reply"), "tls",
                           fallback_plain=not policy.must_tls)
        loop = asyncio.get_running_loop()
        try:
            # ssl_handshake_timeout bounds the handshake; no wait_for around it, whose
            # cancellation would leave asyncio's half-made TLS transport unclosed.
            new = await loop.start_tls(tr, s.wire, ctx, server_hostname=name,
                                       ssl_handshake_timeout=self.timeouts.starttls)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as err:
            detail = getattr(err, "reason", None) or str(err) or type(err).__name__
            raise _Failure(Reply(451, "4.7.5", f"TLS handshake with {where} failed: {detail}"),
                           "tls", fallback_plain=not policy.must_tls) from None
        if new is None:
            raise _Failure(Reply(451, "4.7.5", f"TLS handshake with {where} failed"), "tls",
                           fallback_plain=not policy.must_tls)
        s.wire.transport = new  # (uvloop's transports are no asyncio.Transport subclasses)
        s.tls = describe(new.get_extra_info("ssl_object"))

    async def _auth(self, s: _Session, relay: Relay) -> None:
        where = s.where()
        if s.tls is None and not relay.allow_plaintext_auth:
            raise _Failure(Reply(451, "4.7.10", f"will not send credentials to {where} "
                                 "without TLS"), "tls")
        mech = relay.mechanism.upper()
        if mech not in s.conn.extensions.auth:
            raise _Failure(Reply(451, "4.7.0", f"{where} does not offer AUTH {mech}"), "policy")
        s.conn.send_auth(mech, relay.username or "", relay.password or "")
        ev = await self._event(s)
        assert isinstance(ev, AuthDone)
        if ev.reply.code != 235:
            # A refused login is our configuration's problem: keep the mail and retry.
            raise _Failure(Reply(451, "4.7.0", f"{where} refused AUTH {mech}: {_show(ev.reply)}"),
                           "policy")

    # --- one transaction -----------------------------------------------------------------

    async def _transact(self, s: _Session, d: Delivery, body: bytes,
                        need_utf8: bool) -> list[Outcome]:
        ext = s.conn.extensions
        cand = s.candidate
        rcpts = d.recipients
        unverified, s.unverified = s.unverified, False

        def all_of(reply: Reply, category: str) -> list[Outcome]:
            return [Outcome(r.address, _status(reply), reply, category, cand.host, cand.ip,
                            s.tls) for r in rcpts]

        if need_utf8 and not ext.smtputf8:
            # RFC 6531 §3.2: never downgrade an address; nothing was sent, keep the session.
            self._release(s)
            return all_of(Reply(553, "5.6.7", f"{s.where()} does not support SMTPUTF8, "
                                "needed for a non-ASCII address"), "utf8")
        if ext.size and len(body) > ext.size:
            self._release(s)
            return all_of(Reply(552, "5.3.4", f"message size {len(body)} exceeds the limit "
                                f"of {ext.size} of {s.where()}"), "size")
        env = d.envelope
        tx = Transaction(sender=env.sender, recipients=rcpts, body=body,
                         smtputf8=need_utf8 or (env.smtputf8 and ext.smtputf8),
                         ret=_param(env.mail_params, "RET"),
                         envid=_param(env.mail_params, "ENVID"))
        seen = s.conn.replies_seen
        try:
            s.conn.send_transaction(tx)
            ev = await self._event(s)
        except _Failure as err:
            await self._quit(s)
            if unverified and err.category == "connect" and s.conn.replies_seen == seen:
                raise _Stale from None
            return all_of(err.reply, err.category)
        except ClientProtocolError as err:  # our own envelope could not be sent as is
            self._release(s)
            return all_of(Reply(554, "5.6.0", f"cannot send this envelope: {err}"), "protocol")
        assert isinstance(ev, TransactionDone)
        if unverified and ev.mail.code == 421:
            # The server is closing (RFC 5321 §3.8) and took nothing: an RSET would have
            # met this 421 and a new connection carried the message, so do just that.
            await self._quit(s)
            raise _Stale
        s.messages += 1
        s.clean = ev.data is not None and ev.data.is_positive
        out = []
        for i, r in enumerate(rcpts):
            reply = ev.result(i)
            out.append(Outcome(r.address, _status(reply), reply,
                               "ok" if reply.is_positive else "policy", cand.host, cand.ip,
                               s.tls))
        if s.conn.closed or s.messages >= self.max_per_connection:
            await self._quit(s)
        else:
            self._release(s)
        return out

    # --- the pool --------------------------------------------------------------------------

    def _release(self, s: _Session) -> None:
        if s.conn.closed or s.wire.eof or s.messages >= self.max_per_connection:
            self._spawn_quit(s)
            return
        loop = asyncio.get_running_loop()
        self._idle.setdefault(s.key, []).append(s)
        s.released = time.monotonic()
        s.idle = loop.call_later(self.idle_timeout, self._expire, s)

    def _expire(self, s: _Session) -> None:
        group = self._idle.get(s.key)
        if group and s in group:
            group.remove(s)
            if not group:
                del self._idle[s.key]
            self._spawn_quit(s)

    def _spawn_quit(self, s: _Session) -> None:
        task = asyncio.get_running_loop().create_task(self._quit(s))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _quit(self, s: _Session) -> None:
        """Say QUIT if the session allows it, then close whatever happens."""
        try:
            if not s.conn.closed and not s.wire.eof and s.conn.waiting_for is None:
                s.conn.send_quit()
                with contextlib.suppress(_Failure, ClientProtocolError):
                    ev = await self._event(s)
                    assert isinstance(ev, QuitDone | ServerClosing)
        except ClientProtocolError:
            pass
        finally:
            s.wire.close()

    # --- the reading loop ------------------------------------------------------------------

    async def _event(self, s: _Session) -> Event:
        """Write what the machine has to say, then read until it has an event. Every stage
        has its own deadline (RFC 5321 §4.5.3.2); a pipelined group restarts it at each
        reply, so a server that trickles bytes cannot hold us beyond one stage's time."""
        conn = s.conn
        seen = -1
        deadline = 0.0
        try:
            while True:
                out = conn.data_to_send()
                if out:
                    await s.wire.write(out, self.timeouts.block)
                ev = conn.next_event()
                out = conn.data_to_send()
                if out:
                    await s.wire.write(out, self.timeouts.block)
                if ev is not None:
                    if isinstance(ev, ServerClosing):
                        raise _Failure(Reply(451, "4.4.2", f"{s.where()} closed the "
                                             f"session: {_show(ev.reply)}"), "connect")
                    return ev
                stage = conn.waiting_for
                if stage is None:
                    raise ClientProtocolError("no reply pending and no event")
                now = time.monotonic()
                if conn.replies_seen != seen:
                    seen = conn.replies_seen
                    deadline = now + self.timeouts.for_stage(stage)
                try:
                    data = await s.wire.read(deadline - now)
                except TimeoutError:
                    raise _Failure(Reply(451, "4.4.2", f"timeout waiting for the "
                                         f"{stage.value.upper()} reply from {s.where()}"),
                                   "timeout") from None
                if not data:
                    try:
                        conn.receive_eof()
                    except ClientProtocolError:
                        pass
                    raise _Failure(Reply(451, "4.4.2", f"lost connection with {s.where()} "
                                         f"while waiting for the {stage.value.upper()} reply"),
                                   "connect")
                conn.receive_data(data)
        except ClientProtocolError as err:
            raise _Failure(Reply(451, "4.5.0", f"protocol error from {s.where()}: {err}"),
                           "protocol") from None
        except TimeoutError:
            raise _Failure(Reply(451, "4.4.2", f"timeout writing to {s.where()}"),
                           "timeout") from None
        except OSError as err:
            raise _Failure(Reply(451, "4.4.2", f"lost connection with {s.where()}: "
                                 f"{err.strerror or type(err).__name__}"), "connect") from None


def _ip_or_none(host: str) -> str | None:
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return None


def _param(params: dict[str, str | None], key: str) -> str | None:
    value = params.get(key)
    return value if value else None
