"""`make bench`: the service against what a user could run instead, as ratios measured side by side in one
run (written under `ratios` in the results JSON).

Every side runs in this run, on the same inputs (validation CVEs, held-out CTI-HAL excerpts), one server at a
time (nothing else holds the cores), warm-up excluded, medians over repeats. Servers run as their own
processes on loopback; this process is the load generator and runs the offline baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path

import httpx

from bench import baselines
from bench.harness import REPO, ServerProcess, machine
from bench.inputs import ATTACK_ART, CVSS_ART, FreshSlices, inputs, report_inputs, speed_cves
from bench.load import run_concurrent
from bench.report import plot, table

CONCURRENCY = (1, 8, 16, 32)
PAIRED_CVSS = (1, 16)  # CVSS concurrencies measured in the pairs with vLLM's server


def _median(runs: list[dict], key: str = "items_per_s") -> dict:
    return {**sorted(runs, key=lambda r: r[key])[len(runs) // 2], "repeats": [r[key] for r in runs]}


async def _measure(call, items, conc: int, repeats: int, server: ServerProcess | None = None) -> dict:
    """`items`: a list sent on every repeat, or `repeat -> list` (fresh inputs each repeat)."""
    runs = []
    for k in range(repeats):
        runs.append(await run_concurrent(call, items(k) if callable(items) else items, conc))
        if server is not None:
            server.rss()
    return _median(runs)


def _fresh(pool: list, slices: FreshSlices, conc: int, n: int, use: str = "cvss"):
    """`repeat -> list`: this measurement's own slice of `pool` per repeat (16 items at c=1)."""
    return lambda k: [pool[i] for i in slices((use, conc, k), 16 if conc == 1 else n)]


async def service_runs(
    svc: ServerProcess, cves: list[str], texts: list[str], repeats: int, slices: FreshSlices, n: int
) -> dict:
    """Both routes through HTTP, one text per request, at each concurrency (no CVEs: ATT&CK only); CVSS on
    fresh descriptions per measurement (`FreshSlices`)."""
    async with httpx.AsyncClient(base_url=svc.url, timeout=600) as c:

        async def cvss(t):
            (await c.post("/classify/cvss", json={"description": t})).raise_for_status()

        async def attack(t):
            (await c.post("/classify/attack", json={"text": t})).raise_for_status()

        if cves:
            await run_concurrent(cvss, [cves[i] for i in slices(("warm-up",), 4)], 4)
        await run_concurrent(attack, texts[:8], 8)
        out: dict = {"cvss": {}, "attack": {}} if cves else {"attack": {}}
        for conc in CONCURRENCY:
            if cves and conc not in PAIRED_CVSS:  # those come from the pairs with vLLM (CTI-VSP has ~790 to spare)
                out["cvss"][f"c{conc}"] = await _measure(cvss, _fresh(cves, slices, conc, n), conc, repeats, svc)
            out["attack"][f"c{conc}"] = await _measure(attack, texts, conc, repeats, svc)
        return out


async def microbatcher_runs(svc: ServerProcess, texts: list[str], repeats: int) -> dict:
    async with httpx.AsyncClient(base_url=svc.url, timeout=600) as c:

        async def attack(t):
            (await c.post("/classify/attack", json={"text": t})).raise_for_status()

        await run_concurrent(attack, texts[:8], 8)
        return {f"c{k}": await _measure(attack, texts, k, repeats) for k in (1, 32)}


def _prompts(artifact: Path, texts: list[str]):
    """Token ids as the service sends them, and the manifest (for the CVSS request's grammar)."""
    from training.artifact.encoding import encode_prompt
    from training.artifact.loading import base_for, load_tokenizer
    from training.artifact.manifest import load_manifest

    manifest = load_manifest(artifact)
    tok = load_tokenizer(base_for(manifest))
    return [encode_prompt(tok, manifest, t)[0] for t in texts], manifest, tok


async def _paired(sides: dict[str, Callable[[int], Awaitable[dict]]], repeats: int) -> dict[str, dict]:
    """Each side's repeat k right after the other's, alternating which goes first: both servers are up (the
    idle one costs nothing), so a slow minute of this shared machine slows both sides alike. Run one side
    after the other instead and the same ratio moved by up to 0.15 between two runs."""
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    order = list(sides)
    for k in range(repeats):
        for name in order if k % 2 == 0 else order[::-1]:
            runs[name].append(await sides[name](k))
    return {name: _median(v) for name, v in runs.items()}


async def _post(client: httpx.AsyncClient, path: str, body: dict, check: Callable[[dict], bool] | None = None):
    r = await client.post(path, json=body)
    r.raise_for_status()
    assert check is None or check(r.json()), r.text[:300]


async def _pairs(svc, v, ours, theirs, items, concurrencies, repeats: int) -> dict:
    """`ours(client, item)` on the service and `theirs(client, item)` on vLLM's server, paired per concurrency;
    `items(side, conc)` gives each side's `repeat -> list`."""
    async with (
        httpx.AsyncClient(base_url=svc.url, timeout=600) as a,
        httpx.AsyncClient(base_url=v.url, timeout=600) as b,
    ):
        calls = {"service": lambda x: ours(a, x), "vllm": lambda x: theirs(b, x)}
        out: dict = {"service": {}, "vllm": {}}
        for conc in concurrencies:
            given = {side: items(side, conc) for side in calls}
            res = await _paired(
                {
                    side: (
                        lambda k, side=side, given=given, conc=conc: run_concurrent(calls[side], given[side](k), conc)
                    )
                    for side in calls
                },
                repeats,
            )
            out["service"][f"c{conc}"], out["vllm"][f"c{conc}"] = res["service"], res["vllm"]
        return out


async def attack_pairs(svc: ServerProcess, v: ServerProcess, model: str, texts, ids, repeats: int) -> dict:
    """`/classify/attack` against vLLM's `/classify` on the same texts (vLLM gets the service's token ids)."""

    def ours(c, t):
        return _post(c, "/classify/attack", {"text": t})

    def theirs(c, x):
        return _post(c, "/classify", {"model": model, "input": x}, lambda j: len(j["data"][0]["probs"]) > 1)

    def items(side, conc, first: int | None = None):
        return lambda k: (texts if side == "service" else ids)[:first]

    await _pairs(svc, v, ours, theirs, lambda side, conc: items(side, conc, 8), (8,), 1)  # warm-up
    return await _pairs(svc, v, ours, theirs, items, (1, 32), repeats)


async def cvss_pairs(
    svc: ServerProcess, v: ServerProcess, model: str, cves, ids, manifest, tok, repeats: int, slices, n: int
) -> dict:
    """`/classify/cvss` against vLLM's `/v1/completions` with the same regex, allowed tokens, logprobs and
    prior-correction processor, on the same fresh descriptions per measurement (vLLM gets the token ids)."""
    from service.models.value_shift import EXTRA_ARG, step_tables
    from training.artifact.encoding import cvss_value_token_ids

    labels = manifest.labels
    value_ids = cvss_value_token_ids(tok, labels)
    shifts = manifest.prior_correction
    body = {
        "model": model,
        "max_tokens": len(labels.metrics),
        "temperature": 0.0,
        "logprobs": max(len(m.values) for m in labels.metrics),
        "allowed_token_ids": sorted({t for ids_ in value_ids for t in ids_}),
        "structured_outputs": {"regex": labels.answer_regex()},
    }
    if shifts is not None:  # the same prior correction as the service (the server runs its logits processor)
        tables = step_tables(value_ids, [shifts.bias(m.key, list(m.values)) for m in labels.metrics])
        body["vllm_xargs"] = {EXTRA_ARG: json.dumps(tables)}

    def ours(c, t):
        return _post(c, "/classify/cvss", {"description": t})

    def theirs(c, x):
        answered = len(labels.metrics)
        return _post(
            c,
            "/v1/completions",
            {**body, "prompt": x},
            lambda j: len(j["choices"][0]["logprobs"]["tokens"]) == answered,
        )

    def items(side, conc):
        return _fresh(cves if side == "service" else ids, slices, conc, n, "pair")

    async with httpx.AsyncClient(base_url=v.url, timeout=600) as b:  # the service was warmed up before
        await run_concurrent(lambda x: theirs(b, x), [ids[i] for i in slices(("warm-up vllm",), 4)], 4)
    return await _pairs(svc, v, ours, theirs, items, PAIRED_CVSS, repeats)


async def report_runs(svc: ServerProcess, reports: list[str], repeats: int) -> dict:
    """Whole reports through POST /classify/attack/report, one at a time, against the same sentences (the
    pipeline's own segmentation and settings) sent to /classify/attack in batches of 64, one batch at a
    time; alternated, in the same service. Rates are sentences per second."""
    import time

    from service.report.pipeline import segment
    from training.artifact.manifest import ReportPipeline, load_manifest

    pipeline = load_manifest(ATTACK_ART).report or ReportPipeline()
    segments = [[u.text for u in segment(t, pipeline, 10**9)[0]] for t in reports]
    n = sum(map(len, segments))
    async with httpx.AsyncClient(base_url=svc.url, timeout=600) as c:

        async def route() -> None:
            for text in reports:
                r = await c.post("/classify/attack/report", json={"text": text})
                r.raise_for_status()

        async def batches() -> None:
            flat = [t for seg in segments for t in seg]
            for i in range(0, len(flat), 64):
                r = await c.post("/classify/attack", json={"texts": flat[i : i + 64], "top_k": 1})
                r.raise_for_status()

        await route()  # warm both paths
        await batches()
        runs: dict[str, list[float]] = {"report_route": [], "attack_batches_64": []}
        for _ in range(repeats):
            for name, call in (("report_route", route), ("attack_batches_64", batches)):
                t0 = time.perf_counter()
                await call()
                runs[name].append(n / (time.perf_counter() - t0))
    return {
        "reports": len(reports),
        "segments": n,
        **{k: {"segments_per_s": sorted(v)[len(v) // 2], "repeats": v} for k, v in runs.items()},
    }


def _report_ratio(r: dict) -> float:
    rep = r["reports"]
    return rep["report_route"]["segments_per_s"] / rep["attack_batches_64"]["segments_per_s"]


def ratios(r: dict) -> dict:
    """ours / theirs (latency rows: theirs / ours, so above 1 is better everywhere)."""
    s, out = r.get("service", {}), {}
    if "attack" not in s:  # --reports-only
        return {"report_route_vs_attack_batches_64": _report_ratio(r)} if "reports" in r else {}
    a32 = s["attack"]["c32"]["items_per_s"]
    if "microbatcher_service" in r:
        old = r["microbatcher_service"]
        out["attack_c32_vs_microbatcher_service"] = a32 / old["c32"]["items_per_s"]
        out["attack_p50_c1_microbatcher_over_ours"] = old["c1"]["p50"] / s["attack"]["c1"]["p50"]
    out["attack_c32_vs_offline_torch_batch"] = a32 / r["attack_offline_torch"]["items_per_s"]
    paired = r.get("service_paired", {})  # vLLM's servers are compared with the service's paired repeats
    if "vllm_classify" in r:
        ours = paired["attack"]
        out["attack_c32_vs_vllm_classify"] = ours["c32"]["items_per_s"] / r["vllm_classify"]["c32"]["items_per_s"]
        out["attack_p50_c1_vllm_classify_over_ours"] = r["vllm_classify"]["c1"]["p50"] / ours["c1"]["p50"]
    if "reports" in r:
        out["report_route_vs_attack_batches_64"] = _report_ratio(r)
    if "vllm_completions" in r and "cvss" in s:
        ours = paired["cvss"]
        out["cvss_c16_vs_vllm_completions"] = ours["c16"]["items_per_s"] / r["vllm_completions"]["c16"]["items_per_s"]
        out["cvss_p50_c1_vllm_completions_over_ours"] = r["vllm_completions"]["c1"]["p50"] / ours["c1"]["p50"]
    if "batch_vs_http" in r:
        out["cvss_batch_command_vs_http_c16"] = r["batch_vs_http"]["ratio_batch_vs_http_c16"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("DATA_DIR", REPO.parent / "shared" / "data")))
    ap.add_argument("--n", type=int, default=64, help="CVEs per run (texts: max(n, 64))")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--port", type=int, default=8077)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--attack-only", action="store_true", help="only the ATT&CK comparisons (file suffix -attack)")
    ap.add_argument("--seed-method", action="store_true", help="also compare with the seed's 8-prompt CVSS method")
    ap.add_argument("--reports", type=int, default=8, help="CTI-HAL reports for the report-route comparison")
    ap.add_argument(
        "--reports-only", action="store_true", help="only the report-route comparison (file suffix -reports)"
    )
    ap.add_argument(
        "--batch-n", type=int, default=800, help="CTI-VSP descriptions for the batch command vs HTTP (0: skip)"
    )
    args = ap.parse_args()
    examples, texts = inputs(args.data_dir, args.n)
    # CVSS: every measurement on descriptions no server has seen (4 warm-up, 16 per repeat at c=1, n per repeat
    # at each other concurrency), the same ones for the same measurement on each side
    pool = 8 + args.repeats * args.n * (len(CONCURRENCY) - len(PAIRED_CVSS)) + args.repeats * (16 + args.n)
    cves = [] if args.attack_only else speed_cves(args.data_dir, pool)
    slices = FreshSlices(len(cves))
    r: dict = {
        "machine": machine(),
        "date": date.today().isoformat(),
        "n_cvss": len(cves),
        "cvss_inputs": "fresh per measurement: no description is sent twice to one server (FreshSlices)",
        "n_attack": len(texts),
        "repeats": args.repeats,
    }
    from service.settings import Settings
    from training.artifact.folding import folded_model_dir
    from training.artifact.loading import base_for
    from training.artifact.manifest import load_manifest

    s = Settings()
    reports = report_inputs(args.data_dir, args.reports)
    svc = ServerProcess.service({"SECCLF_CVSS_ARTIFACT": ""} if args.reports_only else {}, port=args.port)
    try:
        r["cold_start_s"] = svc.wait_ready()
        r["startup_seconds"] = httpx.get(svc.url + "/v1/models", timeout=30).json().get("startup_seconds", {})
        if not args.reports_only:
            r["service"] = asyncio.run(service_runs(svc, cves, texts, args.repeats, slices, args.n))
            r["peak_rss_mb"] = svc.peak_rss / 2**20  # the service with both engines
        r["reports"] = asyncio.run(report_runs(svc, reports, args.repeats))
        if args.reports_only:
            return _write(r, args.out, "-reports")
        # the service stays up (idle) while each of vLLM's servers runs beside it: the pairs alternate repeats
        r["service_paired"] = {}
        manifest = load_manifest(ATTACK_ART)
        attack_dir = folded_model_dir(base_for(manifest), ATTACK_ART, manifest, s.cache_dir)  # what the service serves
        ids, _, _ = _prompts(ATTACK_ART, texts)
        with baselines.vllm_server(attack_dir, ["--runner", "pooling"], s.attack_kv_cache_gib) as v:
            pairs = asyncio.run(attack_pairs(svc, v, str(attack_dir), texts, ids, args.repeats))
        r["service_paired"]["attack"], r["vllm_classify"] = pairs["service"], pairs["vllm"]
        if cves:
            manifest = load_manifest(CVSS_ART)
            cvss_dir = folded_model_dir(base_for(manifest), CVSS_ART, manifest, s.cache_dir)
            ids, manifest, tok = _prompts(CVSS_ART, cves)
            extra = ["--logprobs-mode", "processed_logprobs", "--enable-prefix-caching"]
            if manifest.prior_correction is not None:  # the same work per step as the service
                from service.models.value_shift import QUALNAME

                extra += ["--logits-processors", QUALNAME]
            with baselines.vllm_server(cvss_dir, extra, s.cvss_kv_cache_gib) as v:
                pairs = asyncio.run(
                    cvss_pairs(svc, v, str(cvss_dir), cves, ids, manifest, tok, args.repeats, slices, args.n)
                )
            r["service_paired"]["cvss"], r["vllm_completions"] = pairs["service"], pairs["vllm"]
    finally:
        svc.stop()
    r["attack_offline_torch"] = baselines.attack_offline_torch(texts, ATTACK_ART, args.repeats)
    with baselines.microbatcher_service(ATTACK_ART, args.port) as old:
        r["microbatcher_service"] = asyncio.run(microbatcher_runs(old, texts, args.repeats))
    if cves:
        if args.batch_n:
            from bench.batch import compare as batch_compare

            r["batch_vs_http"] = batch_compare(args.data_dir, args.batch_n, args.port)
        if args.seed_method:
            from bench.seed_method import compare

            r["cvss_methods"] = compare(examples, args.repeats)
    _write(r, args.out, "-attack" if args.attack_only else "")


def _write(r: dict, out: Path, suffix: str) -> None:
    r["ratios"] = ratios(r)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{r['machine']}-{r['date']}{suffix}"
    stem.with_suffix(".json").write_text(json.dumps(r, indent=2))
    stem.with_suffix(".md").write_text(table(r) + "\n")
    if "service" in r:
        plot(r, stem.with_suffix(".png"))
    print(table(r))


if __name__ == "__main__":
    main()
