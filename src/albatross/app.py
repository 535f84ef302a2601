"""The composition root: builds the MTA from a Config, runs it, and stops it cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import itertools
import math
import os
import signal
import ssl
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from albatross import bounce
from albatross.api import AdminServer
from albatross.config import Config
from albatross.config.values import listen_key, split_hostport
from albatross.delivery import Courier
from albatross.delivery.maildir import MaildirCourier
from albatross.delivery.mx import RoutePolicy
from albatross.delivery.smtp import Relay, SmtpCourier, Timeouts
from albatross.delivery.tls import TlsPolicies, TlsPolicy
from albatross.dns import DnsResolver, parse_server
from albatross.errors import ConfigError, SpoolError
from albatross.model import Envelope, Recipient
from albatross.msgauth.dkimkey import load_arc_key, load_keys
from albatross.msgauth.gate import Gate
from albatross.observe import MailLog
from albatross.policy import build_policy
from albatross.routing.local import LocalMailboxes
from albatross.sasl import (
    RECOMMENDED,
    AuthLimiter,
    AuthLimits,
    CredentialStore,
    PasswordHashing,
    Thresholds,
)
from albatross.scheduler import Admin, Route, Scheduler, SchedulerSettings
from albatross.server import Arrival, Finish, ServerContext, Session, SessionPolicy
from albatross.server.tls import Certificates, self_signed
from albatross.smtp.server import Limits
from albatross.spool import Spool, shards
from albatross.supervisor import Supervisor, reserve

FLUSH_INTERVAL = 0.2  # mail log batching
_PASS = Finish()
SWEEP_INTERVAL = 1.0  # timeouts and maildrop pickup


class App:
    """One Albatross process: spool, mail log and SMTP listeners. With `workers` > 1 it is
    worker `shard` of them (supervisor.py starts them): its queue is that shard's
    (spool/shards.py), its listeners share their ports with the other workers'."""

    def __init__(self, config: Config, *, out: TextIO | None = None, shard: int = 0) -> None:
        self.config = config
        self.out = out or sys.stdout
        self.data_dir = Path(config.data_dir)
        self.shard = shard
        self.workers = config.workers
        self.shard_dir = shards.shard_dir(self.data_dir, shard)
        self.log: MailLog | None = None
        self.spool: Spool | None = None
        self.ctx: ServerContext | None = None
        self.scheduler: Scheduler | None = None
        self.admin: Any = None
        self.couriers: dict[str, Courier] = {}
        d = config.delivery
        # One resolver (one cache) for delivery and the client checks.
        self.resolver = DnsResolver([parse_server(d.dns)] if d.dns else None,
                                    timeout=d.dns_timeout)
        self.gate = Gate(self.resolver, authserv_id=config.hostname, sign_keys={},
                         checks=False)  # replaced in start() by the configured one
        self.mailboxes = LocalMailboxes(
            domains=frozenset(d.lower() for d in config.domains.local),
            users=frozenset(config.local.users), catch_all=config.local.catch_all,
            delimiter=config.local.recipient_delimiter)
        self.servers: list[asyncio.Server] = []
        self.addresses: list[tuple[str, int]] = []
        self.roles: list[str] = []
        self.certificates: Certificates | None = None
        self.listener_certificates: dict[str, Certificates] = {}  # by listen address
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = cfg.log.file if cfg.log.file.is_absolute() else self.data_dir / cfg.log.file
        self.log = MailLog(log_path, echo=sys.stderr if cfg.log.stderr else None)
        self.log.event("starting", data_dir=str(self.data_dir), pid=_pid(), **self._worker())
        self.gate = await self._gate()
        self.spool = Spool(self.shard_dir, inline_max=cfg.spool.inline_max,
                           min_free_space=cfg.spool.min_free_space, log=self.log.event,
                           shard=shards.letter(self.shard), prepare=self._prepare_local)
        await self.spool.open()
        if self.shard == 0:
            await self._absorb_orphans()
        if cfg.tls.cert_file is not None and cfg.tls.key_file is not None:
            cert, key = cfg.tls.cert_file, cfg.tls.key_file
        else:
            cert, key = await asyncio.to_thread(self_signed, self.data_dir / "tls", cfg.hostname)
        self.certificates = Certificates((cert, key), cfg.tls.certificates)
        tls = self.certificates.context
        for name, pair in cfg.tls.listeners.items():
            self.listener_certificates[name] = await asyncio.to_thread(
                Certificates, pair, cfg.tls.certificates)
        smtp = cfg.smtp
        users = cfg.auth.users_file
        users = users if users.is_absolute() else self.data_dir / users
        credentials: CredentialStore | None = None
        if users.exists():
            credentials = await asyncio.to_thread(
                CredentialStore, users, PasswordHashing(RECOMMENDED),
                lambda problem: self.log.event("error", where="users", error=str(problem))
                if self.log is not None else None)
        limits = Limits(
            hostname=cfg.hostname,
            max_command_line=smtp.max_command_line,
            max_text_line=smtp.max_text_line,
            max_message_size=smtp.max_message_size,
            max_recipients=smtp.max_recipients,
            max_errors=smtp.max_errors,
            bare_line_endings=smtp.bare_line_endings,
            tls_available=True,
            auth_mechanisms=("PLAIN", "LOGIN") if credentials is not None else (),
            auth_requires_tls=cfg.auth.require_tls,
        )
        self.scheduler = self._build_scheduler()
        policy = SessionPolicy(
            local_domains=self.mailboxes.domains,
            trusts=cfg.relay.trusts,
            mailbox=self.mailboxes.mailbox,
            max_received=smtp.max_received_headers,
            max_header_size=smtp.max_header_size,
        )
        self.ctx = ServerContext(
            limits=limits, spool=self.spool, log=self.log, policy=policy,
            banner=smtp.banner, tls=tls,
            max_connections=smtp.max_connections, max_per_ip=smtp.max_connections_per_ip,
            command_timeout=smtp.timeouts.command, data_timeout=smtp.timeouts.data,
            tls_timeout=smtp.timeouts.tls_handshake,
            on_queued=self.scheduler.wake,
            intake=self.scheduler.intake,
            credentials=credentials,
            proxy_from=tuple(smtp.proxy_protocol_from),
            auth_limiter=self._auth_limiter() if credentials is not None else None,
            checks=build_policy(cfg, self.resolver, log=self.log.event),
            finish=self._finish,
            finish_wanted=self._finish_wanted,
            # Session ids unique across workers in the shared mail log: k+1, k+1+N, ...
            ids=itertools.count(self.shard + 1, self.workers).__next__,
        )
        loop = asyncio.get_running_loop()
        ctx = self.ctx
        for role, host, port in smtp.listeners:
            bind: str | None = None if host in ("*", "") else host
            own = self.listener_certificates.get(listen_key(host, port))
            listener_tls = own.context if own is not None else tls
            server = await loop.create_server(
                functools.partial(Session, ctx, role, listener_tls), bind, port,
                reuse_address=True, reuse_port=self.workers > 1 or None, backlog=1024,
                ssl=listener_tls if role == "submissions" else None,
                ssl_handshake_timeout=smtp.timeouts.tls_handshake if role == "submissions"
                else None)
            self.servers.append(server)
            for sock in server.sockets:
                name = sock.getsockname()
                self.addresses.append((str(name[0]), int(name[1])))
                self.roles.append(role)
                self.log.event("listening", address=f"{name[0]}:{name[1]}", role=role)
        if cfg.queue.deliver:
            self.scheduler.start()
        self.admin = AdminServer(Admin(self.scheduler), self.shard_dir / "admin.sock")
        await self.admin.start()
        self._tasks.append(loop.create_task(self._flush_log()))
        self._tasks.append(loop.create_task(self._sweep()))
        listening = ", ".join(_fmt(h, p) + ("" if r == "mx" else f" ({r})")
                              for (h, p), r in zip(self.addresses, self.roles, strict=True))
        print(f"albatross: listening on {listening}", file=self.out, flush=True)
        print(f"albatross: data in {self.data_dir} (queue {self.data_dir / 'queue.db'}, "
              f"log {log_path})", file=self.out, flush=True)

    async def _gate(self) -> Gate:
        """Message authentication: the DKIM keys of [dkim] (a missing or unusable key stops
        the start, naming its file) and the [msgauth] checks."""
        cfg = self.config
        keys = await asyncio.to_thread(load_keys, cfg.dkim.sign, self.data_dir)
        arc = cfg.dkim.arc_key
        arc_key = (await asyncio.to_thread(load_arc_key, self.data_dir, *arc)
                   if arc is not None else None)
        m = cfg.msgauth
        assert self.log is not None
        return Gate(self.resolver, authserv_id=m.authserv_id or cfg.hostname, sign_keys=keys,
                    checks=m.checks, spf_helo=m.spf_helo, enforce=m.dmarc_enforce,
                    quarantine=m.dmarc_quarantine, timeout=m.check_timeout,
                    signature_lifetime=cfg.dkim.signature_lifetime, arc_key=arc_key,
                    log=self.log.event)

    def _finish_wanted(self, role: str, trusted: bool, authenticated: bool) -> bool:
        """Our own mail needs the gate only to be signed; others' only to be checked."""
        if role != "mx" or trusted or authenticated:
            return bool(self.gate.sign_keys)
        return self.gate.checks

    async def _finish(self, arrival: Arrival, message: bytes) -> Finish:
        """The end of data: sign our own mail (authenticated, trusted or not received as
        MX), check everyone else's."""
        gate = self.gate
        if (arrival.role != "mx" or arrival.trusted
                or arrival.client.authenticated is not None):
            signature = await gate.sign(message, qid=arrival.qid)
            return Finish(prepend=signature) if signature else _PASS
        v = await gate.check(message, client_ip=arrival.client.ip, helo=arrival.helo,
                             mail_from=arrival.sender, ptr=arrival.client.ptr,
                             qid=arrival.qid)
        return Finish(prepend=v.insert, drop=v.drop,
                      reply=v.reply if v.action == "reject" else None,
                      hold=v.action == "hold", log=v.log)

    async def _prepare_local(self, envelope: Envelope, writer: Any) -> None:
        """Mail from the sendmail command is ours: sign it like authenticated mail."""
        if not self.gate.sign_keys:
            return
        signature = await self.gate.sign(await writer.read(), qid=writer.qid)
        if signature:
            writer.prepend(signature)

    def _worker(self) -> dict[str, int]:
        """The `worker` field of lifecycle events, when there is more than one."""
        return {"worker": self.shard} if self.workers > 1 else {}

    async def _absorb_orphans(self) -> None:
        """Move the mail of shards no worker owns (workers was lowered) into ours. A failure
        leaves it where it is, for the next start; it never stops this one."""
        assert self.spool is not None and self.log is not None
        for index in await asyncio.to_thread(shards.orphans, self.data_dir, self.workers):
            try:
                await shards.absorb(self.spool, self.data_dir, index, self.log.event)
            except Exception as exc:
                self.log.event("error", where="absorb", shard=shards.letter(index),
                               error=str(exc) or repr(exc))

    def _auth_limiter(self) -> AuthLimiter:
        a = self.config.auth
        slow = min(a.slow_after, a.block_after)
        per_address = Thresholds(slow_after=slow, max_delay=a.max_delay,
                                 block_after=a.block_after, block_for=a.block_for)
        per_user = Thresholds(slow_after=slow, max_delay=a.max_delay,
                              block_after=2 * a.block_after, block_for=a.block_for)
        return AuthLimiter(time.monotonic, AuthLimits(per_address=per_address,
                                                      per_user=per_user))

    def _couriers(self) -> dict[str, Courier]:
        """The Maildir courier for local domains, the SMTP courier for everything else, and
        one SMTP courier per relay named in [delivery.domains]."""
        cfg = self.config
        d = cfg.delivery
        resolver = self.resolver
        ca = str(d.ca_file) if d.ca_file else None
        tls = TlsPolicies(
            default=TlsPolicy(d.tls, ca_file=ca),  # type: ignore[arg-type]
            domains={dom: TlsPolicy(p["tls"], ca_file=ca) for dom, p in d.domains.items()
                     if "tls" in p})
        ours = {ip for ip, _port in cfg.smtp.listen_addresses
                if _is_specific_ip(ip)} | set(d.local_addresses)
        route_policy = RoutePolicy(local_addresses=frozenset(ours),
                                   loopback_is_local=d.loopback_is_local,
                                   our_domains=self.mailboxes.domains,
                                   allow_literals=d.address_literals)
        t = d.timeouts
        timeouts = Timeouts(connect=t.connect, greeting=t.greeting, ehlo=t.ehlo,
                            starttls=t.starttls, auth=t.ehlo, mail=t.mail, rcpt=t.rcpt,
                            data=t.data, block=t.block, dot=t.dot)

        def smtp(relay: Relay | None) -> SmtpCourier:
            return SmtpCourier(resolver, helo_name=d.helo_name or cfg.hostname, port=d.port,
                               tls_policy=tls, timeouts=timeouts,
                               max_per_connection=d.max_per_connection,
                               idle_timeout=d.idle_timeout, rset_after=d.rset_after,
                               relay=relay,
                               route_policy=route_policy)

        smart = None
        if d.relay:
            host, port = split_hostport(d.relay)
            smart = Relay(host, port, tls=TlsPolicy(d.relay_tls, ca_file=ca),  # type: ignore[arg-type]
                          username=d.relay_username or None,
                          password=d.relay_password or None)
        couriers: dict[str, Courier] = {
            "local": MaildirCourier(self.data_dir / "mail", self.mailboxes.mailbox,
                                    hostname=cfg.hostname),
            "smtp": smtp(smart),
        }
        for dom, p in d.domains.items():
            if "relay" in p:
                host, port = split_hostport(p["relay"])
                couriers[f"relay:{p['relay']}"] = smtp(Relay(
                    host, port, tls=tls.for_domain(dom)))
        self.couriers = couriers
        return couriers

    def route(self, recipient: Recipient, envelope: Envelope) -> Route:
        """Transport choice: local domains to Maildir, domains with their own relay to it,
        everything else by SMTP to the MX hosts (or the smart host)."""
        domain = recipient.domain
        if not domain or self.mailboxes.is_local(domain):
            return Route("local", "local")
        rule = self.config.delivery.domains.get(domain)
        if rule and "relay" in rule:
            return Route(f"relay:{rule['relay']}", domain)
        return Route("smtp", domain)

    def _build_scheduler(self) -> Scheduler:
        cfg = self.config
        q = cfg.queue
        n = self.workers

        def share(concurrency: int, rate: float) -> tuple[int, float]:
            # Each worker schedules its own shard: a destination's limits are divided
            # between them (docs/workers.md), rounding connections up so none gets zero.
            return math.ceil(concurrency / n), rate / n

        concurrency, rate = share(q.concurrency, q.rate)
        settings = SchedulerSettings(
            min_backoff=q.min_backoff, max_backoff=q.max_backoff, lifetime=q.lifetime,
            delay_warning=q.delay_warning, max_active=q.max_active,
            concurrency=concurrency, rate=rate, reporting_mta=cfg.hostname,
            postmaster=f"postmaster@{cfg.domains.local[0] if cfg.domains.local else cfg.hostname}",
            max_returned=q.max_returned,
            overrides={dom: share(int(p.get("concurrency", q.concurrency)),
                                  float(p.get("rate", q.rate)))
                       for dom, p in cfg.delivery.domains.items()
                       if "concurrency" in p or "rate" in p})
        assert self.spool is not None and self.log is not None
        return Scheduler(self.spool, self._couriers(), self.route, settings=settings,
                         log=self.log.event, dsn=bounce.build_dsn)

    async def _flush_log(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            if self.log is not None:
                self.log.flush()

    async def _sweep(self) -> None:
        """Once a second: close sessions that timed out, import sendmail's maildrop."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            if self.ctx is not None:
                for s in list(self.ctx.sessions):
                    s.check_timeout(now)
            if self.spool is not None and self.shard == 0:  # sendmail's maildrop is shard 0's
                try:
                    if await self.spool.pickup() and self.scheduler is not None:
                        self.scheduler.wake()
                except Exception as exc:  # keep sweeping; the file stays for next time
                    if self.log is not None:
                        self.log.event("error", where="pickup", error=repr(exc))

    def reload(self) -> None:
        """SIGHUP: load the TLS certificates again (sessions in progress keep theirs)."""
        if self.certificates is None or self.log is None:
            return
        self._tasks.append(asyncio.get_running_loop().create_task(self._reload_tls()))

    async def _reload_tls(self) -> None:
        assert self.certificates is not None and self.log is not None
        every = [self.certificates, *self.listener_certificates.values()]
        try:
            for certificates in every:
                await asyncio.to_thread(certificates.reload)  # file reads off the loop
        except (OSError, ssl.SSLError) as exc:
            self.log.event("error", where="reload", error=f"TLS certificates not reloaded: {exc}")
            return
        self.log.event("reload", what="tls", certificates=sum(
            1 + len(c.by_name_files) for c in every))

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting; let open sessions and running deliveries finish for `grace`
        seconds (at the same time); tempfail the rest; wait for commits in flight; close the
        spool and flush the log, whatever failed before."""
        if grace is None:
            grace = self.config.smtp.timeouts.shutdown_grace
        try:
            if self.log is not None:
                self.log.event("stopping", pid=_pid(), **self._worker())
            for server in self.servers:
                server.close()
            waits = [self._stop_sessions(grace)]
            if self.scheduler is not None:
                waits.append(self.scheduler.stop(grace))
            results = await asyncio.gather(*waits, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and self.log is not None:
                    self.log.event("error", where="stop", error=repr(r))
            for server in self.servers:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 2)
            if self.admin is not None:
                with contextlib.suppress(Exception):
                    await self.admin.stop()
            for courier in self.couriers.values():
                close = getattr(courier, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        await close()
            for t in self._tasks:
                t.cancel()
            for t in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        finally:
            if self.spool is not None:
                await self.spool.close()
            if self.log is not None:
                self.log.flush()
                self.log.close()
            self._stopped.set()

    async def _stop_sessions(self, grace: float) -> None:
        ctx = self.ctx
        if ctx is None:
            return
        ctx.shutting_down = True
        for s in list(ctx.sessions):
            s._flush()  # idle sessions get 421 now
        deadline = time.monotonic() + grace
        while ctx.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for s in list(ctx.sessions):
            if not s._committing:  # a session being stored gets its 250, then the 421
                s.force_close()
        for _ in range(200):  # commits in flight, even of clients that went away
            if not ctx.committing:
                break
            await asyncio.sleep(0.05)

    async def run(self) -> None:
        """Start, then serve until SIGTERM or SIGINT."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        await self.start()
        await stop.wait()
        with contextlib.suppress(OSError, ValueError):  # a reader gone must not skip stop()
            print("albatross: stopping", file=self.out, flush=True)
        await self.stop()


def _is_specific_ip(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _pid() -> int:
    return os.getpid()


def run(config: Config) -> int:
    """Run the daemon in the foreground: this process, or with `workers` > 1 a supervisor
    and its worker processes."""
    if config.workers > 1:
        return _supervise(config)
    return _serve(App(config))


def _serve(app: App) -> int:
    """Run `app` until SIGTERM, on uvloop when it is installed (set
    ALBATROSS_EVENT_LOOP=asyncio to use the standard loop, as the tests do for debug mode)."""
    if os.environ.get("ALBATROSS_EVENT_LOOP", "auto") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(app.run())
            return 0
    asyncio.run(app.run())
    return 0


def _supervise(config: Config) -> int:
    """Prepare what the workers share, once and before any fork (the data directory, the
    self-signed certificate, the listening ports), then run them under a Supervisor."""
    data_dir = Path(config.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if config.tls.cert_file is None or config.tls.key_file is None:
        self_signed(data_dir / "tls", config.hostname)  # not N workers racing to make one
    held = reserve((None if host in ("*", "") else host, port)
                   for _role, host, port in config.smtp.listeners)
    log_file = config.log.file if config.log.file.is_absolute() else data_dir / config.log.file
    try:
        return Supervisor(config.workers, functools.partial(_worker, config),
                          log=MailLog(log_file), grace=config.smtp.timeouts.shutdown_grace,
                          keep=held).run()
    finally:
        for sock in held:
            sock.close()


def _worker(config: Config, shard: int, ready: int) -> int:
    """One worker process (forked by the Supervisor): App for `shard`, whose start lines go
    to the supervisor through the `ready` pipe."""
    with os.fdopen(ready, "w", encoding="utf-8") as out:
        try:
            return _serve(App(config, out=out, shard=shard))
        except ConfigError as exc:
            print(f"albatross: invalid configuration:\n{exc}", file=sys.stderr)
            return 78
        except (OSError, SpoolError) as exc:
            print(f"albatross: worker {shard} cannot start: {exc}", file=sys.stderr)
            return 71
