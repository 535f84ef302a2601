"""Process lifetime and CPU accounting shared by the benchmarks in bench/.

Everything a benchmark starts is registered here so that it is stopped on every exit path:
normal return, an exception, SIGINT/SIGTERM, or interpreter exit (atexit). Each measured
server runs in its own cgroup v2 when the host lets us create one, because a cgroup's
``cpu.stat`` counts every process and thread that ever ran in it, including short-lived
Postfix daemons that come and go between two samples. Where cgroups are not writable the
fallback sums ``/proc`` times over a process tree (see ``TreeCpu``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Cleanup callbacks, run last-registered first, each at most once.
_cleanups: list[tuple[str, Callable[[], object]]] = []


def on_exit(label: str, fn: Callable[[], object]) -> Callable[[], None]:
    """Register fn to run at exit; returns a callable that runs it now (and only once)."""
    entry = (label, fn)
    _cleanups.append(entry)

    def run_now() -> None:
        if entry in _cleanups:
            _cleanups.remove(entry)
            _run_one(label, fn)

    return run_now


def _run_one(label: str, fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception as exc:  # cleanup must go on with the next entry
        print(f"cleanup {label}: {exc}", file=sys.stderr)


def run_all_cleanups() -> None:
    while _cleanups:
        label, fn = _cleanups.pop()
        _run_one(label, fn)


def _on_signal(signum: int, _frame: object) -> None:
    # Turn SIGTERM into an exception so that every try/finally on the stack runs.
    raise SystemExit(128 + signum)


atexit.register(run_all_cleanups)
signal.signal(signal.SIGTERM, _on_signal)
# Explicitly, because a shell starts background jobs with SIGINT ignored and Python keeps
# that; Ctrl-C or kill -INT must always stop the run and clean up.
signal.signal(signal.SIGINT, signal.default_int_handler)


def scratch_dir(prefix: str, base: str | None = None) -> Path:
    """A fresh temp dir (mode 0755 so unprivileged Postfix daemons can enter it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    path.chmod(0o755)
    on_exit(f"rm {path}", lambda: shutil.rmtree(path, ignore_errors=True))
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on 127.0.0.1:{port}") from None
            time.sleep(0.05)


# ---------------------------------------------------------------- CPU accounting


def _proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, own usec, reaped children's usec) of pid, or None if it is gone.

    utime+stime in /proc/PID/stat is truncated to whole clock ticks (10 ms), which loses
    most of the time of a short-lived Postfix daemon, so a live process's own time is the
    larger of that and the nanosecond sum_exec_runtime of its live threads (schedstat;
    it misses threads that already exited, the tick figure does not). Reaped children's
    time is summed in nanoseconds by the kernel and truncated once, so cutime+cstime is
    precise enough."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
        threads_ns = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                threads_ns += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    tick_us = 1_000_000 // CLK_TCK
    own = max((utime + stime) * tick_us, threads_ns // 1000)
    return ppid, own, (cutime + cstime) * tick_us


def _all_pids() -> Iterator[int]:
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def proc_tree(root: int) -> list[int]:
    """root and all its live descendants."""
    parents: dict[int, list[int]] = {}
    for pid in _all_pids():
        st = _proc_stat(pid)
        if st is not None:
            parents.setdefault(st[0], []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


class TreeCpu:
    """CPU of a process tree from /proc: root's own and reaped children's times, plus live
    descendants'. Two snapshots give an exact delta as long as every child is reaped inside
    the tree (true for Postfix's master and for a single Albatross process): a child alive at
    the first snapshot and reaped before the second moves from "live" into the parent's
    cutime/cstime with its earlier time included on both sides."""

    method = "proc-tree"

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid

    def usec(self) -> int:
        total = 0
        for pid in proc_tree(self.root_pid):
            st = _proc_stat(pid)
            if st is not None:
                total += st[1] + st[2]
        return total


def _cgroup2_root() -> Path | None:
    """Where this process's cgroup v2 directory is mounted, if there is a v2 hierarchy."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    mount = next((ln.split()[1] for ln in mounts if ln.split()[2] == "cgroup2"), None)
    if mount is None:
        return None
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    own = next((ln[3:] for ln in lines if ln.startswith("0::")), "/")
    return Path(mount) / own.lstrip("/")


class Cgroup:
    """A private cgroup v2 leaf. Processes started with ``preexec=cg.join`` and all their
    descendants are accounted in cpu.stat, and ``kill`` reaches all of them even after they
    daemonize (Postfix's master does)."""

    method = "cgroup-v2"
    _serial = 0

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, label: str) -> Cgroup | None:
        root = _cgroup2_root()
        if root is None:
            return None
        cls._serial += 1
        path = root / f"albatross-bench-{os.getpid()}-{cls._serial}-{label}"
        try:
            path.mkdir()
            (path / "cpu.stat").read_text()
        except OSError:
            return None
        cg = cls(path)
        on_exit(f"cgroup {path.name}", cg.destroy)
        return cg

    def join(self) -> None:
        """Move the calling process into this cgroup (use as Popen preexec_fn)."""
        with open(self.path / "cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def usec(self) -> int:
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, value = line.split()
            if key == "usage_usec":
                return int(value)
        raise RuntimeError(f"no usage_usec in {self.path}/cpu.stat")

    def kill(self) -> None:
        kill_file = self.path / "cgroup.kill"
        if kill_file.exists():
            kill_file.write_text("1")
        else:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def destroy(self) -> None:
        if not self.path.exists():
            return
        deadline = time.monotonic() + 5.0
        while self.pids() and time.monotonic() < deadline:
            self.kill()
            time.sleep(0.05)
        self.path.rmdir()


@dataclass(frozen=True)
class CpuSample:
    """One reading of a server's CPU: the primary method and the /proc cross-check."""

    usec: int
    tree_usec: int


class CpuMeter:
    """Reads a server's CPU with its cgroup when it has one, else from its /proc tree."""

    def __init__(self, cgroup: Cgroup | None, root_pid: int) -> None:
        self.cgroup = cgroup
        self.tree = TreeCpu(root_pid)
        self.method = cgroup.method if cgroup else TreeCpu.method

    def sample(self) -> CpuSample:
        tree = self.tree.usec()
        return CpuSample(self.cgroup.usec() if self.cgroup else tree, tree)


# ---------------------------------------------------------------- child processes


def start(
    argv: list[str],
    *,
    log: Path,
    cgroup: Cgroup | None = None,
    env: dict[str, str] | None = None,
    label: str = "",
) -> subprocess.Popen[bytes]:
    """Start argv in a new session with stdout+stderr appended to log; it is killed (its
    whole process group, and its cgroup) at exit unless stopped earlier."""
    logf = open(log, "ab")  # noqa: SIM115 - closed by the cleanup below
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=logf,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        preexec_fn=cgroup.join if cgroup else None,
    )

    def stop() -> None:
        try:
            stop_process(proc)
        finally:
            logf.close()

    on_exit(label or f"pid {proc.pid}", stop)
    return proc


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> int | None:
    """SIGTERM the process group, then SIGKILL it after grace seconds; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5.0)
    # Leftovers in the group (the leader exited but a child did not).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


def wait_for_line(proc: subprocess.Popen[bytes], log: Path, needle: str, timeout: float) -> None:
    """Wait until log contains needle; fail early if proc exits first."""
    deadline = time.monotonic() + timeout
    while needle not in log.read_text(errors="replace"):
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before saying {needle!r}:\n"
                               + tail(log))
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {needle!r} within {timeout}s:\n" + tail(log))
        time.sleep(0.05)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def rss_kib(pid: int) -> int:
    """VmRSS of pid in KiB (0 if the process has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# ---------------------------------------------------------------- Albatross


@dataclass(frozen=True)
class AlbatrossCommand:
    """How to start the server under test: argv prefix and environment."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]

    @classmethod
    def default(cls) -> AlbatrossCommand:
        return cls((sys.executable, "-m", "albatross"), (("PYTHONPATH", str(REPO / "src")),))

    @classmethod
    def standin(cls) -> AlbatrossCommand:
        return cls((sys.executable, str(REPO / "bench" / "standin.py")), ())

    def describe(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in self.env)
        return (env + " " if env else "") + " ".join(self.argv)


@dataclass
class Albatross:
    """A running Albatross (or stand-in) on a fresh data dir."""

    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log: Path
    cpu: CpuMeter
    stop: Callable[[], None]


def start_albatross(
    cmd: AlbatrossCommand, workdir: Path, *, config: Path | None = None, timeout: float = 30.0
) -> Albatross:
    data_dir = workdir / "data"
    data_dir.mkdir()
    port = free_port()
    log = workdir / "albatross.log"
    argv = [*cmd.argv, "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"]
    if config is None:
        # The acceptance benchmark measures receiving: queue without delivering, the same
        # work as Postfix's hold mode.
        config = workdir / "albatross.toml"
        # No reverse DNS at connect: Postfix runs with smtpd_peername_lookup = no.
        config.write_text("[queue]\ndeliver = false\n[policy]\nreverse_dns = false\n")
    argv += ["--config", str(config)]
    env = dict(os.environ)
    for key, value in cmd.env:
        env[key] = value + (os.pathsep + env[key] if key == "PYTHONPATH" and env.get(key) else "")
    cg = Cgroup.create("albatross")
    proc = start(argv, log=log, cgroup=cg, env=env, label="albatross")
    stop_now = on_exit("albatross", lambda: stop_process(proc))
    wait_for_line(proc, log, "listening", timeout)
    wait_port(port, timeout)
    return Albatross(proc, port, data_dir, log, CpuMeter(cg, proc.pid), stop_now)


def machine_facts() -> dict[str, object]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines()
                  if ln.startswith("model name")), "unknown")
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
    }
