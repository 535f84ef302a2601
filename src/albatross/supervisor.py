"""The supervisor: with `workers` > 1, the process that forks the workers, restarts those that
die, and passes the operator's signals on to them.

It runs no event loop and no threads (a fork copies only the calling thread, so a lock held
by another one would stay held forever in the child). Each worker is forked from this clean
state, also on a restart. The supervisor holds one socket per listening address, bound with
SO_REUSEPORT but never listening: the kernel only hands connections to listening sockets,
so it takes none, but the port stays ours while every worker is down, and a port already in
use is found before the first fork. Workers report readiness through a pipe: their
"albatross: listening on ..." line (App.start writes it to its `out`).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TextIO

from albatross.observe import MailLog

# Restart delay after an unexpected death: doubles for each death soon after a start,
# back to the first after a worker ran for STABLE_AFTER seconds.
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
STABLE_AFTER = 30.0
# On SIGTERM, how long past the workers' own shutdown grace before they are killed.
KILL_AFTER = 20.0

Worker = Callable[[int, int], int]  # (shard, fd of the ready pipe) -> exit status


@dataclass
class _Child:
    shard: int
    pid: int = 0
    pipe: int = -1  # read end of the ready pipe, -1 once closed
    buffer: bytes = b""
    ready: bool = False
    lines: list[str] = field(default_factory=list)
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None


def reserve(listeners: Iterable[tuple[str | None, int]]) -> list[socket.socket]:
    """Bind (without listen) a SO_REUSEPORT socket on every address the workers will listen
    on, with the options asyncio's create_server(reuse_port=True) sets, so that theirs join
    it. Raises OSError (EADDRINUSE...) as a bind would."""
    held: list[socket.socket] = []
    try:
        for host, port in listeners:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
            for family, kind, proto, _name, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                held.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.set_inheritable(False)
                sock.bind(address)
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held


class Supervisor:
    """Forks `workers` children running `worker(shard, ready_fd)`, waits until each says it
    listens, prints the first one's start lines on `out`, then keeps them running until
    SIGTERM or SIGINT; SIGHUP is passed on."""

    def __init__(self, workers: int, worker: Worker, *, out: TextIO | None = None,
                 log: MailLog | None = None, grace: float = 10.0,
                 keep: Iterable[socket.socket] = ()) -> None:
        self.worker = worker
        self.out = out or sys.stdout
        self.log = log
        self.grace = grace
        self.keep = list(keep)
        self.children = [_Child(k) for k in range(workers)]
        self._parent = os.getpid()
        self.stopping = False
        self.statuses: dict[int, int] = {}  # shard -> wait status, of the final stop
        self._signals: list[int] = []
        self._wake_r = self._wake_w = -1

    # -- the main loop ------------------------------------------------------------------

    def run(self) -> int:
        """Returns 0 when every worker stopped cleanly after SIGTERM/SIGINT; a worker's own
        status when one failed to start."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
        old = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            for child in self.children:
                self._spawn(child)
            failed = self._wait_ready()
            if failed is not None:
                return failed
            self._announce()
            return self._supervise()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(old_wakeup)
            for child in self.children:
                self._close_pipe(child)
            os.close(self._wake_r)
            os.close(self._wake_w)
            if self.log is not None:
                self.log.close()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _wait_ready(self) -> int | None:
        """Until every worker has said it listens. A worker that exits first fails the
        start: the others are stopped and its status (or 71) returned."""
        while not all(c.ready for c in self.children):
            self._poll(self._until_restart())
            for sig in self._take_signals():
                if sig in (signal.SIGTERM, signal.SIGINT):
                    self._stop_all()
                    self._drain()
                    return 0
            failed: int | None = None
            # Every child reaped here is marked gone before anything else happens: one
            # left marked alive would keep _drain waiting for it forever.
            for pid, status in self._reap():
                child = self._child(pid)
                if child is None:
                    continue
                child.pid = 0
                self._close_pipe(child)
                if child.ready:  # up, then died while the others were starting
                    child.ready = False  # the start waits for its successor
                    self._schedule_restart(child, pid, status)
                    continue
                self._report(f"worker {child.shard} (pid {pid}) could not start "
                             f"({_describe(status)})")
                if failed is None:
                    code = os.waitstatus_to_exitcode(status)
                    failed = code if code > 0 else 71
            if failed is not None:
                self._stop_all()
                self._drain()
                return failed
            self._restart_due()
        return None

    def _announce(self) -> None:
        """The first worker's start lines, once; before them the workers' pids (readers
        such as the tests stop at "listening on")."""
        pids = ", ".join(str(c.pid) for c in self.children)
        self._say(f"albatross: {len(self.children)} workers (pids {pids})")
        for line in self.children[0].lines:
            self._say(line)

    def _say(self, line: str) -> None:
        """A line on `out`; a reader that went away must not take the supervisor (and so
        the restarts) down with it."""
        with contextlib.suppress(OSError, ValueError):
            print(line, file=self.out, flush=True)

    def _supervise(self) -> int:
        while True:
            self._poll(self._until_restart())
            for sig in self._take_signals():
                if sig in (signal.SIGTERM, signal.SIGINT):
                    self._say("albatross: stopping")
                    self._stop_all()
                    self._drain()
                    return 0 if all(s == 0 for s in self.statuses.values()) else 1
                if sig == signal.SIGHUP:
                    self._send_all(signal.SIGHUP)
            for pid, status in self._reap():
                child = self._child(pid)
                if child is None:
                    continue
                child.pid = 0
                self._close_pipe(child)
                self._schedule_restart(child, pid, status)
            self._restart_due()

    def _until_restart(self) -> float | None:
        """Seconds until the next restart is due, None when none is."""
        due = [c.restart_at for c in self.children if c.restart_at is not None]
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _restart_due(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is not None and child.restart_at <= now:
                child.restart_at = None
                self._spawn(child)
                self._report(f"worker {child.shard} restarted (pid {child.pid})",
                             error=False)

    def _schedule_restart(self, child: _Child, pid: int, status: int) -> None:
        lived = time.monotonic() - child.started
        child.failures = 0 if lived >= STABLE_AFTER else child.failures + 1
        delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** max(0, child.failures - 1))
        child.restart_at = time.monotonic() + delay
        self._report(f"worker {child.shard} (pid {pid}) died ({_describe(status)}); "
                     f"restarting in {delay:g}s", worker=child.shard, pid=pid,
                     status=_describe(status), restart_in=delay)

    # -- children -----------------------------------------------------------------------

    def _spawn(self, child: _Child) -> None:
        read, write = os.pipe()
        for stream in (sys.stdout, sys.stderr, self.out):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()  # or the child would print our buffered output again
        pid = os.fork()
        if pid == 0:  # the worker
            code = 70
            try:
                os.close(read)
                self._become_worker()
                code = self.worker(child.shard, write)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                with contextlib.suppress(OSError, ValueError):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        os.close(write)
        os.set_blocking(read, False)
        child.pid, child.pipe, child.buffer = pid, read, b""
        child.ready, child.lines, child.started = False, [], time.monotonic()

    def _become_worker(self) -> None:
        """Undo what the supervisor set up: its signal handling, its descriptors. Ask for
        SIGTERM if the supervisor dies (kill -9), so no worker outlives it holding its
        shard's lock and the port."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        _die_with_parent(self._parent)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        for other in self.children:
            if other.pipe >= 0:
                with contextlib.suppress(OSError):
                    os.close(other.pipe)
                other.pipe = -1
        for sock in self.keep:
            sock.close()
        if self.log is not None:
            self.log.close()  # the worker opens its own
            self.log = None

    def _child(self, pid: int) -> _Child | None:
        return next((c for c in self.children if c.pid == pid), None)

    def _reap(self) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # no child left: none we did not reap can still run
                reaped = {pid for pid, _status in out}
                for child in self.children:
                    if child.pid not in reaped:
                        child.pid = 0
                break
            if pid == 0:
                break
            out.append((pid, status))
        return out

    def _send_all(self, sig: int) -> None:
        for child in self.children:
            if child.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, sig)

    def _stop_all(self) -> None:
        self.stopping = True
        for child in self.children:
            child.restart_at = None
        self._send_all(signal.SIGTERM)

    def _drain(self) -> None:
        """Wait for every child to exit (after _stop_all); kill those that take too long."""
        deadline = time.monotonic() + self.grace + KILL_AFTER
        while any(c.pid for c in self.children):
            for pid, status in self._reap():
                child = self._child(pid)
                if child is not None:
                    child.pid = 0
                    self.statuses[child.shard] = status
            if not any(c.pid for c in self.children):
                break
            if time.monotonic() > deadline:
                self._send_all(signal.SIGKILL)
                deadline = time.monotonic() + KILL_AFTER
            self._poll(0.2)
            self._take_signals()

    # -- waiting --------------------------------------------------------------------------

    def _poll(self, timeout: float | None) -> None:
        """Sleep until a signal, worker output, or `timeout`; read what the workers said."""
        pipes = [c.pipe for c in self.children if c.pipe >= 0]
        if self.stopping and timeout is None:
            timeout = 1.0  # a worker that ignores SIGTERM is killed by _drain's clock
        try:
            readable, _, _ = select.select([self._wake_r, *pipes], [], [], timeout)
        except InterruptedError:
            return
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 512):
                    pass
        for child in self.children:
            if child.pipe >= 0 and child.pipe in readable:
                self._read(child)

    def _read(self, child: _Child) -> None:
        try:
            data = os.read(child.pipe, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_pipe(child)
            return
        if child.ready:
            return  # later lines ("stopping") are the supervisor's to print, once
        child.buffer += data
        while b"\n" in child.buffer:
            line, _, child.buffer = child.buffer.partition(b"\n")
            text = line.decode("utf-8", "replace")
            child.lines.append(text)
            if text.startswith("albatross: data in"):  # App.start's last line
                child.ready = True

    def _close_pipe(self, child: _Child) -> None:
        if child.pipe >= 0:
            with contextlib.suppress(OSError):
                os.close(child.pipe)
            child.pipe = -1

    def _take_signals(self) -> list[int]:
        taken, self._signals = self._signals, []
        return taken

    def _report(self, text: str, *, error: bool = True, **fields: object) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(f"albatross: {text}", file=sys.stderr, flush=True)
        if error and self.log is not None:
            with contextlib.suppress(OSError, ValueError):
                self.log.event("error", where="supervisor", error=text, **fields)
                self.log.flush()


def _die_with_parent(parent: int) -> None:
    """Linux: SIGTERM this process when its parent exits (prctl PR_SET_PDEATHSIG);
    elsewhere nothing. If the parent is already gone, terminate now."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        try:
            name = signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            name = str(os.WTERMSIG(status))
        return f"killed by {name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
