"""Decode cost of the CVSS answer format: our 8-token answer vs the 31-token `AV:N/AC:L/...` string.

Same engine, same adapter, same prompts (validation CVEs), warm-up excluded; constrained decoding
either way. Run: .venv/bin/python bench/answer_format.py --data ../shared/data/cti-vsp/cti-vsp.tsv
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", default="artifacts/cvss-default")
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import StructuredOutputsParams

    from training.data import load_cvss
    from training.manifest import load_manifest
    from training.modeling import base_for, load_tokenizer
    from training.predict import render

    artifact = Path(args.artifact).resolve()
    manifest = load_manifest(artifact)
    base = base_for(manifest)
    tok = load_tokenizer(base)
    val = set(json.loads((artifact / "split.json").read_text())["validation_ids"])
    texts = [e.description for e in load_cvss([Path(args.data)]) if e.cve_id in val][: args.n]
    prompts = [render(tok, manifest, t)[0] for t in texts]
    long_regex = "/".join(f"{m.key}:[{''.join(m.values)}]" for m in manifest.labels.metrics)
    formats = {
        "8-token (ours)": (manifest.labels.answer_regex(), len(manifest.labels.metrics)),
        "31-token AV:N/AC:L/...": (long_regex, 40),
    }
    llm = LLM(
        model=base,
        dtype="bfloat16",
        max_model_len=1024,
        enforce_eager=True,
        enable_lora=True,
        max_lora_rank=16,
        logprobs_mode="processed_logprobs",
    )
    lora = LoRARequest("cvss", 1, str(artifact))
    results = {}
    for name, (regex, max_tokens) in formats.items():
        sp = SamplingParams(
            temperature=0, max_tokens=max_tokens, logprobs=4, structured_outputs=StructuredOutputsParams(regex=regex)
        )
        llm.generate(prompts[:4], sp, lora_request=lora, use_tqdm=False)  # warm-up
        times, tokens = [], 0
        for _ in range(args.repeats):
            t = time.perf_counter()
            outs = llm.generate(prompts, sp, lora_request=lora, use_tqdm=False)
            times.append(time.perf_counter() - t)
            tokens = statistics.mean(len(o.outputs[0].token_ids) for o in outs)
        results[name] = {
            "median_s": statistics.median(times),
            "desc_per_s": len(prompts) / statistics.median(times),
            "mean_generated_tokens": tokens,
        }
    ours, seed = results["8-token (ours)"], results["31-token AV:N/AC:L/..."]
    results["speedup_desc_per_s"] = ours["desc_per_s"] / seed["desc_per_s"]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
