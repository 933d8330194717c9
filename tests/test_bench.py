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


def test_scale_benchmark_smoke_writes_its_table_and_plot(tmp_path):
    """bench/scale.py --smoke: both settings at 300 videos, two-stage against exact, a table and a PNG."""
    out = tmp_path / "scale"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "scale.py"), "--smoke", "--out", str(out),
                             "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((out / "report.json").read_text())
    assert {r["setting"] for r in rows} == {"tiny", "vit-b-32"}
    for row in rows:
        assert row["recall@10"] >= 0.9  # 300 videos, 64+ candidates per source: nearly exhaustive
        assert row["p50_ms"] > 0 and row["peak_rss_gib"] > 0 and row["disk_bytes_per_video"] > 0
    assert any("t2v_r1_exact" in r for r in rows)
    assert (out / "recall_latency.png").stat().st_size > 10_000
    assert "| tiny | 300 |" in (out / "report.md").read_text()
