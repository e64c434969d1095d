"""The seed notebook's CVSS method, for the side-by-side benchmark: 8 prompts per description (one per
metric), each answered with the metric's word label ("Network", "Adjacent Network", ...).

`python -m bench.seed_method train` fine-tunes a LoRA for that format with the default artifact's LoRA
settings, on the same training CVEs (its split.json), for the same number of optimizer steps (equal
compute), and saves it as PEFT safetensors to models/seed-cvss-adapter (outside git).
`python -m bench.run --seed-method` then serves both adapters from one vLLM engine and compares speed and
validation accuracy (`compare`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import tempfile
import time
from pathlib import Path

from bench.load import run_concurrent
from training.artifact.manifest import load_split

REPO = Path(__file__).resolve().parent.parent
CVSS_ART = REPO / "artifacts" / "cvss-default"
SEED_ADAPTER = REPO / "models" / "seed-cvss-adapter"
SEED_PROMPT = (
    "Analyze the following CVE description and determine its CVSS v3.1 {name} ({key}).\n"
    "CVE Description: {text}\nValid options: {options}.\n{name}:"
)


def seed_prompts(labels, text: str) -> list[str]:
    """One prompt per metric, in metric order; `text` is already truncated as the manifest says."""
    return [
        SEED_PROMPT.format(name=m.name, key=m.key, text=text, options=", ".join(m.values.values()))
        for m in labels.metrics
    ]


def word_choices(labels) -> list[list[str]]:
    """Per metric, the allowed answers as the model writes them (a space, then the word label)."""
    return [[" " + w for w in m.values.values()] for m in labels.metrics]


class _LeftPad:
    """Left-pads token ids (every row ends with its answer); stacks the equal-length labels."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, feats):
        import torch

        n = max(len(f["input_ids"]) for f in feats)
        ids = torch.full((len(feats), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(feats), n), dtype=torch.long)
        for i, f in enumerate(feats):
            ids[i, n - len(f["input_ids"]) :] = torch.tensor(f["input_ids"])
            mask[i, n - len(f["input_ids"]) :] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([f["labels"] for f in feats])}


def _seed_trainer():
    """The seed's loss: full-vocabulary cross-entropy on the answer tokens (-100 elsewhere)."""
    import torch
    from transformers import Trainer

    class SeedTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            out = model(**inputs, logits_to_keep=labels.shape[1] + 1)
            logits = out.logits[:, :-1, :].float()
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100
            )
            return (loss, out) if return_outputs else loss

    return SeedTrainer


def train(data: Path, steps: int | None, out: Path) -> dict:
    from training.artifact.loading import base_for, load_tokenizer
    from training.artifact.manifest import load_manifest
    from training.artifact.prompting import truncate
    from training.artifact_writer import save_adapter_16bit
    from training.cvss.train import fresh_model
    from training.data import load_cvss
    from training.fitting.trainer import TrainConfig
    from training.fitting.trainer import train as run_trainer

    manifest = load_manifest(CVSS_ART)
    hp = manifest.hyperparameters
    base = base_for(manifest)
    tok = load_tokenizer(base)
    split = load_split(CVSS_ART)
    # the validation run's training CVEs: the default, a refit on every CVE, trained on its validation ones too
    train_ids = set(split.train_ids) - set(split.selection_ids)
    examples = [e for e in load_cvss([data]) if e.cve_id in train_ids]
    labels = manifest.labels
    choices = word_choices(labels)
    rows = []
    for e in examples:
        text = truncate(tok, e.description, manifest.max_input_tokens)[0]
        for m, prompt, allowed in zip(labels.metrics, seed_prompts(labels, text), choices, strict=True):
            answer = tok.encode(allowed[list(m.values).index(e.values[m.key])], add_special_tokens=False)
            rows.append({"input_ids": tok.encode(prompt, add_special_tokens=False) + answer, "labels": answer})
    width = max(len(r["labels"]) for r in rows)
    for r in rows:  # equal-length labels; -100 (ignored by the loss) on the prompt tokens before short answers
        r["labels"] = [-100] * (width - len(r["labels"])) + r["labels"]
    # Equal compute: as many optimizer steps of the same batch size as the default adapter took.
    ours_steps = math.ceil(manifest.training_data.n_train / int(hp["batch_size"])) * float(hp["epochs"])
    steps = steps or int(ours_steps)
    cfg = TrainConfig(
        learning_rate=float(hp["learning_rate"]),
        batch_size=int(hp["batch_size"]),
        lora_r=int(hp["lora_r"]),
        lora_alpha=int(hp["lora_alpha"]),
        lora_layers=int(hp["lora_layers"]),
        seed=int(hp["seed"]),
        max_steps=steps,
    )
    model = fresh_model(base, tok.pad_token_id, cfg)
    started = time.time()
    with tempfile.TemporaryDirectory() as work:
        stats = run_trainer(model, rows, cfg, work, _seed_trainer(), collator=_LeftPad(tok.pad_token_id))
    info = {
        "steps": steps,
        "default_adapter_steps": ours_steps,
        "train_rows": len(rows),
        "train_cves": len(examples),
        "train_seconds": round(time.time() - started, 1),
        "train_loss": stats.get("train_loss"),
    }
    staging = Path(tempfile.mkdtemp(dir=out.parent if out.parent.exists() else None, prefix=".seed-"))
    save_adapter_16bit(model, staging)
    (staging / "seed-training.json").write_text(json.dumps(info, indent=2))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(staging, out)
    return info


def _median_of(runs: list[dict], key: str = "items_per_s") -> dict:
    return sorted(runs, key=lambda r: r[key])[len(runs) // 2]


def compare(examples: list, repeats: int) -> dict:
    """Our one constrained pass vs the seed's 8 prompts per description, on one vLLM engine serving both
    LoRA adapters (same engine, same adapter family), at concurrency 16; accuracy on the same CVEs."""
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import StructuredOutputsParams

    from service.models.cvss import CvssModel
    from service.settings import Settings
    from training.artifact.prompting import truncate

    trained_on = set(load_split(CVSS_ART).train_ids)

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
                ids = model.tokenizer.encode(prompt, add_special_tokens=False)  # as seed training encoded it
                completion = await model.generate(ids, sp, lora_request=seed_lora)
                return list(m.values)[allowed.index(completion.text)]

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
            "ours_c16": _median_of(ours_runs),
            "seed_8_prompts_c16": _median_of(seed_runs),
            # none when the default trained on these CVEs (a refit on every CVE): it would be in-sample
            "ours_accuracy": None if trained_on & {e.cve_id for e in examples} else _accuracy(predicted, truths),
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("command", choices=["train"])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DATA_DIR", REPO.parent / "shared" / "data")))
    ap.add_argument("--steps", type=int, default=0, help="0: as many as the default adapter took")
    ap.add_argument("--out", type=Path, default=SEED_ADAPTER)
    args = ap.parse_args()
    tsv = args.data / "cti-vsp" / "cti-vsp.tsv" if args.data.is_dir() else args.data
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(json.dumps(train(tsv, args.steps or None, args.out), indent=2))


if __name__ == "__main__":
    main()
