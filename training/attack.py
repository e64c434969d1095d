"""ATT&CK: sequence-classification head (LoRA + trained `score` head) over current top-level techniques.

Labels: every current Enterprise technique in the catalogue; CTI-HAL sub-techniques map to their
parent and revoked ids to their replacement. Each technique's catalogue description is added as a
training example so techniques absent from CTI-HAL can still be predicted. A temperature is fitted
on the held-out group's logits.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.torch import save_file

from training.artifacts import data_hash, draft_manifest, save_adapter_16bit
from training.base_model import resolve_base_model
from training.calibrate import fit_temperature
from training.catalogue import CATALOGUE_NAME, catalogue
from training.data import AttackExample, load_cti_hal
from training.manifest import AttackLabels, Manifest, TrainingData, write_artifact
from training.metrics import attack_metrics
from training.modeling import HEAD_FILE, load_tokenizer, new_sequence_classifier, pick_device, pick_dtype
from training.predict import attack_logits, render
from training.prompting import ATTACK_TEMPLATE
from training.split import split_attack
from training.trainer import TrainConfig, is_main_process, lora_config, train

log = logging.getLogger(__name__)
SPLIT_FILE = "split.json"
DEFAULT_VALIDATION_GROUPS = ("carbanak",)


def evaluate_attack_model(model, tokenizer, manifest: Manifest, examples: list[AttackExample]):
    """(metrics, logits, targets) with the manifest's temperature; folds for cross-fitting are reports."""
    index = {t.id: i for i, t in enumerate(manifest.labels.techniques)}
    logits = attack_logits(model, tokenizer, manifest, [e.text for e in examples]).numpy()
    targets = np.array([index[e.technique] for e in examples])
    folds = np.array([f"{e.group}/{e.report}" for e in examples])
    return attack_metrics(logits, targets, manifest.temperature, folds), logits, targets


def train_attack(
    data: Path,
    out: Path,
    base_model: str,
    cfg: TrainConfig,
    validation_groups: tuple[str, ...] = DEFAULT_VALIDATION_GROUPS,
    max_input_tokens: int = 256,
    use_catalogue: bool = True,
    name: str | None = None,
    limit_train: int = 0,
) -> Manifest:
    import torch
    from peft import get_peft_model

    started = time.time()
    cat = catalogue()
    labels = cat.labels()
    index = {t.id: i for i, t in enumerate(labels)}
    examples, dropped = load_cti_hal(data, cat.remap)
    examples = [e for e in examples if e.technique in index]
    train_ex, val_ex = split_attack(examples, validation_groups)
    if limit_train:
        train_ex = train_ex[:limit_train]
    extra = [AttackExample(cat.description(t.id), t.id, "catalogue", "catalogue", CATALOGUE_NAME) for t in labels]
    log.info(
        "ATT&CK: %d training items (+%d catalogue descriptions), %d validation items from %s; dropped %s",
        len(train_ex),
        len(extra) if use_catalogue else 0,
        len(val_ex),
        validation_groups,
        dict(dropped),
    )
    fit_ex = train_ex + (extra if use_catalogue else [])

    base_path = resolve_base_model(base_model)
    tokenizer = load_tokenizer(base_path)
    draft = draft_manifest(
        task="attack",
        out=out,
        name=name,
        base_model=base_model,
        prompt_template=ATTACK_TEMPLATE,
        max_input_tokens=max_input_tokens,
        labels=AttackLabels(catalogue=CATALOGUE_NAME, techniques=labels),
        cfg=cfg,
        training_data=TrainingData(
            sources=[str(Path(data).name)],
            sha256=data_hash([(e.text, e.technique, e.group, e.report) for e in examples]),
            n_train=len(fit_ex),
            n_validation=len(val_ex),
            split=f"by threat group: validation = {', '.join(validation_groups)}",
            notes={"dropped_labels": dict(dropped), "catalogue_examples": len(extra) if use_catalogue else 0},
        ),
        catalogue_examples=use_catalogue,
    )
    model = new_sequence_classifier(base_path, len(labels), tokenizer.pad_token_id, torch.float32)
    model = get_peft_model(model, lora_config(cfg, None, model.config.num_hidden_layers))
    head = model.get_base_model().score
    head.weight.requires_grad_(True)  # trained in full beside the LoRA, saved apart as head.safetensors
    model.print_trainable_parameters()
    rows = [
        {
            "input_ids": tokenizer.encode(render(tokenizer, draft, e.text)[0], add_special_tokens=False),
            "labels": index[e.technique],
        }
        for e in fit_ex
    ]
    with tempfile.TemporaryDirectory() as work:
        stats = train(model, rows, tokenizer.pad_token_id, cfg, work)

    if not is_main_process():
        return draft
    device = pick_device()
    model.eval().to(device, dtype=pick_dtype(device))
    raw_metrics, logits, targets = evaluate_attack_model(model, tokenizer, draft, val_ex)
    temperature = fit_temperature(logits, targets)
    draft = draft.model_copy(update={"temperature": temperature})
    metrics, _, _ = evaluate_attack_model(model, tokenizer, draft, val_ex)
    metrics["train_seconds"] = round(time.time() - started, 1)
    metrics.update({f"train_{k}": v for k, v in stats.items()})
    log.info("ATT&CK validation: %s", json.dumps(metrics))

    def write(d: Path) -> None:
        save_adapter_16bit(model, d)
        save_file({"weight": head.weight.detach().to(torch.bfloat16).contiguous().cpu()}, str(d / HEAD_FILE))
        groups = sorted({e.group for e in train_ex})
        (d / SPLIT_FILE).write_text(json.dumps({"train_groups": groups, "validation_groups": list(validation_groups)}))

    return write_artifact(Path(out), draft.model_copy(update={"metrics": metrics}), write)
