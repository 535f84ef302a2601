"""The `albatross` command line, run as a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, daemon_env


def albatross(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "albatross", *args], capture_output=True,
                          text=True, env=daemon_env(), cwd=cwd, timeout=60)


def test_config_check_accepts_the_example() -> None:
    out = albatross("config", "check", str(ROOT / "albatross.toml"))
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


def test_config_check_names_file_line_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('hostname = "mx.test"\n[smtp]\nmax_recipients = "many"\n'
                   'listen = ["127.0.0.1:99999"]\nmax_recipent = 3\n')
    out = albatross("config", "check", str(cfg))
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert any(line.startswith(f"{cfg}:3: smtp.max_recipients:") for line in lines), lines
    assert any(f"{cfg}:4: smtp.listen" in line for line in lines), lines
    assert any(f"{cfg}:5: smtp.max_recipent" in line and "max_recipients" in line
               for line in lines), lines
    assert "3 problem(s)" in out.stderr


def test_serve_refuses_a_bad_config_with_every_problem(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[smtp]\nmax_errors = 0\nbare_line_endings = \"maybe\"\n")
    out = albatross("serve", "--config", str(cfg))
    assert out.returncode == 78
    assert "smtp.max_errors" in out.stderr and "smtp.bare_line_endings" in out.stderr


def test_serve_reports_a_port_in_use(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = albatross("serve", "--data-dir", str(tmp_path / "d"), "--listen",
                        f"127.0.0.1:{port}")
    assert out.returncode == 71
    assert "cannot start" in out.stderr and str(port) in out.stderr


def test_no_command_prints_help() -> None:
    out = albatross()
    assert out.returncode == 64
    assert "serve" in out.stdout
