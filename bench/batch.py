"""The batch command against the HTTP service, side by side in one run: the same CTI-VSP descriptions (800 by
default) as `run_batch` JSONL through `python -m service.batch`, and one per request to `/classify/cvss` at
concurrency 16. Rates exclude start-up on both sides (the service is warm; the batch command reports its own
start-up apart). Every line's vector must equal the service's.

`python -m bench.batch` runs it alone (bench/results/<machine>-<date>-batch.json); `make bench` includes it
(`--batch-n`, ratio `cvss_batch_command_vs_http_c16`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import httpx

from bench.harness import REPO, ServerProcess, machine
from bench.load import run_concurrent

HTTP_CONCURRENCY = 16


def descriptions(data_dir: Path, n: int) -> list[tuple[str, str]]:
    """(CVE id, description) of the first `n` CTI-VSP rows."""
    from training.data import load_cvss

    rows = load_cvss([data_dir / "cti-vsp" / "cti-vsp.tsv"])
    return [(e.cve_id, e.description) for e in rows[:n]]


async def http_vectors(url: str, items: list[tuple[str, str]]) -> tuple[dict[str, str], dict]:
    vectors: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:

        async def one(item):
            r = await c.post("/classify/cvss", json={"description": item[1]})
            r.raise_for_status()
            vectors[item[0]] = r.json()["vector"]

        await run_concurrent(one, items[:HTTP_CONCURRENCY], HTTP_CONCURRENCY)  # warm-up
        vectors.clear()
        stats = await run_concurrent(one, items, HTTP_CONCURRENCY)
    return vectors, stats


def batch_vectors(items: list[tuple[str, str]], workdir: Path) -> tuple[dict[str, str], dict]:
    src, out, summary = workdir / "in.jsonl", workdir / "out.jsonl", workdir / "summary.json"
    with src.open("w") as f:
        for cve_id, text in items:
            line = {"custom_id": cve_id, "method": "POST", "url": "/classify/cvss", "body": {"description": text}}
            f.write(json.dumps(line) + "\n")
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "service.batch", str(src), str(out), "--summary-json", str(summary), "--no-progress"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, env={**os.environ, "SECCLF_WARMUP": "true"})
    wall = time.perf_counter() - t0
    vectors = {}
    for raw in out.read_text().splitlines():
        line = json.loads(raw)
        assert line["response"]["status_code"] == 200, line
        vectors[line["custom_id"]] = line["response"]["body"]["vector"]
    run = json.loads(summary.read_text())["this_run"]
    return vectors, {**run, "items_per_s": run["requests_per_s"], "wall_s_with_startup": round(wall, 2)}


def compare(data_dir: Path, n: int, port: int) -> dict:
    items = descriptions(data_dir, n)
    svc = ServerProcess.service(port=port, env={"SECCLF_ATTACK_ARTIFACT": ""})  # CVSS only, as the batch
    try:
        svc.wait_ready()
        http, http_stats = asyncio.run(http_vectors(svc.url, items))
    finally:
        svc.stop()
    with tempfile.TemporaryDirectory() as tmp:
        batch, batch_stats = batch_vectors(items, Path(tmp))
    same = sum(batch.get(cve_id) == vector for cve_id, vector in http.items())
    return {
        "n": len(items),
        "http_c16": http_stats,
        "batch": batch_stats,
        "vectors_identical": same,
        "ratio_batch_vs_http_c16": batch_stats["items_per_s"] / http_stats["items_per_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("DATA_DIR", REPO.parent / "shared" / "data")))
    ap.add_argument("--n", type=int, default=800, help="CTI-VSP descriptions")
    ap.add_argument("--port", type=int, default=8078)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    r = {
        "machine": machine(),
        "date": date.today().isoformat(),
        "batch_vs_http": compare(args.data_dir, args.n, args.port),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{r['machine']}-{r['date']}-batch.json"
    path.write_text(json.dumps(r, indent=2) + "\n")
    print(json.dumps(r["batch_vs_http"], indent=2))


if __name__ == "__main__":
    main()
