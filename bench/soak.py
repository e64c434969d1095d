"""`make soak`: a bounded soak on loopback: ~10,000 mixed requests at concurrency 64 against a fresh
service, 5 % of them bad inputs (lone surrogates, oversized bodies, malformed JSON, blank text), from two API
keys: a steady one that never has more requests in flight than its quota, and a greedy one with more senders
than its (lower) quota. Reports statuses per key, lost requests (must be 0), unexpected answers (a bad input
not given its 4xx, a good one not given 200, a 429 for the steady key; must be 0; the greedy key may get 429),
readiness checked throughout, p99 latency and resident-memory growth between the first and the last thousand
requests (target under 10 %)."""

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

from bench.harness import REPO, ServerProcess
from bench.inputs import inputs
from bench.load import percentiles
from service.quota import fingerprint
from service.settings import Settings

KEYS = {"steady": "soak-steady-key-0123456789", "greedy": "soak-greedy-key-0123456789"}

# (name, raw JSON body for /classify/attack, the status it must get)
BAD_INPUTS = [
    ("surrogate", b'{"text": "the actor \\ud800 used mimikatz"}', 422),
    # just over the service's default body limit (64 texts of the maximum length, in UTF-8)
    ("oversized", b'{"text": "' + b"a" * (Settings().body_limit_bytes + 1) + b'"}', 413),
    ("malformed", b'{"text": "unterminated', 422),
    ("blank", b'{"text": "   "}', 422),
]


async def soak(
    svc: ServerProcess,
    cves: list[str],
    texts: list[str],
    n: int,
    concurrency: int,
    cvss_share: float,
    bad_share: float,
    steady_senders: int,
) -> dict:
    rng = random.Random(7)
    steady_share = steady_senders / concurrency
    plan = []
    for _ in range(n):
        key = "steady" if rng.random() < steady_share else "greedy"
        u = rng.random()
        if u < bad_share:
            plan.append((key, "bad", rng.randrange(len(BAD_INPUTS))))
        elif u < bad_share + cvss_share:
            plan.append((key, "cvss", rng.choice(cves)))
        else:
            plan.append((key, "attack", rng.choice(texts)))
    statuses: Counter[str] = Counter()
    by_key: dict[str, Counter[str]] = {k: Counter() for k in KEYS}
    unexpected: Counter[str] = Counter()
    failures: Counter[str] = Counter()  # no answer at all: which key, input and error
    not_ready = 0
    lat: list[float] = []
    answered = 0
    rss: dict[int, int] = {}
    # each key's senders: the steady key never has more requests in flight than its quota
    sems = {"steady": asyncio.Semaphore(steady_senders), "greedy": asyncio.Semaphore(concurrency - steady_senders)}
    async with httpx.AsyncClient(base_url=svc.url, timeout=300, limits=httpx.Limits(max_connections=concurrency)) as c:

        async def one(i: int, key: str, kind: str, item) -> None:
            nonlocal answered, not_ready
            headers = {"authorization": f"Bearer {KEYS[key]}"}
            async with sems[key]:
                t = time.perf_counter()
                try:
                    if kind == "cvss":
                        r = await c.post("/classify/cvss", json={"description": item}, headers=headers)
                    elif kind == "attack":
                        r = await c.post("/classify/attack", json={"text": item, "top_k": 5}, headers=headers)
                    else:
                        name, body, _ = BAD_INPUTS[item]
                        headers["content-type"] = "application/json"
                        r = await c.post("/classify/attack", content=body, headers=headers)
                    statuses[str(r.status_code)] += 1
                    by_key[key][str(r.status_code)] += 1
                    want = {BAD_INPUTS[item][2] if kind == "bad" else 200} | ({429} if key == "greedy" else set())
                    if r.status_code not in want:
                        unexpected[f"{key}:{BAD_INPUTS[item][0] if kind == 'bad' else kind}:{r.status_code}"] += 1
                    answered += 1
                except httpx.HTTPError as e:
                    statuses[type(e).__name__] += 1
                    failures[f"{key}:{BAD_INPUTS[item][0] if kind == 'bad' else kind}:{type(e).__name__}"] += 1
                lat.append(time.perf_counter() - t)
                if i % 250 == 0:
                    rss[i] = svc.rss()
                if i % 50 == 0 and (await c.get("/readyz")).status_code != 200:
                    not_ready += 1

        start = time.perf_counter()
        await asyncio.gather(*(one(i, key, kind, item) for i, (key, kind, item) in enumerate(plan)))
        wall = time.perf_counter() - start
    first = [v for i, v in rss.items() if i < 1000]
    last = [v for i, v in rss.items() if i >= n - 1000]
    growth = (sum(last) / len(last)) / (sum(first) / len(first)) - 1 if first and last else float("nan")
    return {
        "requests": n,
        "concurrency": concurrency,
        "cvss_share": cvss_share,
        "bad_share": bad_share,
        "bad_inputs": {name: status for name, _, status in BAD_INPUTS},
        "wall_s": wall,
        "requests_per_s": n / wall,
        "statuses": dict(statuses),
        "statuses_by_key": {k: dict(v) for k, v in by_key.items()},
        "quota_429": {k: v["429"] for k, v in by_key.items()},
        "lost": n - answered,
        "lost_by_cause": dict(failures),
        "unexpected": dict(unexpected),
        "server_errors_5xx": sum(v for k, v in statuses.items() if k.startswith("5")),
        "readiness_checks_failed": not_ready,
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
    ap.add_argument("--bad-share", type=float, default=0.05, help="share of bad inputs (each must get its 4xx)")
    ap.add_argument("--steady-senders", type=int, default=16, help="the steady key's senders (its quota)")
    ap.add_argument("--greedy-limit", type=int, default=4, help="the greedy key's quota (fewer than its senders)")
    ap.add_argument("--port", type=int, default=8078)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak.json")
    args = ap.parse_args()
    if not 0 < args.steady_senders < args.concurrency:
        ap.error("--steady-senders must leave the greedy key some of --concurrency")
    examples, texts = inputs(args.data_dir, 120)
    cves = [e.description for e in examples]
    env = {
        "SECCLF_API_KEYS": ",".join(KEYS.values()),
        "SECCLF_KEY_MAX_CONCURRENCY": str(args.steady_senders),
        "SECCLF_KEY_CONCURRENCY_OVERRIDES": json.dumps({fingerprint(KEYS["greedy"]): args.greedy_limit}),
    }
    svc = ServerProcess.service(port=args.port, env=env)
    try:
        svc.wait_ready()
        result = asyncio.run(
            soak(
                svc,
                cves,
                texts,
                args.requests,
                args.concurrency,
                args.cvss_share,
                args.bad_share,
                args.steady_senders,
            )
        )
    finally:
        svc.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    ok = result["lost"] == 0 and not result["unexpected"] and result["readiness_checks_failed"] == 0
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
