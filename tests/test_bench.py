"""The serving benchmark runs end to end at a small size, and its served answers agree with in-process search."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_search_benchmark_agrees_with_in_process_search(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "search.py"), "--videos", "64", "--queries", "8",
                             "--batch", "4", "--concurrency", "2", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["top1_agreement"] >= 0.75  # random scores can nearly tie; a broken path agrees on ~1 in 64
    for side in ("in_process", "served"):
        assert set(figures[side]) == {"p50_ms", "p95_ms", "batched_qps", "concurrent_qps"}
        assert all(value > 0 for value in figures[side].values())
    assert "served/in-process" in result.stdout
