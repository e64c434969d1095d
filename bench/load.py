"""Bounded load against loopback: N requests at a fixed concurrency, per-request latencies."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any


def percentiles(xs: Sequence[float]) -> dict[str, float]:
    s = sorted(xs)
    if not s:
        return {}

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]

    return {"p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "mean": statistics.fmean(s)}


async def run_concurrent(call: Callable[[Any], Awaitable[Any]], items: Sequence[Any], concurrency: int) -> dict:
    """Run `call(item)` for every item with at most `concurrency` in flight; items/s and latencies."""
    sem = asyncio.Semaphore(concurrency)
    lat: list[float] = []
    errors = 0

    async def one(item):
        nonlocal errors
        async with sem:
            t = time.perf_counter()
            try:
                await call(item)
            except Exception:
                errors += 1
            lat.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in items))
    wall = time.perf_counter() - start
    return {
        "n": len(items),
        "concurrency": concurrency,
        "wall_s": wall,
        "items_per_s": len(items) / wall,
        "errors": errors,
        **percentiles(lat),
    }
