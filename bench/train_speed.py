"""Seconds per optimizer step of CVSS training: the committed recipe against the path before the layer cache,
and thread settings, side by side in one run.

Every configuration trains the same adapter (the committed manifest's hyper-parameters and seed) on the same
batches (the first `--n` training CVEs of its split, in the Trainer's length-grouped order) for `--steps`
optimizer steps, each in a fresh process (OpenMP reads its settings when the library loads), and the
configurations take turns round by round, so a drift of the machine's speed reaches all of them alike. A
step's time is the wall time from one optimizer step's end to the next (batch collation included); the
first `--warmup` steps are dropped. Ratios are against `before` in the same round.

Run: .venv/bin/python -m bench.train_speed [--n 240] [--steps 30] [--rounds 2] [--only before,recipe]
Writes bench/results/train-speed-<machine>-<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

from bench.harness import REPO, machine

CVSS_ART = REPO / "artifacts" / "cvss-default"
IOMP = REPO / ".venv" / "lib" / "libiomp5.so"


@dataclass(frozen=True)
class Config:
    name: str
    what: str
    cache: bool = True  # False: every step runs all layers from the token embeddings (the path before the cache)
    lora_dropout: float | None = None  # None: the recipe's
    threads: int = 0  # torch intra-op threads (0: torch's default, one per core)
    peft_lora: bool = False  # True: PEFT's own LoRA forward, not the rank-scaled one (training/fitting/lora_forward.py)
    env: dict[str, str] = field(default_factory=dict)


CONFIGS = [
    Config(
        "before",
        "no layer cache (all 30 layers every step), LoRA dropout 0.05, PEFT's LoRA forward",
        cache=False,
        lora_dropout=0.05,
        peft_lora=True,
    ),
    Config("recipe", "the committed recipe: frozen layers cached, no LoRA dropout, rank-scaled LoRA forward"),
    Config("recipe-peft-lora", "the recipe with PEFT's own LoRA forward (before 2026-12-04)", peft_lora=True),
    Config("recipe-1-thread", "the recipe on one torch thread", threads=1),
    Config(
        "recipe-bind",
        "the recipe, OpenMP threads pinned one per core",
        env={"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"},
    ),
    Config(
        "recipe-spin", "the recipe, OpenMP threads spin between parallel regions", env={"OMP_WAIT_POLICY": "ACTIVE"}
    ),
    Config(
        "recipe-bind-spin",
        "the recipe, OpenMP threads pinned and spinning",
        env={"OMP_PROC_BIND": "close", "OMP_PLACES": "cores", "OMP_WAIT_POLICY": "ACTIVE"},
    ),
    Config("recipe-iomp", "the recipe with Intel's OpenMP preloaded (libiomp5)", env={"LD_PRELOAD": str(IOMP)}),
]


def _child(spec: dict, data: Path, n: int, steps: int) -> dict:
    """One configuration's training steps in this process: the per-step wall times."""
    import torch
    from transformers import TrainerCallback

    from training.artifact.loading import base_for, load_tokenizer
    from training.artifact.manifest import load_manifest, load_split
    from training.cvss.train import cached_rows, fresh_model, train_adapter
    from training.data import load_cvss
    from training.fitting.lora_forward import use_rank_scaled_lora
    from training.fitting.trainer import TrainConfig

    manifest = load_manifest(CVSS_ART)
    cfg = replace(TrainConfig.from_hyperparameters(manifest.hyperparameters), max_steps=steps, threads=spec["threads"])
    if spec["lora_dropout"] is not None:
        cfg = replace(cfg, lora_dropout=spec["lora_dropout"])
    by_id = {e.cve_id: e for e in load_cvss([data / "cti-vsp" / "cti-vsp.tsv"])}
    examples = [by_id[i] for i in load_split(CVSS_ART).train_ids if i in by_id][:n]
    if len(examples) < n:
        raise SystemExit(f"only {len(examples)} of the split's training CVEs are in {data}")

    base = base_for(manifest)
    tokenizer = load_tokenizer(base)
    model = fresh_model(base, tokenizer.pad_token_id, cfg)  # LoRA on the recipe's top layers either way
    rank_scaled = use_rank_scaled_lora(model, enable=not spec["peft_lora"])
    # lora_layers 0 here only sets how much is cached: nothing but the embeddings, so every layer runs per step
    rows, n_frozen, cache_seconds = cached_rows(
        model, tokenizer, manifest, examples, cfg if spec["cache"] else replace(cfg, lora_layers=0)
    )

    class StepEnds(TrainerCallback):
        def __init__(self) -> None:
            self.t: list[float] = []

        def on_train_begin(self, args, state, control, **kw):
            self.t.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            self.t.append(time.perf_counter())

    timer = StepEnds()
    stats = train_adapter(model, tokenizer, manifest, rows, n_frozen, cfg, [timer])
    return {
        "train_loss": stats["train_loss"],  # equal losses across settings: the setting left the arithmetic alone
        "step_seconds": [b - a for a, b in zip(timer.t, timer.t[1:], strict=False)],
        "n_frozen": n_frozen,
        "cache_seconds": round(cache_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "lora_dropout": cfg.lora_dropout,
        "rank_scaled_lora_layers": rank_scaled,
    }


def run_one(cfg: Config, data: Path, n: int, steps: int, timeout: float) -> dict:
    spec = json.dumps(
        {"cache": cfg.cache, "lora_dropout": cfg.lora_dropout, "threads": cfg.threads, "peft_lora": cfg.peft_lora}
    )
    env = {**os.environ, "SECCLF_NO_PROGRESS": "1", **cfg.env}
    cmd = [sys.executable, "-m", "bench.train_speed", "--child", spec, "--data", str(data), "--n", str(n)]
    p = subprocess.run(
        [*cmd, "--steps", str(steps)], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    if p.returncode != 0:
        raise RuntimeError(f"{cfg.name} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def summarise(runs: dict[str, list[dict]], warmup: int) -> dict[str, dict]:
    """Per configuration: the median step over all rounds, each round's median, and the ratio to `before`
    (pooled, and each round's against the same round's)."""
    timed = {c: [r["step_seconds"][warmup:] for r in rs] for c, rs in runs.items()}
    rounds = {c: [statistics.median(t) for t in ts] for c, ts in timed.items()}
    pooled = {c: statistics.median([s for t in ts for s in t]) for c, ts in timed.items()}
    out = {}
    for c, rs in runs.items():
        out[c] = {
            "median_step_s": round(pooled[c], 3),
            "mean_step_s": round(statistics.fmean([s for t in timed[c] for s in t]), 3),
            "round_medians_s": [round(m, 3) for m in rounds[c]],
            "timed_steps": sum(len(t) for t in timed[c]),
            **{k: rs[0].get(k) for k in ("n_frozen", "torch_threads", "lora_dropout", "rank_scaled_lora_layers")},
            "train_loss_by_round": [r["train_loss"] for r in rs],
        }
        if "before" in runs:
            out[c]["speedup_vs_before"] = round(pooled["before"] / pooled[c], 2)
            out[c]["speedup_by_round"] = [round(b / m, 2) for b, m in zip(rounds["before"], rounds[c], strict=True)]
    return out


def table(result: dict) -> str:
    lines = [
        f"CVSS training, s per optimizer step ({result['machine']}, {result['date']}; {result['n']} CVEs, "
        f"steps {result['warmup'] + 1}-{result['steps']} of each run, {result['rounds']} rounds)",
        "",
        "| configuration | what | median s / step | round medians | vs before (by round) |",
        "|---|---|---|---|---|",
    ]
    for c in result["configs"]:
        s = result["summary"][c["name"]]
        ratio = (
            f"{s['speedup_vs_before']}× ({', '.join(f'{r}×' for r in s['speedup_by_round'])})"
            if "speedup_vs_before" in s
            else "–"
        )
        rounds = ", ".join(str(m) for m in s["round_medians_s"])
        lines.append(f"| {c['name']} | {c['what']} | {s['median_step_s']} | {rounds} | {ratio} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DATA_DIR", REPO.parent / "shared" / "data")))
    ap.add_argument("--n", type=int, default=240, help="training CVEs (batches of the recipe's size)")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="first steps of each run left out of the times")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", help="comma-separated configuration names (default: all)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child), args.data, args.n, args.steps)))
        return
    if args.warmup >= args.steps:
        ap.error("--warmup must be below --steps")
    wanted = set(args.only.split(",")) if args.only else {c.name for c in CONFIGS}
    if unknown := wanted - {c.name for c in CONFIGS}:
        ap.error(f"unknown configurations {sorted(unknown)}; known: {[c.name for c in CONFIGS]}")
    configs = [c for c in CONFIGS if c.name in wanted and (c.name != "recipe-iomp" or IOMP.is_file())]
    runs: dict[str, list[dict]] = {c.name: [] for c in configs}
    for r in range(args.rounds):
        for c in configs:
            runs[c.name].append(run_one(c, args.data, args.n, args.steps, args.timeout))
            step = statistics.median(runs[c.name][-1]["step_seconds"][args.warmup :])
            print(f"round {r + 1}: {c.name} {step:.3f} s / step", flush=True)
    result = {
        "machine": machine(),
        "date": date.today().isoformat(),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip(),
        # uncommitted changes to the code: the commit alone does not say what ran
        "dirty": bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--", "training", "bench", ":(exclude)bench/results"],
                cwd=REPO,
                capture_output=True,
                text=True,
            ).stdout.strip()
        ),
        "n": args.n,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "configs": [
            {"name": c.name, "what": c.what, "env": c.env, "threads": c.threads, "peft_lora": c.peft_lora}
            for c in configs
        ],
        "summary": summarise(runs, args.warmup),
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"train-speed-{result['machine']}-{result['date']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(table(result))
    print(table(result))


if __name__ == "__main__":
    main()
