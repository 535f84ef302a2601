"""A test of bench/dkim_sign.py with a tiny load: it runs, checks its signers, writes its JSON.

    cd /work/main && python3 -m pytest -q bench/test_dkim_sign.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def test_dkim_sign_bench_tiny(tmp_path: Path) -> None:
    out = tmp_path / "dkim.json"
    env = dict(os.environ, PYTHONPATH=str(BENCH.parent / "src"))
    done = subprocess.run([sys.executable, str(BENCH / "dkim_sign.py"), "--count", "20",
                           "--json", str(out)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report == json.loads(done.stdout)
    assert 5000 <= report["message_bytes"] <= 5120
    assert len(report["cpus_allowed"]) >= 1
    assert set(report["results"]) == {"albatross_rsa2048", "albatross_ed25519",
                                      "dkimpy_rsa2048", "dkimpy_ed25519"}
    for name, result in report["results"].items():
        assert result["count"] == (2 if name == "dkimpy_rsa2048" else 20)
        assert result["per_wall_second"] > 0 and result["wall_seconds"] > 0
    assert isinstance(report["target_met"], bool)


def test_dkim_sign_bench_rejects_bad_arguments() -> None:
    env = dict(os.environ, PYTHONPATH=str(BENCH.parent / "src"))
    done = subprocess.run([sys.executable, str(BENCH / "dkim_sign.py"), "--count", "0"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "--count" in done.stderr
