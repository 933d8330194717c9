"""The serving benchmark runs end to end at a small size, and its served answers agree with in-process search."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

from prost.gallery import store as S
from prost.gallery.engine import bf16_unavailable

ROOT = Path(__file__).parents[1]


def test_search_benchmark_agrees_with_in_process_search(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "search.py"), "--videos", "64", "--queries", "8",
                             "--batch", "4", "--concurrency", "1,2", "--seconds", "1", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["top1_agreement"] >= 0.75  # random scores can nearly tie; a broken path agrees on ~1 in 64
    for side in ("in_process", "served"):
        assert set(figures[side]) == {"p50_ms", "p99_ms", "batched_qps", "qps_at_1", "qps_at_2"}
        assert all(value > 0 for value in figures[side].values())
    assert "served/in-process" in result.stdout


def test_scale_benchmark_smoke_writes_its_table_and_plot(tmp_path):
    """bench/scale.py --smoke: both settings at 300 videos, two-stage against exact, a table and a PNG; then the kept
    vit-b-32 version probed again (--reuse) twice (--repeats), its latencies the runs' medians."""
    out, scale = tmp_path / "scale", [sys.executable, str(ROOT / "bench" / "scale.py"), "--smoke"]
    result = subprocess.run([*scale, "--out", str(out), "--workdir", str(tmp_path / "work"), "--keep"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((out / "report.json").read_text())
    assert {r["setting"] for r in rows} == {"tiny", "vit-b-32"}
    for row in rows:
        assert row["recall@10"] >= 0.9  # 300 videos, 64+ candidates per source: nearly exhaustive
        assert row["p50_ms"] > 0 and row["peak_rss_gib"] > 0 and row["disk_bytes_per_video"] > 0
        assert row["build_s"] > 0 and row["p50_runs_ms"] == [row["p50_ms"]]
    assert any("t2v_r1_exact" in r for r in rows)
    assert (out / "recall_latency.png").stat().st_size > 10_000
    assert "| tiny | 300 |" in (out / "report.md").read_text()

    built = (tmp_path / "work" / "vit-b-32-300" / S.GALLERY_FILE).stat().st_mtime_ns
    result = subprocess.run([*scale, "--out", str(tmp_path / "again"), "--workdir", str(tmp_path / "work"),
                             "--settings", "vit-b-32", "--reuse", "--repeats", "2"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "work" / "vit-b-32-300" / S.GALLERY_FILE).stat().st_mtime_ns == built  # not rebuilt
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    first = [r for r in rows if r["setting"] == "vit-b-32"]
    assert [r["recall@10"] for r in again] == [r["recall@10"] for r in first]
    for row in again:
        assert row["build_s"] is None and len(row["p50_runs_ms"]) == 2
        assert row["p50_ms"] == statistics.median(row["p50_runs_ms"])


def test_make_bench_smoke_writes_report_targets_and_plots(tmp_path):
    """bench/report.py --smoke: every section at its smallest size, the targets judged, three plots."""
    out = tmp_path / "bench"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "report.py"), "--smoke", "--runs", "2", "--out",
                             str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert all(report["limits"]["gemm_gflops"][d] > 0 for d in ("fp32", "int8"))
    assert {r["backend"] for r in report["encoders"]} == {"pytorch eager fp32", "onnxruntime fp32", "onnxruntime int8"}
    assert all(r["int8_min_cosine"] >= 0.99 for r in report["encoders"] if r["backend"] == "onnxruntime int8")
    methods = {r["method"] for r in report["similarity"]}
    assert len(methods) == (5 if bf16_unavailable() is None else 4)  # the bf16 store needs torch's bf16 GEMM
    assert all(r["pairs_per_s"] > 0 for r in report["similarity"])
    assert all(r["max_abs_diff"] < (5e-3 if r["dtype"] == "bf16" else 1e-4) for r in report["similarity"])
    assert {t["target"].split(",")[0] for t in report["targets"]} >= {"served single-query p50 <= 1.2x in-process"}
    assert all(isinstance(t["met"], bool) and t["runs"] == 2 for t in report["targets"])
    assert len(report["runs"]) == 2
    for name in ("similarity.png", "encoders.png", "serving.png"):
        assert (out / name).stat().st_size > 10_000
    assert "| target | median | range | bound | met |" in (out / "report.md").read_text()
