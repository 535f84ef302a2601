"""Tests of the benchmark harness itself, with real processes: the stand-in server, a private
Postfix, smtp-source, and cgroups. Run with:

    cd /work/main && python3 -m pytest -q bench/test_bench.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import accept  # noqa: E402 - the bench dir is not a package
import idle  # noqa: E402
from harness import Cgroup, CpuMeter, run_all_cleanups, start, stop_process  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("smtp-source") is None or shutil.which("postfix") is None or os.geteuid() != 0,
    reason="needs root, postfix and smtp-source",
)

# A server that acknowledges every message and stores none: the benchmark must say so.
LOSSY = (
    "import sys; sys.path.insert(0, {bench!r}); import standin; "
    "standin.Writer.submit = lambda self, s, r, b: "
    "(f := self.loop.create_future(), f.set_result(0))[0]; "
    "sys.argv = ['standin', *sys.argv[1:]]; standin.main()"
)


def _cgroups_of_this_process() -> list[str]:
    root = Path("/sys/fs/cgroup/unified")
    if not root.exists():
        root = Path("/sys/fs/cgroup")
    return [p.name for p in root.glob(f"albatross-bench-{os.getpid()}-*")]


def _run_accept(tmp_path: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "out.json"
    # Not under tmp_path: pytest makes that mode 0700, and Postfix daemons must reach it.
    work = Path(tempfile.mkdtemp(prefix="bench-test-"))
    work.chmod(0o755)
    rc = accept.main(["--messages", "150", "--sessions", "5", "--tmpdir", str(work),
                      "--json", str(out), *extra])
    assert list(work.iterdir()) == [], "temp dirs left behind"
    work.rmdir()
    assert _cgroups_of_this_process() == [], "cgroups left behind"
    return rc, json.loads(out.read_text())


def _rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    levels = report["levels"]
    assert isinstance(levels, list)
    return {r["system"]: r for r in levels[0]["results"]}


def test_standin_and_postfix_hold_count_every_message(tmp_path: Path) -> None:
    rc, report = _run_accept(tmp_path, "--standin", "--postfix-modes", "hold")
    rows = _rows(report)
    assert rc == 0
    for name in ("standin", "postfix-hold"):
        r = rows[name]
        assert r["stored"] == 150 and r["count_ok"] and r["error"] is None
        assert r["accepted_per_s"] > 0 and r["cpu_ms"] > 0
        # The cgroup and /proc-tree figures measure the same processes.
        assert abs(r["cpu_ms"] - r["cpu_ms_crosscheck"]) <= 0.2 * r["cpu_ms"] + 20
    levels = report["levels"]
    assert isinstance(levels, list)
    assert set(levels[0]["ratios"]) == {"standin/postfix-hold"}


def test_postfix_relay_and_defer_settle(tmp_path: Path) -> None:
    rc, report = _run_accept(tmp_path, "--no-albatross", "--postfix-modes", "relay,defer")
    rows = _rows(report)
    assert rc == 0
    assert rows["postfix-relay"]["stored"] == 150  # status=sent lines in its mail log
    assert rows["postfix-defer"]["stored"] == 150  # files in its deferred queue
    for r in rows.values():
        assert r["settled_per_s"] is not None and r["settled_wall_s"] >= r["accept_wall_s"]


def test_server_that_loses_mail_is_reported(tmp_path: Path) -> None:
    cmd = f"{sys.executable} -c {LOSSY.format(bench=str(BENCH))!r}"
    rc, report = _run_accept(tmp_path, "--albatross-cmd", cmd, "--postfix-modes", "")
    r = _rows(report)["albatross"]
    assert rc == 1
    assert r["stored"] == 0 and not r["count_ok"]
    assert "holds 0 messages, 150 were sent" in str(r["error"])


def test_server_that_does_not_start_is_reported(tmp_path: Path) -> None:
    cmd = f"{sys.executable} -c 'import sys; sys.exit(3)'"
    rc, report = _run_accept(tmp_path, "--albatross-cmd", cmd, "--postfix-modes", "")
    assert rc == 1
    assert "exited with 3" in str(_rows(report)["albatross"]["error"])


@pytest.mark.parametrize("extra", [[], ["--source-ips", "4"]])
def test_idle_sessions_stay_open(tmp_path: Path, extra: list[str]) -> None:
    out = tmp_path / "idle.json"
    rc = idle.main(["--standin", "--sessions", "300", "--settle", "0.3", "--hold", "0",
                    "--tmpdir", str(tmp_path), "--json", str(out), *extra])
    result = json.loads(out.read_text())["result"]
    assert rc == 0
    assert result["sessions_open"] == result["sessions_alive_at_measure"] == 300
    assert result["rss_mb_open"] >= result["rss_mb_before"] > 0
    assert [p for p in tmp_path.iterdir() if p != out] == []


def test_cgroup_and_proc_tree_agree_on_short_lived_children(tmp_path: Path) -> None:
    # Many children that each burn a few ms and exit: the case where tick-truncated /proc
    # times undercount and the cgroup does not.
    cg = Cgroup.create("selftest")
    if cg is None:
        pytest.skip("cgroup v2 not writable here")
    script = ("import subprocess, sys\n"
              "for _ in range(30):\n"
              "    subprocess.run([sys.executable, '-c', 'sum(range(200000))'])\n"
              "import time; time.sleep(30)\n")
    proc = start([sys.executable, "-c", script], log=tmp_path / "log", cgroup=cg)
    try:
        meter = CpuMeter(cg, proc.pid)
        before = meter.sample()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
            if not out.stdout.strip() and meter.sample().usec - before.usec > 100_000:
                break
            time.sleep(0.2)
        after = meter.sample()
        cg_ms = (after.usec - before.usec) / 1000
        tree_ms = (after.tree_usec - before.tree_usec) / 1000
        assert cg_ms > 100
        assert abs(cg_ms - tree_ms) <= 0.15 * cg_ms + 20
    finally:
        stop_process(proc)
        run_all_cleanups()
    assert not cg.path.exists()
