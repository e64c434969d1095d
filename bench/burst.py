"""A burst of maximum-size requests against the real service, as the abuse review sent it: 32 CVSS and 32
ATT&CK requests at once, each 64 texts of 15,500 characters, with `/healthz` polled every 50 ms throughout.

What it records (bench/results/<machine>-<date>-burst.json): each request's status and seconds, whether every
admitted one (200) finished within the deadline, how fast refusals (503) came back, other statuses, and
the worst `/healthz` latency. `python -m bench.burst`; about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
from datetime import date
from pathlib import Path

import httpx

from bench.harness import REPO, ServerProcess, machine

KEYS = ("burst-key-a-0123456789", "burst-key-b-0123456789")
TEXT_CHARS = 15_500
SENTENCE = (
    "The attackers exploited a buffer overflow in the VPN appliance, dropped a web shell, harvested credentials "
    "with Mimikatz and moved laterally over SMB before exfiltrating archives to a cloud storage account. "
)


def _texts(seed: int) -> list[str]:
    base = (SENTENCE * (TEXT_CHARS // len(SENTENCE) + 1))[:TEXT_CHARS]
    return [f"{seed}-{i} {base}"[:TEXT_CHARS] for i in range(64)]


def probe_healthz(url: str, stop, out) -> None:
    """`/healthz` every 50 ms until `stop` is set; the latencies go to `out`. Runs in a process of its own:
    in the client's event loop it would also time the client's own encoding of 64 MB of request bodies."""
    probes = []
    with httpx.Client(base_url=url, timeout=30) as p:
        while not stop.is_set():
            t = time.perf_counter()
            r = p.get("/healthz")
            probes.append(time.perf_counter() - t if r.status_code == 200 else float("inf"))
            time.sleep(0.05)
    out.put(probes)


async def burst(url: str, per_route: int, deadline_s: float) -> dict:
    ctx = multiprocessing.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    prober = ctx.Process(target=probe_healthz, args=(url, stop, out), daemon=True)
    prober.start()
    limits = httpx.Limits(max_connections=4 * per_route + 8)
    async with httpx.AsyncClient(base_url=url, timeout=deadline_s + 60, limits=limits) as c:

        async def one(route: str, i: int) -> dict:
            body = {"descriptions": _texts(i)} if route == "/classify/cvss" else {"texts": _texts(i)}
            headers = {"authorization": f"Bearer {KEYS[i % 2]}"}
            t = time.perf_counter()
            r = await c.post(route, json=body, headers=headers)
            return {
                "route": route,
                "status": r.status_code,
                "seconds": round(time.perf_counter() - t, 3),
                "retry_after": r.headers.get("retry-after"),
            }

        await asyncio.sleep(2.0)  # the prober is up (a spawned interpreter) before the burst
        calls = [one(route, i) for i in range(per_route) for route in ("/classify/cvss", "/classify/attack")]
        answers = await asyncio.gather(*calls)
    stop.set()
    probes = out.get(timeout=60)
    prober.join(30)
    ok = [a for a in answers if a["status"] == 200]
    refused = [a for a in answers if a["status"] in (429, 503)]  # over the key's quota, or the server's capacity
    return {
        "requests": len(answers),
        "statuses": {str(s): sum(a["status"] == s for a in answers) for s in sorted({a["status"] for a in answers})},
        "admitted_max_s": max((a["seconds"] for a in ok), default=None),
        "admitted_within_deadline": all(a["seconds"] <= deadline_s for a in ok),
        "refused_max_s": max((a["seconds"] for a in refused), default=None),
        "refused_retry_after": sorted({a["retry_after"] for a in refused}),
        "healthz_max_s": round(max(probes), 4),
        "healthz_p50_s": round(sorted(probes)[len(probes) // 2], 4),
        "healthz_probes": len(probes),
        "answers": answers,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-route", type=int, default=32)
    ap.add_argument("--port", type=int, default=8079)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    svc = ServerProcess.service(port=args.port, env={"SECCLF_API_KEYS": ",".join(KEYS)})
    try:
        cold = svc.wait_ready()
        from service.settings import Settings

        deadline = Settings().request_timeout_s
        result = asyncio.run(burst(svc.url, args.per_route, deadline))
    finally:
        svc.stop()
    r = {"machine": machine(), "date": date.today().isoformat(), "cold_start_s": round(cold, 1), "burst": result}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{r['machine']}-{r['date']}-burst.json"
    path.write_text(json.dumps(r, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "answers"}, indent=2))


if __name__ == "__main__":
    main()
