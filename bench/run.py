"""`make bench`: the service against its limits, as ratios measured side by side in one run.

Both sides of each comparison run in this run, on the same inputs (validation CVEs, held-out CTI-HAL
excerpts), warm-up excluded, medians over repeats. The service runs as its own process (loopback);
this process is the load generator and runs the in-process baselines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import httpx
import psutil

from bench.load import run_concurrent

REPO = Path(__file__).resolve().parent.parent
CVSS_ART = REPO / "artifacts" / "cvss-default"
ATTACK_ART = REPO / "artifacts" / "attack-default"


def machine() -> str:
    """The device in words, file-name safe: GPU name, else CPU model and core count."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0).replace(" ", "-")
    except Exception:
        pass
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln.split(":", 1)[1] for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        model = names[0] if names else model
    return "cpu-" + "-".join(model.split()) + f"-{psutil.cpu_count()}c"


def inputs(data_dir: Path, n: int) -> tuple[list, list[str]]:
    """The first `n` validation CVEs (examples: description + true vector) and CTI-HAL texts: of held-out
    groups where the artifact has any, else of every group (the ATT&CK side times speed, not accuracy)."""
    from training.catalogue import catalogue
    from training.data import load_cti_hal, load_cvss
    from training.manifest import load_split

    val = set(load_split(CVSS_ART).validation_ids)
    cves = [e for e in load_cvss([data_dir / "cti-vsp" / "cti-vsp.tsv"]) if e.cve_id in val]
    seen = set(load_split(ATTACK_ART).train_groups)
    hal, _ = load_cti_hal(data_dir / "cti-hal" / "data", catalogue().remap)
    texts = [e.text for e in hal if e.group not in seen] or [e.text for e in hal]
    return cves[:n], texts[: max(n, 64)]


def median_of(fn, repeats: int) -> dict:
    runs = [fn() for _ in range(repeats)]
    best = sorted(runs, key=lambda r: r["items_per_s"])[len(runs) // 2]
    return {**best, "repeats": [r["items_per_s"] for r in runs]}


# -- in-process baselines ------------------------------------------------------------------------
def engine_cvss(cves: list[str], repeats: int) -> dict:
    """The service's CVSS model class with the same settings and artifact, called in-process (no HTTP)."""
    from service.models.cvss import CvssModel
    from service.settings import Settings

    async def go():
        model = CvssModel(CVSS_ART, Settings())
        await model.load()
        prompts = [model.preprocess(t)[0] for t in cves]
        await run_concurrent(model.predict, prompts[:4], 4)  # warm-up
        c16 = [await run_concurrent(model.predict, prompts, 16) for _ in range(repeats)]
        c1 = [await run_concurrent(model.predict, prompts[:16], 1) for _ in range(repeats)]
        await model.close()
        return {"c16": _median(c16), "c1": _median(c1, key="p50"), "merged_adapter": model.merged}

    return asyncio.run(go())


def cvss_methods(examples: list, repeats: int) -> dict:
    """Our one constrained pass vs the seed's 8 prompts per description, on one vLLM engine serving both
    LoRA adapters (same engine, same adapter family), at concurrency 16; accuracy on the same CVEs."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import StructuredOutputsParams

    from bench.seed_method import SEED_ADAPTER, seed_prompts, word_choices
    from service.models.cvss import CvssModel
    from service.settings import Settings
    from training.prompting import truncate

    async def go():
        model = CvssModel(CVSS_ART, Settings(cvss_merge_adapter="never"))
        await model.load()
        labels = model.labels
        truths = [e.values for e in examples]
        predicted: dict[int, dict[str, str]] = {}

        async def ours(i: int) -> None:
            prompt, truncated = model.preprocess(examples[i].description)
            result = model.postprocess(await model.predict(prompt), truncated)
            predicted[i] = {k: m.value for k, m in result.metrics.items()}

        seed_lora = LoRARequest("seed-method", 99, str(SEED_ADAPTER)) if SEED_ADAPTER.is_dir() else None
        choices = word_choices(labels)
        params = [
            SamplingParams(temperature=0.0, max_tokens=8, structured_outputs=StructuredOutputsParams(choice=c))
            for c in choices
        ]
        seed_predicted: dict[int, dict[str, str]] = {}

        async def seed(i: int) -> None:
            cut = truncate(model.tokenizer, examples[i].description, model.manifest.max_input_tokens)[0]

            async def one(m, prompt, sp, allowed):
                final = None
                async for out in model.engine.generate(
                    prompt, sp, request_id=f"seed-{i}-{m.key}-{time.time_ns()}", lora_request=seed_lora
                ):
                    final = out
                return list(m.values)[allowed.index(final.outputs[0].text)]

            values = await asyncio.gather(
                *(
                    one(m, pr, sp, al)
                    for m, pr, sp, al in zip(labels.metrics, seed_prompts(labels, cut), params, choices, strict=True)
                )
            )
            seed_predicted[i] = {m.key: v for m, v in zip(labels.metrics, values, strict=True)}

        idx = list(range(len(examples)))
        await run_concurrent(ours, idx[:4], 4)  # warm-up
        ours_runs = [await run_concurrent(ours, idx, 16) for _ in range(repeats)]
        await run_concurrent(seed, idx[:2], 2)  # warm-up
        seed_runs = [await run_concurrent(seed, idx, 16) for _ in range(repeats)]
        await model.close()
        return {
            "ours_c16": _median(ours_runs),
            "seed_8_prompts_c16": _median(seed_runs),
            "ours_accuracy": _accuracy(predicted, truths),
            "seed_accuracy": _accuracy(seed_predicted, truths) if seed_lora else None,
            "seed_adapter": _seed_info(SEED_ADAPTER),
        }

    return asyncio.run(go())


def _accuracy(predicted: dict[int, dict[str, str]], truths: list[dict[str, str]]) -> dict:
    keys = list(truths[0])
    hits = [[predicted[i][k] == t[k] for k in keys] for i, t in enumerate(truths) if i in predicted]
    return {
        "n": len(hits),
        "mean_per_metric": sum(map(sum, hits)) / (len(hits) * len(keys)) if hits else None,
        "exact_vector": sum(all(h) for h in hits) / len(hits) if hits else None,
    }


def _seed_info(path: Path) -> dict | None:
    f = path / "seed-training.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _median(runs: list[dict], key: str = "items_per_s") -> dict:
    return sorted(runs, key=lambda r: r[key])[len(runs) // 2]


def attack_offline_and_naive(texts: list[str], repeats: int) -> dict:
    """Naive server (one forward pass per request, in order) vs the best offline batched pass."""
    import torch

    from service.models.attack import AttackModel
    from service.settings import Settings

    async def load():
        m = AttackModel(ATTACK_ART, Settings())
        await m.load()
        await m.close()
        return m

    m = asyncio.run(load())
    m.predict_batch(texts[:2])  # warm-up

    def naive():
        t = time.perf_counter()
        for x in texts:
            m.predict_batch([x])
        return {"items_per_s": len(texts) / (time.perf_counter() - t)}

    def offline(bs: int):
        order = sorted(texts, key=len)  # length-sorted batches: least padding
        t = time.perf_counter()
        for i in range(0, len(order), bs):
            m.predict_batch(order[i : i + bs])
        return {"items_per_s": len(texts) / (time.perf_counter() - t), "batch_size": bs}

    def best_offline():
        # The hardware limit: the best batch size for this device (on a CPU big padded batches lose)
        return max((offline(bs) for bs in (4, 8, 16, 32)), key=lambda r: r["items_per_s"])

    with torch.inference_mode():
        return {"naive": median_of(naive, repeats), "offline_batched": median_of(best_offline, repeats)}


# -- the service -----------------------------------------------------------------------------------
class Service:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port)}
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.peak_rss = 0

    def wait_ready(self, timeout: float = 600) -> float:
        while time.perf_counter() - self.t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return time.perf_counter() - self.t0
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError("service not ready")

    def rss(self) -> int:
        p = psutil.Process(self.proc.pid)
        total = sum(c.memory_info().rss for c in [p, *p.children(recursive=True)])
        self.peak_rss = max(self.peak_rss, total)
        return total

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


async def service_runs(svc: Service, cves: list[str], texts: list[str], repeats: int) -> dict:
    """Both routes through HTTP at concurrency 1/8/16/32 (no CVEs: the ATT&CK route only)."""
    async with httpx.AsyncClient(base_url=svc.url, timeout=600) as c:

        async def cvss(t):
            r = await c.post("/classify/cvss", json={"description": t})
            r.raise_for_status()

        async def attack(t):
            r = await c.post("/classify/attack", json={"text": t})
            r.raise_for_status()

        await run_concurrent(cvss, cves[:4], 4)
        await run_concurrent(attack, texts[:8], 8)
        out: dict = {"cvss": {}, "attack": {}} if cves else {"attack": {}}
        for conc in (1, 8, 16, 32):
            items = cves if conc > 1 else cves[:16]
            if cves:
                out["cvss"][f"c{conc}"] = _median([await run_concurrent(cvss, items, conc) for _ in range(repeats)])
                svc.rss()
            out["attack"][f"c{conc}"] = _median([await run_concurrent(attack, texts, conc) for _ in range(repeats)])
            svc.rss()
        return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for route in results["service"]:
        runs = results["service"][route]
        conc = sorted(int(k[1:]) for k in runs)
        for p in ("p50", "p95", "p99"):
            ax.plot(conc, [runs[f"c{c}"][p] for c in conc], marker="o", label=f"{route} {p}")
    ax.set(
        xscale="log", xlabel="concurrency", ylabel="latency (s)", title=f"latency vs concurrency ({results['machine']})"
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ratio_table(r: dict, rows: list[tuple]) -> str:
    lines = [
        f"Machine: {r['machine']} ({r['date']}); n_cvss={r['n_cvss']}, n_attack={r['n_attack']}, "
        f"repeats={r['repeats']}",
        "",
        "| comparison | ours | baseline | ratio | target |",
        "|---|---|---|---|---|",
    ]
    for name, ours, base, target in rows:
        lines.append(f"| {name} | {ours:.3f} | {base:.3f} | {ours / base:.2f}× | {target} |")
    lines += ["", "| route | concurrency | p50 s | p95 s | p99 s | items/s |", "|---|---|---|---|---|---|"]
    for route, runs in r["service"].items():
        for k, v in runs.items():
            lines.append(
                f"| {route} | {k[1:]} | {v['p50']:.3f} | {v['p95']:.3f} | {v['p99']:.3f} | {v['items_per_s']:.2f} |"
            )
    return "\n".join(lines)


def table(r: dict) -> str:
    s, a = r["service"], r["attack_baselines"]
    attack_rows = [
        (
            "ATT&CK texts/s at c=32: service / naive per-request",
            s["attack"]["c32"]["items_per_s"],
            a["naive"]["items_per_s"],
            "≥ 5×",
        ),
        (
            f"ATT&CK texts/s at c=32: service / best offline batched (size {a['offline_batched']['batch_size']})",
            s["attack"]["c32"]["items_per_s"],
            a["offline_batched"]["items_per_s"],
            "≥ 0.85×",
        ),
    ]
    if "cvss" not in s:
        return _ratio_table(r, attack_rows) + f"\n\nCold start to ready: {r['cold_start_s']:.1f} s"
    e, cm = r["engine"], r["cvss_methods"]
    rows = [
        (
            "CVSS desc/s at c=16: service / engine in-process",
            s["cvss"]["c16"]["items_per_s"],
            e["c16"]["items_per_s"],
            "≥ 0.9×",
        ),
        ("CVSS p50 at c=1 (s): service / engine", s["cvss"]["c1"]["p50"], e["c1"]["p50"], "≤ 1.1×"),
        (
            "CVSS desc/s at c=16, one LoRA engine: one constrained pass / seed's 8 prompts",
            r["cvss_methods"]["ours_c16"]["items_per_s"],
            r["cvss_methods"]["seed_8_prompts_c16"]["items_per_s"],
            "≥ 4×",
        ),
        *attack_rows,
    ]
    lines = _ratio_table(r, rows).splitlines()
    acc = [("ours: one constrained pass", cm["ours_accuracy"]), ("seed: 8 prompts, word labels", cm["seed_accuracy"])]
    lines += ["", "| CVSS method (validation CVEs) | n | mean per-metric accuracy | exact vector |"]
    lines.append("|---|---|---|---|")
    for name, a_ in acc:
        if a_ is None:
            lines.append(f"| {name} | – | no seed adapter (run `python -m bench.seed_method train`) | – |")
        else:
            lines.append(f"| {name} | {a_['n']} | {a_['mean_per_metric']:.3f} | {a_['exact_vector']:.3f} |")
    if cm["seed_adapter"]:
        lines.append(f"\nSeed adapter: {json.dumps(cm['seed_adapter'])}")
    lines.append(f"\nService CVSS engine: adapter merged into the base = {e['merged_adapter']}")
    lines += [
        "",
        f"Cold start to ready: {r['cold_start_s']:.1f} s; peak service RSS (with engine process): "
        f"{r['peak_rss_mb']:.0f} MB",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("DATA_DIR", REPO.parent / "shared" / "data")))
    ap.add_argument("--n", type=int, default=64, help="CVEs per run (texts: max(n, 64))")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--port", type=int, default=8077)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--attack-only", action="store_true", help="only the ATT&CK comparisons (file suffix -attack)")
    args = ap.parse_args()
    examples, texts = inputs(args.data_dir, args.n)
    cves = [] if args.attack_only else [e.description for e in examples]
    result = {
        "machine": machine(),
        "date": date.today().isoformat(),
        "n_cvss": len(cves),
        "n_attack": len(texts),
        "repeats": args.repeats,
    }
    if cves:
        result["engine"] = engine_cvss(cves, args.repeats)
        result["cvss_methods"] = cvss_methods(examples, args.repeats)
    result["attack_baselines"] = attack_offline_and_naive(texts, args.repeats)
    svc = Service(args.port)
    try:
        result["cold_start_s"] = svc.wait_ready()
        result["service"] = asyncio.run(service_runs(svc, cves, texts, args.repeats))
        result["peak_rss_mb"] = svc.peak_rss / 2**20
    finally:
        svc.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{result['machine']}-{result['date']}{'-attack' if args.attack_only else ''}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(table(result) + "\n")
    plot(result, stem.with_suffix(".png"))
    print(table(result))


if __name__ == "__main__":
    main()
