"""The batch command against the HTTP service, side by side in one run: the same CTI-VSP descriptions (800 by
default) as `run_batch` JSONL through `python -m service.batch`, and one per request to `/classify/cvss` at
concurrency 16, in halves ordered A B B A. Rates exclude start-up on both sides (the service is warm; the batch
command reports its own start-up apart). Every line's vector must equal the service's.

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
from service.settings import get_settings

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


def batch_vectors(items: list[tuple[str, str]], workdir: Path, compile_mode: str) -> tuple[dict[str, str], dict]:
    src, out, summary = workdir / "in.jsonl", workdir / "out.jsonl", workdir / "summary.json"
    with src.open("w") as f:
        for cve_id, text in items:
            line = {"custom_id": cve_id, "method": "POST", "url": "/classify/cvss", "body": {"description": text}}
            f.write(json.dumps(line) + "\n")
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "service.batch", str(src), str(out), "--summary-json", str(summary), "--no-progress"]
    cmd += ["--compile", compile_mode]
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
    """Both sides on the same `n` descriptions, in halves run A B B A (HTTP on the first half, the batch command
    on the first then the second, HTTP on the second): run one after the other, the host's speed drifted by
    10-25 % over minutes, and a drift over the run now falls on both sides alike. The service stays up, idle,
    while the batch command runs. Each side's rate is its n descriptions over its summed run seconds."""
    from service.batch import compiles

    items = descriptions(data_dir, n)
    halves = (items[: len(items) // 2], items[len(items) // 2 :])
    # what a feed of n texts gets by default, though each run holds half of them
    compile_mode = "on" if compiles(get_settings().batch_compile, len(items)) else "off"
    http: dict[str, str] = {}
    batch: dict[str, str] = {}
    runs: dict[str, list[dict]] = {"http_c16": [], "batch": []}
    svc = ServerProcess.service(port=port, env={"SECCLF_ATTACK_ARTIFACT": ""})  # CVSS only, as the batch
    try:
        svc.wait_ready()
        for side, half in (("http_c16", 0), ("batch", 0), ("batch", 1), ("http_c16", 1)):
            if side == "http_c16":
                vectors, stats = asyncio.run(http_vectors(svc.url, halves[half]))
                http.update(vectors)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    vectors, stats = batch_vectors(halves[half], Path(tmp), compile_mode)
                batch.update(vectors)
            runs[side].append(stats)
    finally:
        svc.stop()
    seconds = {
        "http_c16": sum(r["wall_s"] for r in runs["http_c16"]),
        "batch": sum(r["run_s"] for r in runs["batch"]),
    }
    rate = {side: len(items) / seconds[side] for side in runs}
    same = sum(batch.get(cve_id) == vector for cve_id, vector in http.items())
    return {
        "n": len(items),
        "order": "A B B A: HTTP half 1, batch half 1, batch half 2, HTTP half 2",
        "http_c16": {"items_per_s": rate["http_c16"], "concurrency": HTTP_CONCURRENCY, "halves": runs["http_c16"]},
        "batch": {"items_per_s": rate["batch"], "engines": runs["batch"][0]["engines"], "halves": runs["batch"]},
        "vectors_identical": same,
        "ratio_batch_vs_http_c16": rate["batch"] / rate["http_c16"],
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
