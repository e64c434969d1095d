"""Why is constrained CVSS decoding slow on vLLM CPU, and what fixes it: one engine setting at a time.

Each configuration runs in its own subprocess (thread binding is read when the engine starts), on the
same validation CVEs with the same adapter, warm-up excluded, median over repeats. Reported per
configuration: descriptions/s with every prompt submitted at once, and p50 latency of one prompt alone.
Run: .venv/bin/python -m bench.cvss_tuning [--n 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from training.artifact.manifest import load_split

REPO = Path(__file__).resolve().parent.parent

# The service's defaults before tuning; each row names what it changes.
BEFORE = {
    "bind": "auto",  # vLLM reserves one of the 2 cores for its scheduler: the model runs on 1 thread
    "logprobs": 4,
    "grammar": True,
    "lora": True,  # True: vLLM LoRA; "merged": adapter folded into the base weights; False: base model only
    "prefix_caching": True,
    "max_num_seqs": 64,
    "answer": "short",  # " N L N N U H H H": 8 tokens; "long" is the 31-token "AV:N/AC:L/..." string
    "dtype": "float32",
}


def configs() -> list[tuple[str, dict]]:
    after = {"bind": "all", "lora": "merged"}
    return [
        ("before: service defaults (1 core, LoRA)", {}),
        ("bfloat16 (vLLM's CPU default)", {"dtype": "bfloat16"}),
        ("31-token answer string", {"answer": "long"}),
        ("bind both cores to the model", {"bind": "all"}),
        ("both cores, no logprobs", {"bind": "all", "logprobs": 0}),
        ("both cores, no grammar", {"bind": "all", "grammar": False}),
        ("both cores, no adapter at all (lower bound)", {"bind": "all", "lora": False}),
        ("after: both cores, adapter merged into the base", after),
        ("after, no prefix caching", {**after, "prefix_caching": False}),
        ("after, max_num_seqs 16", {**after, "max_num_seqs": 16}),
    ]


def run_one(cfg: dict, n: int, repeats: int, data: Path) -> dict:
    """Child process: build one engine with `cfg`, time it."""
    if cfg["bind"] == "all":
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{os.cpu_count() - 1}"
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import StructuredOutputsParams

    from training.artifact.encoding import render
    from training.artifact.loading import base_for, load_tokenizer
    from training.artifact.manifest import load_manifest
    from training.data import load_cvss

    artifact = REPO / "artifacts" / "cvss-default"
    manifest = load_manifest(artifact)
    base = base_for(manifest)
    tok = load_tokenizer(base)
    val = set(load_split(artifact).scored_ids)
    texts = [e.description for e in load_cvss([data]) if e.cve_id in val][:n]
    prompts = [render(tok, manifest, t)[0] for t in texts]
    labels = manifest.labels
    if cfg["answer"] == "short":
        regex, max_tokens = labels.answer_regex(), len(labels.metrics)
    else:
        regex, max_tokens = "/".join(f"{m.key}:[{''.join(m.values)}]" for m in labels.metrics), 40
    model = base
    if cfg["lora"] == "merged":
        from training.artifact.folding import folded_model_dir

        model = str(folded_model_dir(base, artifact, manifest, REPO / "models" / "cache"))
    llm = LLM(
        model=model,
        tokenizer=base,
        dtype=cfg["dtype"],
        max_model_len=1024,
        enforce_eager=True,
        enable_lora=cfg["lora"] is True,
        max_lora_rank=16,
        max_num_seqs=cfg["max_num_seqs"],
        enable_prefix_caching=cfg["prefix_caching"],
        logprobs_mode="processed_logprobs",
        trust_remote_code=False,
    )
    sp = SamplingParams(
        temperature=0,
        max_tokens=max_tokens,
        logprobs=cfg["logprobs"] or None,
        structured_outputs=StructuredOutputsParams(regex=regex) if cfg["grammar"] else None,
    )
    lora = LoRARequest("cvss", 1, str(artifact)) if cfg["lora"] is True else None

    def gen(ps):
        return llm.generate(ps, sp, lora_request=lora, use_tqdm=False)

    gen(prompts[:4])  # warm-up
    batch, single, tokens = [], [], 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        outs = gen(prompts)
        batch.append(time.perf_counter() - t)
        tokens = statistics.fmean(len(o.outputs[0].token_ids) for o in outs)
        for p in prompts[:4]:
            t = time.perf_counter()
            gen([p])
            single.append(time.perf_counter() - t)
    return {
        "desc_per_s": len(prompts) / statistics.median(batch),
        "single_p50_s": statistics.median(single),
        "generated_tokens": tokens,
        "prompt_tokens": statistics.fmean(len(tok.encode(p)) for p in prompts),
    }


def table(rows: list[dict], header: str = "") -> str:
    base = rows[0]["desc_per_s"]
    lines = [
        header,
        "",
        "| configuration | desc/s (all at once) | vs before | p50 one prompt (s) | tokens out |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error'][:80]} | | | |")
            continue
        lines.append(
            f"| {r['name']} | {r['desc_per_s']:.2f} | {r['desc_per_s'] / base:.2f}× | "
            f"{r['single_p50_s']:.3f} | {r['generated_tokens']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DATA_DIR", REPO.parent / "shared" / "data")))
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", help="comma-separated row numbers to run (default: all)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    tsv = args.data / "cti-vsp" / "cti-vsp.tsv" if args.data.is_dir() else args.data
    if args.child:
        print("RESULT " + json.dumps(run_one(json.loads(args.child), args.n, args.repeats, tsv)), flush=True)
        return
    picked = {int(i) for i in args.only.split(",")} if args.only else None
    rows = []
    for i, (name, change) in enumerate(configs()):
        if picked is not None and i not in picked:
            continue
        cfg = {**BEFORE, **change}
        cmd = [sys.executable, "-m", "bench.cvss_tuning", "--data", str(tsv), "--n", str(args.n)]
        cmd += ["--repeats", str(args.repeats), "--child", json.dumps(cfg)]
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        found = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        row = {"name": name, "config": cfg}
        row.update(json.loads(found[-1][7:]) if found else {"error": p.stderr.strip().splitlines()[-1:] or ["?"]})
        if "error" in row:
            row["error"] = str(row["error"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"cvss-tuning-{date.today().isoformat()}"
    from bench.harness import machine

    header = (
        f"Machine: {machine()} ({date.today().isoformat()}); {args.n} validation CVEs "
        f"(~{rows[0].get('prompt_tokens', 0):.0f} prompt tokens each), median of {args.repeats} repeats"
    )
    stem.with_suffix(".json").write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    stem.with_suffix(".md").write_text(table(rows, header) + "\n")
    print(table(rows, header))
    failed = [r["name"] for r in rows if "error" in r]
    if failed:  # a configuration that cannot run is a broken bench, not a table row
        sys.exit(f"{len(failed)} configuration(s) failed: {failed}")


if __name__ == "__main__":
    main()
