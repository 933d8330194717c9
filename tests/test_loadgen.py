"""The load generator's accounting: histogram quantiles within their 1% buckets, and both loops bounded in time,
counting every request sent as answered or failed by type."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from loadgen import Histogram, closed_loop, open_loop  # noqa: E402


def test_histogram_quantiles_are_within_one_bucket():
    histogram = Histogram()
    for ms in range(1, 1001):  # 1 ms .. 1 s, uniform
        histogram.record(ms / 1000)
    assert histogram.count == 1000
    for q, exact in ((0.5, 0.5), (0.99, 0.99), (1.0, 1.0)):
        assert exact <= histogram.quantile(q) <= exact * 1.011
    assert Histogram().quantile(0.5) != Histogram().quantile(0.5)  # nan without records


def test_both_loops_count_every_request_and_stop_in_time():
    async def call(i: int) -> None:
        await asyncio.sleep(0.002)
        if i % 5 == 0:
            raise ValueError("every fifth fails")

    closed = asyncio.run(closed_loop(call, concurrency=4, seconds=0.3))
    assert closed.sent == closed.ok + closed.failed and closed.ok > 0 and closed.seconds < 1.0
    assert set(closed.errors) == {"ValueError: every fifth fails"}
    opened = asyncio.run(open_loop(call, rate=200, seconds=0.25))
    assert opened.sent == 50 and opened.failed == 10 and opened.ok == 40
    assert opened.summary()["p50_ms"] >= 2.0


def test_a_closed_loop_outlasts_the_work_it_waits_for():
    """With `until`, the load runs past its seconds until the condition holds (the reliability suite's swap)."""
    async def call(i: int) -> None:
        await asyncio.sleep(0.002)

    async def run():
        done = []
        asyncio.get_running_loop().call_later(0.4, done.append, True)
        return await closed_loop(call, concurrency=2, seconds=0.1, until=lambda: bool(done))

    result = asyncio.run(run())
    assert result.seconds >= 0.4 and result.failed == 0
