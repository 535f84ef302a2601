"""Shared fixtures: a real Albatross daemon on a loopback port, and its queue."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    text = str(value)
    if text.isdigit():
        return text
    return '"' + text.strip('"').replace("\\", "\\\\").replace('"', '\\"') + '"'


def daemon_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    # Debug mode reports callbacks that block the loop; the stdlib loop does that best.
    env["PYTHONASYNCIODEBUG"] = "1"
    env["ALBATROSS_EVENT_LOOP"] = "asyncio"
    return env


@dataclass
class Daemon:
    """A real `albatross serve` process on 127.0.0.1."""

    data_dir: Path
    config: Path
    port: int
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    output: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=daemon_env)

    def start(self, timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "albatross", "serve", "--config", str(self.config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env,
            start_new_session=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode("utf-8", "replace")
            if not line:
                break
            self.output.append(line)
            if "listening on" in line:
                return
        self.kill()
        raise RuntimeError("daemon did not start:\n" + "".join(self.output))

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit status. Collects the rest of the output."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self.output.append(out.decode("utf-8", "replace"))
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def ids(self) -> list[str]:
        from albatross.spool import Spool

        return Spool(self.data_dir).ids()

    def load(self, qid: str) -> tuple[object, bytes]:
        from albatross.spool import Spool

        return Spool(self.data_dir).load(qid)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "log" / "mail.log"

    def slow_callbacks(self) -> list[str]:
        """asyncio debug-mode warnings about callbacks that blocked the loop."""
        return [line for line in "".join(self.output).splitlines()
                if "Executing" in line and "took" in line]


def make_daemon(base: Path, smtp: dict[str, object] | None = None, extra: str = "",
                deliver: bool = False) -> Daemon:
    """A daemon on a free port. Unless `deliver`, it only receives ([queue] deliver = false),
    so tests can look at what was stored."""
    port = free_port()
    data_dir = base / "data"
    cfg = base / "albatross.toml"
    lines = ['hostname = "mx.test"', f"data_dir = {toml_value(str(data_dir))}", "", "[smtp]",
             f'listen = ["127.0.0.1:{port}"]']
    for key, value in (smtp or {}).items():
        lines.append(f"{key} = {toml_value(value)}")
    if "[queue]" not in extra:
        extra += f"\n[queue]\ndeliver = {'true' if deliver else 'false'}\n"
    if "[local]" not in extra:
        # Tests send to any user at localhost; unknown users have their own test.
        extra += '\n[local]\ncatch_all = "postmaster"\n'
    if "[delivery]" not in extra:
        # Nothing may ask a DNS server off loopback (the machine's resolv.conf does).
        extra += '\n[delivery]\ndns = "127.0.0.53:53"\ndns_timeout = "2s"\n'
    if "[policy]" not in extra:
        # No reverse lookups at connect unless a test asks (test_access_e2e.py does, with
        # nsd): like Postfix's smtpd_peername_lookup = no in the benchmarks.
        extra += "\n[policy]\nreverse_dns = false\n"
    if "[msgauth]" not in extra:
        # No SPF/DKIM/DMARC checks of mail from untrusted addresses unless a test asks
        # (test_msgauth_e2e.py does, with nsd): they would wait on a DNS server not running.
        extra += "\n[msgauth]\nchecks = false\n"
    cfg.write_text("\n".join(lines) + "\n" + extra, "utf-8")
    return Daemon(data_dir=data_dir, config=cfg, port=port)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = make_daemon(tmp_path)
    d.start()
    try:
        yield d
    finally:
        d.stop()
        d.kill()
    output = "".join(d.output)
    assert "Traceback" not in output, output
    assert not d.slow_callbacks(), d.slow_callbacks()
