"""The benchmark's Markdown table and latency plot, from the results dict `bench.run` writes."""

from __future__ import annotations

import json
from pathlib import Path

# ratio key -> (what it compares, target)
TARGETS = {
    "attack_c32_vs_microbatcher_service": (
        "ATT&CK texts/s at c=32: service / previous torch micro-batcher service",
        1.5,
    ),
    "attack_c32_vs_offline_torch_batch": ("ATT&CK texts/s at c=32: service / best offline torch batch", 1.0),
    "attack_c32_vs_vllm_classify": ("ATT&CK texts/s at c=32: service / vLLM api_server /classify", 1.0),
    "attack_p50_c1_vllm_classify_over_ours": (
        "ATT&CK p50 at c=1: vLLM api_server /classify / service (above 1: faster)",
        1.0,
    ),
    "attack_p50_c1_microbatcher_over_ours": ("ATT&CK p50 at c=1: previous service / service (above 1: faster)", 1.0),
    "cvss_c16_vs_vllm_completions": ("CVSS desc/s at c=16: service / vLLM api_server /v1/completions", 1.0),
    "cvss_p50_c1_vllm_completions_over_ours": (
        "CVSS p50 at c=1: vLLM api_server /v1/completions / service (above 1: faster)",
        1.0,
    ),
    "cvss_batch_command_vs_http_c16": (
        "CVSS desc/s: `python -m service.batch` (compiled) / the HTTP service (eager) at c=16, start-up excluded",
        1.2,
    ),
    "report_route_vs_attack_batches_64": (
        "report sentences/s: /classify/attack/report / the same sentences to /classify/attack in batches of 64",
        0.9,
    ),
}


def table(r: dict) -> str:
    lines = [
        f"Machine: {r['machine']} ({r['date']}); n_cvss={r['n_cvss']}, n_attack={r['n_attack']}, "
        f"repeats={r['repeats']}",
        "",
        "| comparison | ratio | target | met |",
        "|---|---|---|---|",
    ]
    for key, value in r["ratios"].items():
        what, target = TARGETS[key]
        lines.append(f"| {what} | {value:.2f}× | ≥ {target}× | {'yes' if value >= target else 'no'} |")
    if "reports" in r:
        rep = r["reports"]
        route, batches = rep["report_route"]["segments_per_s"], rep["attack_batches_64"]["segments_per_s"]
        lines += [
            "",
            f"Reports: {rep['reports']} CTI-HAL reports, {rep['segments']} sentences (median of {r['repeats']})",
            "",
            "| path | sentences/s |",
            "|---|---|",
            f"| POST /classify/attack/report, one report at a time | {route:.1f} |",
            f"| the same sentences, /classify/attack in batches of 64 | {batches:.1f} |",
        ]
    if "service" not in r:
        return "\n".join(lines)
    lines += ["", "| server | route | concurrency | p50 s | p95 s | items/s |", "|---|---|---|---|---|---|"]
    rows = [("service", route, runs) for route, runs in r["service"].items()]
    # the service's repeats alternated with vLLM's (both servers up): what the vLLM ratios use
    rows += [("service, paired with vLLM", route, runs) for route, runs in r.get("service_paired", {}).items()]
    rows += [
        (name, route, r[name])
        for name, route in (
            ("microbatcher_service", "attack"),
            ("vllm_classify", "attack"),
            ("vllm_completions", "cvss"),
        )
        if name in r
    ]
    for server, route, runs in rows:
        for k, v in runs.items():
            lines.append(f"| {server} | {route} | {k[1:]} | {v['p50']:.3f} | {v['p95']:.3f} | {v['items_per_s']:.2f} |")
    off = r["attack_offline_torch"]
    lines.append(
        f"| offline torch, length-sorted batch {off['batch_size']} | attack | – | – | – | {off['items_per_s']:.2f} |"
    )
    if "cvss_methods" in r:
        cm = r["cvss_methods"]
        lines += [
            "",
            "| CVSS method (validation CVEs) | n | mean per-metric accuracy | exact vector |",
            "|---|---|---|---|",
        ]
        for name, acc, missing in (
            ("ours: one constrained pass", cm["ours_accuracy"], "not scored: the default trained on these CVEs"),
            ("seed: 8 prompts", cm["seed_accuracy"], "no seed adapter (run `python -m bench.seed_method train`)"),
        ):
            if acc is None:
                lines.append(f"| {name} | – | {missing} | – |")
            else:
                lines.append(f"| {name} | {acc['n']} | {acc['mean_per_metric']:.3f} | {acc['exact_vector']:.3f} |")
        if cm["seed_adapter"]:
            lines.append(f"\nSeed adapter: {json.dumps(cm['seed_adapter'])}")
    lines += [
        "",
        f"Cold start to ready: {r['cold_start_s']:.1f} s; peak service RSS (both engines, with their processes): "
        f"{r['peak_rss_mb']:.0f} MB",
    ]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for route, own in r["service"].items():
        runs = {**r.get("service_paired", {}).get(route, {}), **own}  # CVSS c=1 and c=16 come from the pairs
        conc = sorted(int(k[1:]) for k in runs)
        for p in ("p50", "p95", "p99"):
            ax.plot(conc, [runs[f"c{c}"][p] for c in conc], marker="o", label=f"{route} {p}")
    ax.set(xscale="log", xlabel="concurrency", ylabel="latency (s)", title=f"latency vs concurrency ({r['machine']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
