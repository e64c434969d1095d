"""`make soak`: a bounded soak on loopback: ~10,000 mixed requests at concurrency 64 against a fresh
service; reports errors by status, lost requests (must be 0), p99 latency and resident-memory growth
between the first and the last thousand requests (target under 10 %)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.load import percentiles
from bench.run import REPO, Service, inputs


async def soak(svc: Service, cves: list[str], texts: list[str], n: int, concurrency: int, cvss_share: float) -> dict:
    rng = random.Random(7)
    plan = [
        ("cvss", rng.choice(cves)) if rng.random() < cvss_share else ("attack", rng.choice(texts)) for _ in range(n)
    ]
    statuses: Counter[str] = Counter()
    lat: list[float] = []
    answered = 0
    rss: dict[int, int] = {}
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=svc.url, timeout=300, limits=httpx.Limits(max_connections=concurrency)) as c:

        async def one(i: int, kind: str, text: str) -> None:
            nonlocal answered
            async with sem:
                t = time.perf_counter()
                try:
                    if kind == "cvss":
                        r = await c.post("/classify/cvss", json={"description": text})
                    else:
                        r = await c.post("/classify/attack", json={"text": text, "top_k": 5})
                    statuses[str(r.status_code)] += 1
                    answered += 1
                except httpx.HTTPError as e:
                    statuses[type(e).__name__] += 1
                lat.append(time.perf_counter() - t)
                if i % 250 == 0:
                    rss[i] = svc.rss()

        start = time.perf_counter()
        await asyncio.gather(*(one(i, k, t) for i, (k, t) in enumerate(plan)))
        wall = time.perf_counter() - start
    first = [v for i, v in rss.items() if i < 1000]
    last = [v for i, v in rss.items() if i >= n - 1000]
    growth = (sum(last) / len(last)) / (sum(first) / len(first)) - 1 if first and last else float("nan")
    return {
        "requests": n,
        "concurrency": concurrency,
        "cvss_share": cvss_share,
        "wall_s": wall,
        "requests_per_s": n / wall,
        "statuses": dict(statuses),
        "lost": n - answered,
        "latency": percentiles(lat),
        "rss_first_1000_mb": sum(first) / len(first) / 2**20 if first else None,
        "rss_last_1000_mb": sum(last) / len(last) / 2**20 if last else None,
        "rss_growth": growth,
        "peak_rss_mb": svc.peak_rss / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("DATA_DIR", REPO.parent / "shared" / "data")))
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--cvss-share", type=float, default=0.2)
    ap.add_argument("--port", type=int, default=8078)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak.json")
    args = ap.parse_args()
    examples, texts = inputs(args.data_dir, 120)
    cves = [e.description for e in examples]
    svc = Service(args.port)
    try:
        svc.wait_ready()
        result = asyncio.run(soak(svc, cves, texts, args.requests, args.concurrency, args.cvss_share))
    finally:
        svc.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    raise SystemExit(0 if result["lost"] == 0 else 1)


if __name__ == "__main__":
    main()
