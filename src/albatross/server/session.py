"""The session driver: runs the smtp/ state machine over an asyncio transport.

One `Session` per connection, an `asyncio.Protocol` (no StreamReader: bytes go straight into
the state machine's buffer). Decisions that need no I/O (EHLO, MAIL, RCPT) are made inline;
the end of a message awaits the spool's group commit, and only then is 250 written.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate, getaddresses
from typing import Any

from albatross.errors import AlbatrossError
from albatross.model import Envelope, Recipient, Reply
from albatross.msgauth.gate import missing_fields
from albatross.policy import ACCEPT, ClientInfo, Phase, Policy, Verdict
from albatross.sasl import (
    AuthExchangeError,
    AuthLimiter,
    Challenge,
    CredentialStore,
    Mechanism,
    new_mechanism,
)
from albatross.sasl.replies import AUTH_FAILED, AUTH_OK, AUTH_RATE_LIMITED, AUTH_TEMPFAIL
from albatross.server.proxy import ProxyError, ProxyHeaderParser
from albatross.server.proxy import allowed as proxy_allowed
from albatross.server.tls import describe
from albatross.smtp.server import (
    AuthRequest,
    AuthResponse,
    Closed,
    Hello,
    Limits,
    MailFrom,
    MessageAborted,
    MessageData,
    MessageEnd,
    MessageStart,
    RcptTo,
    Reset,
    ServerConnection,
    StartTLS,
    State,
)

R_TOO_MANY_CONN = Reply(421, "4.7.0", "Error: too many connections, try again later")
R_TOO_MANY_FROM_IP = Reply(421, "4.7.0", "Error: too many connections from your address")
R_SHUTDOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
R_TIMEOUT = Reply(421, "4.4.2", "Error: timeout exceeded, closing connection")
R_NO_SPACE = Reply(452, "4.3.1", "Insufficient system storage, try again later")
R_RELAY_DENIED = Reply(554, "5.7.1", "Error: relay access denied")
R_NO_USER = Reply(550, "5.1.1", "Error: no such user here")
R_AUTH_REQUIRED = Reply(530, "5.7.0", "Error: authentication required")
R_LOOP = Reply(554, "5.4.6", "Error: too many Received headers, mail loop detected")
R_HEADER_TOO_BIG = Reply(552, "5.3.4", "Error: message header block too large")
R_STORE_FAILED = Reply(451, "4.3.0", "Error: could not store the message, try again later")
_HIGH_WATER = 1 << 20  # pause reading when this much input waits for a decision
# Events one pump handles before letting other connections run: a client pipelining
# thousands of commands must not hold the event loop for a long stretch.
_PUMP_BUDGET = 256
_STREAM_CHUNK = 256 * 1024  # hand content to the spool in pieces of about this size


@dataclass(slots=True)
class SessionPolicy:
    """The decisions built into every session: relay control, local recipients and loop
    detection. The configurable client checks (DNSBL, HELO, rates...) are the `Policy` in
    ServerContext.checks, asked at each phase."""

    local_domains: frozenset[str]
    trusts: Callable[[str], bool]  # is this client address in a trusted network?
    mailbox: Callable[[str], str | None] = lambda address: None  # local user lookup
    max_received: int = 50
    max_header_size: int = 1 << 20

    def is_trusted(self, ip: str) -> bool:
        try:
            return self.trusts(ip)
        except ValueError:
            return False

    def is_local(self, domain: str) -> bool:
        return domain.rstrip(".").lower() in self.local_domains


@dataclass(slots=True)
class Arrival:
    """What the end-of-data hook knows of a message before it is stored."""

    qid: str
    role: str
    client: ClientInfo
    trusted: bool  # the client is in a trusted network
    sender: str
    recipients: list[str]
    helo: str


@dataclass(slots=True)
class Finish:
    """The end-of-data hook's answer: header lines to put on top of the message (a
    DKIM-Signature, Authentication-Results), or a refusal (nothing is stored), or storing
    it on hold; `log` adds fields to the `queued` or `reject` event."""

    prepend: bytes = b""
    drop: int = 0  # the first `drop` bytes of the message given to the hook are replaced
    reply: Reply | None = None
    hold: bool = False
    log: dict[str, Any] = field(default_factory=dict)


# The hook: given the arrival and the whole message (our Received header first), decide.
FinishHook = Callable[[Arrival, bytes], Awaitable[Finish]]


@dataclass(slots=True)
class ServerContext:
    """What every session shares: limits, storage, log, TLS and the connection counts."""

    limits: Limits
    spool: Any  # albatross.spool.Spool
    log: Any  # albatross.observe.MailLog
    policy: SessionPolicy
    banner: str
    tls: ssl.SSLContext | None = None
    max_connections: int = 1000
    max_per_ip: int = 50
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    tls_timeout: float = 30.0
    sessions: set[Session] = field(default_factory=set)
    per_ip: dict[str, int] = field(default_factory=dict)
    shutting_down: bool = False
    committing: set[Session] = field(default_factory=set)  # stores in flight, for stop()
    credentials: CredentialStore | None = None  # SMTP AUTH users (None: no AUTH)
    proxy_from: tuple[Any, ...] = ()  # networks whose connections start with a PROXY header
    auth_limiter: AuthLimiter | None = None
    on_queued: Callable[[], None] = lambda: None  # tell the scheduler new mail is due
    # Scheduler.intake: a message the scheduler takes straight from memory once stored.
    intake: Callable[[Envelope], Callable[[str, bytes | None], None] | None] = (
        lambda envelope: None)
    checks: Policy | None = None  # per-phase client checks (policy/), None for none
    finish: FinishHook | None = None  # end-of-data message checks and signing (msgauth)
    # Whether the hook has anything to do for (role, trusted, authenticated): when not, the
    # message is not even joined for it (the relay hot path: trusted, nothing to sign).
    finish_wanted: Callable[[str, bool, bool], bool] = lambda role, trusted, auth: True
    ids: Callable[[], int] = field(default_factory=lambda: itertools.count(1).__next__)


class _DateCache:
    """RFC 5322 dates for Received headers, formatted once per second."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def now(self) -> str:
        t = int(time.time())
        if t != self.second:
            self.second = t
            self.text = formatdate(t, localtime=False, usegmt=False)
        return self.text


_dates = _DateCache()
_NOTHING = Finish()


class Session(asyncio.Protocol):
    """One SMTP connection, in one role: "mx" (port 25), "submission" (587: STARTTLS, then
    AUTH before MAIL) or "submissions" (465: TLS from the first byte, then AUTH)."""

    def __init__(self, ctx: ServerContext, role: str = "mx",
                 tls: ssl.SSLContext | None = None) -> None:
        self.ctx = ctx
        self.role = role
        self.tls = tls or ctx.tls  # this listener's certificate, else the default
        self.conn = ServerConnection(ctx.limits, tls_active=role == "submissions")
        self.sid = f"s{ctx.ids():x}"
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self.peer_port = 0
        self.tls_info: str | None = None
        self.auth_identity: str | None = None
        self._mechanism: Mechanism | None = None
        self.last_active = 0.0
        self._busy = False  # a decision is being awaited (commit, TLS handshake)
        self._paused = False
        self._counted = False
        self._writer: Any = None
        self._qid: str | None = None
        self._headers: bytearray | None = None
        self._header_end = -1
        self._header_overflow = False
        self._messages = 0
        self._pending_writes: list[bytes] = []
        self._pending_size = 0
        self._store_failed = False
        self._committing = False
        self._released = False
        self._eof = False
        self._write_paused = False
        self._flushed_any = False
        self._proxy: ProxyHeaderParser | None = None
        self._proxy_timer: asyncio.TimerHandle | None = None
        self.proxy_peer: str | None = None  # the balancer's address, when behind one
        self.client = ClientInfo("", 0, role)  # what the policy checks see
        self._finish_log: dict[str, Any] = {}  # the hook's log fields for a refusal
        self.trusted = False  # the client is in a trusted network (set once it is known)
        self._pump_scheduled = False

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        ctx = self.ctx
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer_ip, self.peer_port = str(peer[0]), int(peer[1])
        if self.role == "submissions":  # implicit TLS: the handshake is already done
            self.tls_info = describe(transport.get_extra_info("ssl_object"))
        self.last_active = time.monotonic()
        if ctx.proxy_from and proxy_allowed(self.peer_ip, ctx.proxy_from):
            # A load balancer: the client's real address comes first, in a PROXY header
            # (v1 or v2); nothing is sent before it arrives.
            self._proxy = ProxyHeaderParser()
            self._proxy_timer = asyncio.get_running_loop().call_later(
                ctx.tls_timeout, self._proxy_timeout)
            return
        self._open()

    def _proxy_timeout(self) -> None:
        if self._proxy is not None and self.transport is not None:
            self.ctx.log.event("reject", session=self.sid, client=self.peer_ip,
                               phase="proxy", reply="no PROXY header in time")
            self.transport.abort()

    def _proxy_header(self, data: bytes) -> None:
        parser = self._proxy
        assert parser is not None
        try:
            info = parser.feed(data)
        except ProxyError as exc:
            # Malformed: close without a reply (the peer is our balancer, not a client).
            self.ctx.log.event("reject", session=self.sid, client=self.peer_ip,
                               phase="proxy", reply=str(exc))
            self._proxy = None
            if self._proxy_timer is not None:
                self._proxy_timer.cancel()
            if self.transport is not None:
                self.transport.abort()
            return
        if info is None:
            return
        self._proxy = None
        if self._proxy_timer is not None:
            self._proxy_timer.cancel()
        if not info.local and info.source_ip is not None:
            ip = info.source_ip
            if ip.startswith("::ffff:") and "." in ip:
                ip = ip[7:]
            self.proxy_peer = self.peer_ip
            self.peer_ip, self.peer_port = ip, int(info.source_port or 0)
        self._open()
        if parser.rest and self.transport is not None:
            self.data_received(parser.rest)

    def _open(self) -> None:
        """Count the connection against the limits, run the connect checks, and greet (or
        refuse) the client."""
        ctx = self.ctx
        client = self.client
        client.ip, client.port, client.tls = self.peer_ip, self.peer_port, bool(self.tls_info)
        # Asked once: RCPT (relay control) and the end of data need it for every message.
        self.trusted = ctx.policy.is_trusted(self.peer_ip)
        reply: Reply
        if ctx.shutting_down:
            reply = R_SHUTDOWN
        elif len(ctx.sessions) >= ctx.max_connections:
            reply = R_TOO_MANY_CONN
        elif ctx.per_ip.get(self.peer_ip, 0) >= ctx.max_per_ip:
            reply = R_TOO_MANY_FROM_IP
        else:
            reply = Reply(220, "", f"{ctx.limits.hostname} {ctx.banner}")
            ctx.sessions.add(self)
            ctx.per_ip[self.peer_ip] = ctx.per_ip.get(self.peer_ip, 0) + 1
            self._counted = True
            if ctx.checks is not None and ctx.checks.has(Phase.CONNECT):
                # The greeting waits for the checks (reverse DNS, DNSBL); what the client
                # sends meanwhile stays buffered until it is greeted.
                self._busy = True
                asyncio.get_running_loop().create_task(self._on_connect(ctx.checks, reply))
                return
        self._greet(reply)

    async def _on_connect(self, checks: Policy, welcome: Reply) -> None:
        verdict = await checks.run(Phase.CONNECT, self.client)
        self._busy = False
        if verdict.accepted:
            self._greet(welcome)
            return
        reply = verdict.reply
        assert reply is not None
        if reply.is_transient:
            # A temporary refusal before the session starts is 421 (RFC 5321 §3.1 and
            # §4.2.3); the check's enhanced code and text say why.
            reply = Reply(421, reply.enhanced, reply.text)
        self._greet(reply, check=verdict.check)

    def _greet(self, reply: Reply, **why: Any) -> None:
        ctx = self.ctx
        ctx.log.event("connect", session=self.sid, client=self.peer_ip, port=self.peer_port,
                      role=self.role, tls=self.tls_info, proxy=self.proxy_peer,
                      client_name=self.client.ptr)
        if reply.code != 220:
            ctx.log.event("reject", session=self.sid, client=self.peer_ip, phase="connect",
                          reply=str(reply), **why)
        if self.transport is None:  # the client left while the checks ran
            return
        self.conn.greet(reply)
        self._pump()

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self._proxy is not None:
            self._proxy_header(data)
            return
        self.conn.receive_data(data)
        if not self._busy:
            self._pump()
        if self.conn.buffered > _HIGH_WATER and not self._paused and self.transport:
            self.transport.pause_reading()
            self._paused = True

    def pause_writing(self) -> None:
        """The peer is not reading our replies: stop reading its commands until it does,
        so a client that pipelines without reading cannot grow our buffers without bound."""
        self._write_paused = True
        if self.transport is not None and not self._paused:
            self.transport.pause_reading()
            self._paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if not self._busy and self.transport is not None:
            self._pump()

    def eof_received(self) -> bool | None:
        # A client may half-close after its final dot (printf ... | nc -N): keep the socket
        # open until the replies for what it sent are written, so it gets its 250.
        self._eof = True
        return self._busy or self.conn.buffered > 0

    def connection_lost(self, exc: Exception | None) -> None:
        self._release(exc)

    def _release(self, exc: Exception | None) -> None:
        """The connection is gone: give back its slot, once. Called by connection_lost,
        and by a failed STARTTLS, after which asyncio's TLS layer swallows connection_lost."""
        if self._released:
            return
        self._released = True
        if not self._committing:  # a commit in flight finishes; at worst a duplicate
            self._drop_message()
        ctx = self.ctx
        if self._counted:
            self._counted = False
            ctx.sessions.discard(self)
            n = ctx.per_ip.get(self.peer_ip, 1) - 1
            if n <= 0:
                ctx.per_ip.pop(self.peer_ip, None)
            else:
                ctx.per_ip[self.peer_ip] = n
        ctx.log.event("disconnect", session=self.sid, client=self.peer_ip,
                      messages=self._messages,
                      reason=self.conn.closed_reason or ("error" if exc else "client closed"))
        self.conn.shutdown(R_SHUTDOWN)
        self.transport = None

    # --- the pump ------------------------------------------------------------------------

    def _pump(self) -> None:
        """Run events until the machine needs input or an async decision, then write."""
        conn = self.conn
        budget = _PUMP_BUDGET
        while not self._write_paused:
            if budget == 0:
                # More input is waiting: go on in a later callback, after other sessions.
                if not self._pump_scheduled:
                    self._pump_scheduled = True
                    asyncio.get_running_loop().call_soon(self._pump_later)
                break
            budget -= 1
            ev = conn.next_event()
            if ev is None:
                break
            t = type(ev)
            if t is MessageData:
                if self._on_data(ev.data):  # type: ignore[union-attr]
                    self._busy = True
                    asyncio.get_running_loop().create_task(self._drain())
                    break
            elif t is RcptTo:
                self._on_rcpt(ev)  # type: ignore[arg-type]
                if self._busy:
                    break
            elif t is MessageEnd:
                self._busy = True
                asyncio.get_running_loop().create_task(self._on_end())
                break
            elif t is MailFrom:
                self._on_mail(ev)  # type: ignore[arg-type]
                if self._busy:
                    break
            elif t is MessageStart:
                self._on_start()
            elif t is Hello:
                self._on_hello(ev)  # type: ignore[arg-type]
                if self._busy:
                    break
            elif t is MessageAborted:
                self._drop_message()
                self.ctx.log.event("reject", session=self.sid, client=self.peer_ip,
                                   phase="data", reply=str(ev.reply))  # type: ignore[union-attr]
            elif t is Reset:
                self._drop_message()
            elif t is AuthRequest or t is AuthResponse:
                self._busy = True
                asyncio.get_running_loop().create_task(self._on_auth(ev))  # type: ignore[arg-type]
                break
            elif t is StartTLS:
                self._busy = True
                # Stop reading before the 220 goes out: the client's handshake bytes must
                # reach the TLS layer, not the plaintext protocol (RFC 3207 §4).
                if self.transport is not None:
                    self.transport.pause_reading()
                conn.accept()
                self._flush()
                asyncio.get_running_loop().create_task(self._on_starttls())
                return
            elif t is Closed:
                break
        self._flush()

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        tr = self.transport
        if tr is None:
            return
        if out:
            tr.write(out)
        if self.conn.closing:
            tr.close()
            return
        if (self.ctx.shutting_down and not self._busy and self.conn.pending is None
                and self.conn.state in (State.INIT, State.READY)):
            self.conn.shutdown(R_SHUTDOWN)
            tr.write(self.conn.data_to_send())
            tr.close()
            return
        if self._eof and not self._busy and not self._pump_scheduled:
            tr.close()  # the client half-closed and everything it sent is answered
            return
        if (self._paused and not self._busy and not self._write_paused
                and self.conn.buffered <= _HIGH_WATER):
            self._paused = False
            tr.resume_reading()

    def _pump_later(self) -> None:
        self._pump_scheduled = False
        if not self._busy and self.transport is not None:
            self._pump()

    def _resume(self) -> None:
        self._busy = False
        if self.transport is not None:
            self._pump()

    # --- decisions -----------------------------------------------------------------------

    def _ask(self, phase: Phase, then: Callable[[Verdict], None], **fields: Any) -> None:
        """Ask the policy's `phase` checks, then call `then` with the verdict: inline when
        they need no I/O (EHLO and MAIL stay on the fast path), else from a task while the
        session waits (busy: no further command is read until `then` has answered)."""
        checks = self.ctx.checks
        if checks is None or not checks.has(phase):
            then(ACCEPT)
        elif checks.instant(phase):
            then(checks.decide(phase, self.client, **fields))
        else:
            self._busy = True
            asyncio.get_running_loop().create_task(self._ask_later(checks, phase, then, fields))

    async def _ask_later(self, checks: Policy, phase: Phase, then: Callable[[Verdict], None],
                         fields: dict[str, Any]) -> None:
        verdict = await checks.run(phase, self.client, **fields)
        if self.transport is not None and self.conn.pending is not None:
            then(verdict)
        self._resume()

    def _refused(self, phase: str, verdict: Verdict, **fields: Any) -> bool:
        """Answer a refusing verdict (True), or do nothing for an accepting one (False)."""
        if verdict.accepted:
            return False
        assert verdict.reply is not None
        self._reject(phase, verdict.reply, check=verdict.check, **fields)
        return True

    def _on_hello(self, ev: Hello) -> None:
        self.ctx.log.event("helo", session=self.sid, client=self.peer_ip, helo=ev.name,
                           esmtp=ev.extended)

        def then(verdict: Verdict) -> None:
            if not self._refused("helo", verdict, helo=ev.name):
                self.client.helo = ev.name
                self.conn.accept()

        self._ask(Phase.HELO, then, helo=ev.name)

    def _on_mail(self, ev: MailFrom) -> None:
        if self.role != "mx" and not self.conn.authenticated:
            # RFC 6409 §4.3 and RFC 8314: the submission ports take mail only after AUTH.
            self._reject("mail", R_AUTH_REQUIRED, sender=_addr(ev.sender))
            return
        if self.conn.authenticated and self.ctx.credentials is not None:
            sender = _addr(ev.sender)
            user = self.auth_identity or ""
            if not self.ctx.credentials.may_send_as(user, sender):
                # Issue 4: a user sends only as the addresses assigned to them.
                self._reject("mail", Reply(553, "5.7.1",
                                           f"Error: <{sender}> is not an address of {user}"),
                             sender=sender, user=user)
                return
        size = ev.params.size or self.ctx.limits.max_message_size
        if not self.ctx.spool.has_space_for(size):
            self._reject("mail", R_NO_SPACE, sender=_addr(ev.sender))
            return
        sender = _addr(ev.sender)

        def then(verdict: Verdict) -> None:
            if not self._refused("mail", verdict, sender=sender):
                self.conn.accept()

        self._ask(Phase.MAIL, then, sender=sender, size=ev.params.size)

    def _on_rcpt(self, ev: RcptTo) -> None:
        rcpt = ev.recipient
        pol = self.ctx.policy
        if rcpt.domain == "":  # <Postmaster>, always accepted (RFC 5321 §4.1.1.3)
            self.conn.accept()
        elif pol.is_local(rcpt.domain):
            address = str(rcpt)
            if rcpt.local.lower() == "postmaster" or pol.mailbox(address) is not None:
                self._accept_rcpt(address)
            else:
                self._reject("rcpt", R_NO_USER, recipient=address)
        elif self.conn.authenticated or self.trusted:
            # No open relay (ARCHITECTURE.md): mail for others' domains only from
            # authenticated clients and trusted networks.
            self._accept_rcpt(str(rcpt))
        else:
            self._reject("rcpt", R_RELAY_DENIED, recipient=str(rcpt))

    def _accept_rcpt(self, address: str) -> None:
        """A recipient the built-in rules take: the RCPT checks have the last word."""

        def then(verdict: Verdict) -> None:
            if not self._refused("rcpt", verdict, recipient=address):
                self.conn.accept()

        self._ask(Phase.RCPT, then, recipient=address)

    def _reject(self, phase: str, reply: Reply, **fields: Any) -> None:
        self.ctx.log.event("reject", session=self.sid, client=self.peer_ip, phase=phase,
                           reply=str(reply), **fields)
        self.conn.respond(reply)

    # --- message content -----------------------------------------------------------------

    def _on_start(self) -> None:
        ctx = self.ctx
        qid = ctx.spool.new_id()
        self._qid = qid
        self._writer = ctx.spool.begin(qid)
        self._headers = bytearray()
        self._header_end = -1
        self._header_overflow = False
        self._store_failed = False
        self._flushed_any = False
        received = self._received(qid)
        self._pending_writes = [received]
        self._pending_size = len(received)

    def _received(self, qid: str) -> bytes:
        """Our trace header, RFC 5321 §4.4 (with the TLS details when used)."""
        tr = self.conn.transaction
        utf8 = tr.params is not None and tr.params.smtputf8
        proto = self._protocol(utf8)
        helo = self.conn.helo or "unknown"
        # RFC 5321 §4.4 TCP-info: the confirmed reverse name (or "unknown") when looked up.
        name = f"{self.client.ptr} " if self.client.ptr else ""
        lines = [f"Received: from {helo} ({name}[{self.peer_ip}])",
                 f"\tby {self.ctx.limits.hostname} (Albatross) with {proto} id {qid}"]
        if self.tls_info:
            version, _, cipher = self.tls_info.partition(" ")
            lines.append(f"\t(version={version} cipher={cipher})")
        if len(tr.recipients) == 1:
            lines.append(f"\tfor <{tr.recipients[0].recipient}>; {_dates.now()}")
        else:
            lines[-1] += ";"
            lines.append(f"\t{_dates.now()}")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")

    def _protocol(self, utf8: bool) -> str:
        """The "with" protocol of RFC 3848 / RFC 6531: ESMTP, ESMTPS, ESMTPSA, UTF8SMTPSA..."""
        proto = "UTF8SMTP" if utf8 else "ESMTP" if self.conn.extended else "SMTP"
        if self.tls_info:
            proto += "S"
        if self.conn.authenticated:
            proto += "A"
        return proto

    def _on_data(self, data: bytes) -> bool:
        """Collect content; True when enough is waiting to be handed to the spool now
        (so a large message streams to disk instead of growing in memory)."""
        if self._writer is None:
            return False
        if self._header_end < 0 and not self._header_overflow:
            self._scan_headers(data)
            if self._header_end >= 0 and self.role != "mx":
                self._submission_fixups()
        self._pending_writes.append(data)
        self._pending_size += len(data)
        return self._pending_size >= _STREAM_CHUNK

    async def _write_pending(self) -> None:
        writes, self._pending_writes, self._pending_size = self._pending_writes, [], 0
        self._flushed_any = True
        writer = self._writer
        if writer is not None:
            await writer.write(b"".join(writes))

    async def _drain(self) -> None:
        try:
            await self._write_pending()
        except Exception as exc:
            # The store failed mid-message: drop it; the end of data will get 451.
            self.ctx.log.event("error", session=self.sid, qid=self._qid, where="spool",
                               error=str(exc) or repr(exc))
            self._drop_message()
            self._store_failed = True
        self._resume()

    def _scan_headers(self, data: bytes) -> None:
        hdr = self._headers
        assert hdr is not None
        start = max(0, len(hdr) - 3)
        hdr += data
        if hdr[:2] == b"\r\n":
            self._header_end = 0
            return
        end = hdr.find(b"\r\n\r\n", start)
        if end >= 0:
            self._header_end = end + 2
            del hdr[end + 2 :]
        if len(hdr) > self.ctx.policy.max_header_size:
            self._header_overflow = True

    def _submission_fixups(self) -> None:
        """RFC 6409 §8: a submission server may add a missing Message-ID and Date (never
        done for mail received as MX, which must arrive as it was sent)."""
        if self._flushed_any or not self._pending_writes or self._headers is None:
            return  # a header block so large it is already on disk: leave it alone
        extra = missing_fields(bytes(self._headers), self._qid or "",
                               self.ctx.limits.hostname)
        if extra:
            self._pending_writes[0] += extra  # right after our Received header

    def _count_received(self) -> int:
        hdr = self._headers
        if not hdr:
            return 0
        low = bytes(hdr).lower()
        return low.count(b"\nreceived:") + (1 if low.startswith(b"received:") else 0)

    def _foreign_from(self) -> str | None:
        """For an authenticated user: the first From: address that is not theirs."""
        store = self.ctx.credentials
        if not self.conn.authenticated or store is None or not self._headers:
            return None
        user = self.auth_identity or ""
        for value in _header_values(bytes(self._headers), b"from"):
            for _name, address in getaddresses([value]):
                if address and not store.may_send_as(user, address):
                    return address
        return None

    async def _on_end(self) -> None:
        conn = self.conn
        reply: Reply
        try:
            writer, qid = self._writer, self._qid
            if writer is None or qid is None or self._store_failed:
                reply = R_STORE_FAILED
            elif self._header_overflow:
                reply = R_HEADER_TOO_BIG
            elif self._count_received() >= self.ctx.policy.max_received:
                reply = R_LOOP
            elif (bad := self._foreign_from()) is not None:
                reply = Reply(553, "5.7.1", f"Error: From: <{bad}> is not an address of "
                                            f"{self.auth_identity}")
            elif (refusal := await self._data_checks(writer)) is not None:
                reply = refusal
            elif (finish := await self._finish(writer, qid)).reply is not None:
                reply = finish.reply
                self._finish_log = finish.log
            else:
                reply = await self._commit(writer, qid, finish)
            if reply.code >= 400:
                self._drop_message()
                extra, self._finish_log = self._finish_log, {}
                self.ctx.log.event("reject", session=self.sid, client=self.peer_ip,
                                   phase="data", qid=qid, reply=str(reply), **extra)
        except Exception as exc:  # never lose the session to a bug: tempfail the message
            self._drop_message()
            self.ctx.log.event("error", session=self.sid, where="end-of-data", error=repr(exc))
            reply = R_STORE_FAILED
        self._writer = None
        self._headers = None
        if conn.pending is not None:
            conn.respond(reply)
        self._resume()

    async def _data_checks(self, writer: Any) -> Reply | None:
        """The end-of-data checks' refusal, or None to store the message."""
        checks = self.ctx.checks
        if checks is None or not checks.has(Phase.DATA):
            return None
        tr = self.conn.transaction
        verdict = await checks.run(
            Phase.DATA, self.client, sender=_addr(tr.sender),
            recipients=[str(r.recipient) for r in tr.recipients],
            size=writer.size + self._pending_size)
        if verdict.accepted:
            return None
        return verdict.reply

    async def _finish(self, writer: Any, qid: str) -> Finish:
        """Ask the end-of-data hook (message authentication, DKIM signing) and put the
        headers it returns on top of the message."""
        hook = self.ctx.finish
        if hook is None or not self.ctx.finish_wanted(
                self.role, self.trusted, self.auth_identity is not None):
            return _NOTHING
        tr = self.conn.transaction
        arrival = Arrival(qid=qid, role=self.role, client=self.client,
                          trusted=self.trusted,
                          sender=_addr(tr.sender),
                          recipients=[str(r.recipient) for r in tr.recipients],
                          helo=self.conn.helo or "")
        if self._flushed_any:  # a large message: part of it is in the writer already
            await self._write_pending()
            message = await writer.read()
        else:
            message = b"".join(self._pending_writes)
        finish = await hook(arrival, message)
        if finish.reply is None and (finish.prepend or finish.drop):
            if self._flushed_any:
                writer.replace_start(finish.drop, finish.prepend)
            elif finish.drop:
                self._pending_writes = [finish.prepend + message[finish.drop:]]
                self._pending_size = len(self._pending_writes[0])
            else:
                self._pending_writes.insert(0, finish.prepend)
                self._pending_size += len(finish.prepend)
        return finish

    async def _commit(self, writer: Any, qid: str, finish: Finish | None = None) -> Reply:
        self._committing = True
        self.ctx.committing.add(self)
        try:
            return await self._store(writer, qid, finish or _NOTHING)
        finally:
            self._committing = False
            self.ctx.committing.discard(self)

    async def _store(self, writer: Any, qid: str, finish: Finish) -> Reply:
        tr = self.conn.transaction
        params = tr.params
        await self._write_pending()
        env = Envelope(
            sender=_addr(tr.sender),
            recipients=[Recipient(str(r.recipient), r.notify, r.orcpt) for r in tr.recipients],
            mail_params=dict(params.raw) if params is not None else {},
            client_ip=self.peer_ip,
            client_port=self.peer_port,
            helo=self.conn.helo or "",
            protocol=self._protocol(params is not None and params.smtputf8),
            tls=self.tls_info,
            auth=self.auth_identity,
            arrival=time.time(),
            source="smtp",
        )
        handoff = None if finish.hold else self.ctx.intake(env)
        try:
            await self.ctx.spool.commit(writer, env, held=finish.hold, handoff=handoff)
        except AlbatrossError as exc:
            self.ctx.log.event("error", session=self.sid, qid=qid, where="spool", error=str(exc))
            return exc.reply if exc.reply.code >= 400 else R_STORE_FAILED
        self._writer = None
        self._messages += 1
        self.ctx.log.event("queued", qid=qid, session=self.sid, client=self.peer_ip,
                           client_name=self.client.ptr, sender=env.sender,
                           recipients=[r.address for r in env.recipients],
                           size=writer.size, tls=self.tls_info,
                           **({"held": True} if finish.hold else {}), **finish.log)
        if handoff is None:
            self.ctx.on_queued()
        return Reply(250, "2.0.0", f"Ok: queued as {qid}")

    def _drop_message(self) -> None:
        w = self._writer
        self._writer = None
        self._pending_writes = []
        self._pending_size = 0
        if w is not None:
            w.abort()

    # --- AUTH ----------------------------------------------------------------------------

    async def _on_auth(self, ev: AuthRequest | AuthResponse) -> None:
        conn = self.conn
        try:
            await self._auth_step(ev)
        except AuthExchangeError as exc:
            self._mechanism = None
            self._log_auth(None, False, str(exc.reply))
            conn.respond(exc.reply)
        except Exception as exc:  # never lose the session to a bug: a temporary failure
            self._mechanism = None
            self.ctx.log.event("error", session=self.sid, where="auth", error=repr(exc))
            conn.respond(AUTH_TEMPFAIL)
        self._resume()

    async def _auth_step(self, ev: AuthRequest | AuthResponse) -> None:
        conn = self.conn
        store, limiter = self.ctx.credentials, self.ctx.auth_limiter
        if store is None:
            conn.respond(AUTH_TEMPFAIL)
            return
        if isinstance(ev, AuthRequest):
            if limiter is not None and limiter.check(self.peer_ip).blocked:
                self._log_auth(None, False, "blocked: too many failures")
                conn.respond(AUTH_RATE_LIMITED)
                return
            self._mechanism = new_mechanism(ev.mechanism)
            result = self._mechanism.start(ev.initial)
        else:
            if self._mechanism is None:
                conn.respond(AUTH_TEMPFAIL)
                return
            result = self._mechanism.step(ev.line)
        if isinstance(result, Challenge):
            conn.auth_challenge(result.text)
            return
        self._mechanism = None
        user = result.authcid
        if limiter is not None:
            verdict = limiter.attempt(self.peer_ip, user)
            if verdict.blocked:
                self._log_auth(user, False, "blocked: too many failures")
                conn.respond(AUTH_RATE_LIMITED)
                return
            if verdict.delay > 0:
                await asyncio.sleep(verdict.delay)  # slow down password guessing
        if await store.verify(user, result.password):
            if limiter is not None:
                limiter.succeeded(self.peer_ip, user)
            self.auth_identity = user
            self.client.authenticated = user
            self._log_auth(user, True, None)
            conn.respond(AUTH_OK)
        else:
            self._log_auth(user, False, "invalid credentials")
            conn.respond(AUTH_FAILED)

    def _log_auth(self, user: str | None, ok: bool, error: str | None) -> None:
        self.ctx.log.event("auth", session=self.sid, client=self.peer_ip, user=user, ok=ok,
                           error=error)

    # --- STARTTLS ------------------------------------------------------------------------

    async def _on_starttls(self) -> None:
        ctx = self.ctx
        conn = self.conn
        tr = self.transport
        if tr is None or self.tls is None:
            self._release(None)
            return
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(ctx.tls_timeout):
                new = await loop.start_tls(tr, self, self.tls, server_side=True)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            ctx.log.event("tls", session=self.sid, client=self.peer_ip, ok=False,
                          error=str(exc) or type(exc).__name__)
            if self.transport is not None:
                self.transport.abort()
            self.conn.closed_reason = "TLS handshake failed"
            self._release(exc)
            return
        if new is None:
            return
        self.transport = new
        self.tls_info = describe(new.get_extra_info("ssl_object"))
        self.client.tls = True
        self.client.helo = None  # RFC 3207 §4.2: the session starts over
        ctx.log.event("tls", session=self.sid, client=self.peer_ip, ok=True, tls=self.tls_info)
        conn.tls_established()
        self._resume()

    # --- timeouts and shutdown -------------------------------------------------------------

    def check_timeout(self, now: float) -> None:
        if self._busy or self.transport is None:
            return
        st = self.conn.state
        limit = (self.ctx.data_timeout if st in (State.DATA, State.BDAT)
                 else self.ctx.command_timeout)
        if now - self.last_active > limit:
            self.conn.shutdown(R_TIMEOUT)
            self.conn.closed_reason = "timeout"
            self._flush()

    def force_close(self) -> None:
        """End of the shutdown grace: tempfail whatever is open."""
        if self.transport is None:
            return
        self._drop_message()
        self.conn.shutdown(R_SHUTDOWN)
        self._flush()


def _header_values(block: bytes, name: bytes) -> list[str]:
    """The unfolded values of every `name:` header in a header block."""
    out: list[str] = []
    current: list[bytes] | None = None
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and current is not None:
            current.append(line)
            continue
        if current is not None:
            out.append(b" ".join(x.strip() for x in current).decode("utf-8", "replace"))
            current = None
        key, colon, value = line.partition(b":")
        if colon and key.strip().lower() == name:
            current = [value]
    if current is not None:
        out.append(b" ".join(x.strip() for x in current).decode("utf-8", "replace"))
    return out


def _addr(mb: object | None) -> str:
    return "" if mb is None else str(mb)
