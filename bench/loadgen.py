"""A small load generator on asyncio clients (perf_analyzer has no wheel that installs here): closed loop at a set
concurrency or open loop at a set rate, latencies in a log-bucketed (HDR-style) histogram, failures by error type.
Every loop is bounded in requests and in time."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Call = Callable[[int], Awaitable[object]]  # the i-th request


class Histogram:
    """Latencies in buckets 1% wide from 1 µs up (HDR-style: quantiles within 1%, memory bounded by the range)."""

    GROWTH = 1.01
    FLOOR = 1e-6

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()
        self.count = 0
        self.total = 0.0

    def record(self, seconds: float) -> None:
        self.buckets[max(0, math.ceil(math.log(max(seconds, self.FLOOR) / self.FLOOR, self.GROWTH)))] += 1
        self.count += 1
        self.total += seconds

    def quantile(self, q: float) -> float:
        """The latency (seconds, bucket upper bound) below which a fraction `q` of the records fall."""
        if not self.count:
            return math.nan
        rank, seen = q * self.count, 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                return self.FLOOR * self.GROWTH ** bucket
        return math.nan


@dataclass
class LoadResult:
    """What one load run sent, what succeeded, how fast, and which errors the callers saw."""

    seconds: float = 0.0
    sent: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latency: Histogram = field(default_factory=Histogram)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def summary(self) -> dict:
        return {"seconds": round(self.seconds, 2), "sent": self.sent, "ok": self.ok, "failed": self.failed,
                "errors": dict(self.errors), "throughput_qps": round(self.ok / self.seconds, 1) if self.seconds else 0,
                "p50_ms": round(1000 * self.latency.quantile(0.5), 2),
                "p99_ms": round(1000 * self.latency.quantile(0.99), 2)}


async def _one(call: Call, i: int, result: LoadResult) -> None:
    result.sent += 1
    started = time.perf_counter()
    try:
        await call(i)
    except Exception as exc:  # noqa: BLE001 - counted by type: a load run reports failures, it does not stop
        result.errors[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
        return
    result.latency.record(time.perf_counter() - started)
    result.ok += 1


async def closed_loop(call: Call, concurrency: int, seconds: float, max_requests: int = 10**7,
                      until: Callable[[], bool] | None = None) -> LoadResult:
    """`concurrency` callers, each sending its next request when the last one answered, for `seconds`, and past them
    until `until()` is true when given (a load that must outlast some other work)."""
    result, counter = LoadResult(), iter(range(max_requests))
    deadline = time.monotonic() + seconds

    async def caller() -> None:
        for i in counter:
            if time.monotonic() >= deadline and (until is None or until()):
                return
            await _one(call, i, result)

    started = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    result.seconds = time.monotonic() - started
    return result


async def open_loop(call: Call, rate: float, seconds: float) -> LoadResult:
    """Requests started at `rate` per second for `seconds`, whether or not earlier ones answered."""
    result, tasks = LoadResult(), []
    started = time.monotonic()
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
        tasks.append(asyncio.create_task(_one(call, i, result)))
    await asyncio.gather(*tasks)
    result.seconds = time.monotonic() - started
    return result
