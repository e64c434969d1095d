"""Cold start of `python -m service` with the committed defaults (folded checkpoints cached): seconds from the
process launch to `/readyz` 200, over several starts one after another, with the service's own breakdown of
each (`startup_seconds` from `GET /v1/models`: imports, engines, warm-up, capacity probe).

`python -m bench.cold_start [--starts 3]` writes bench/results/<machine>-<date>-cold-start.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import date
from pathlib import Path

import httpx

from bench.harness import REPO, ServerProcess, machine


def one_start(port: int) -> dict:
    svc = ServerProcess.service(port=port)
    try:
        ready = svc.wait_ready()
        steps = httpx.get(svc.url + "/v1/models", timeout=30).json().get("startup_seconds", {})
    finally:
        svc.stop()
    return {"ready_s": round(ready, 2), "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    starts = [one_start(args.port) for _ in range(args.starts)]
    r = {
        "machine": machine(),
        "date": date.today().isoformat(),
        "starts": starts,
        "median_ready_s": statistics.median(s["ready_s"] for s in starts),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{r['machine']}-{r['date']}-cold-start.json").write_text(json.dumps(r, indent=2) + "\n")
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
