"""The reliability suite at its smallest size: every malformed request leaves the server healthy, no ProstClient call
fails through a killed or stuck stub, a killed server, a publish, a two-stage gallery swap or an encoder swap under
load, and TLS and the keys refuse and serve as they should. The full suite (`make reliability`) runs minutes per case."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_reliability_smoke(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "reliability.py"), "--smoke", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    verdict = report["verdict"]
    assert verdict["malformed_kinds"] >= 30 and verdict["unhealthy_after_malformed"] == 0
    assert verdict["failed_calls_under_faults"] == 0 and verdict["failed_calls_under_load"] == 0, verdict
    assert verdict["access_as_expected"], report["access"]
    assert all(row["sent"] > 0 and row["during"]["recovery_s"] > 0 for row in report["faults"])
    assert len(report["faults"]) == 5 and "| malformed requests |" in (tmp_path / "report.md").read_text()
    assert report["rebuild_under_load"]["sent"] > 0 and report["rebuild_under_load"]["during"]["swap_s"] > 0
    swap = report["two_stage_swap_under_load"]
    assert swap["sent"] > 0 and swap["during"]["two_stage"] and swap["seconds"] > sum(
        swap["during"][k] for k in ("build_s", "swap_s"))  # the load outlasted the build and the swap
