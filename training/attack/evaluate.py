"""`evaluate --task attack`: score an ATT&CK artifact on threat groups it did not train on, beside TF-IDF +
LR; for an artifact trained on every group, its recorded out-of-fold figures; write report/."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from scipy.special import softmax

from training.artifact.layout import REPORT_DIR
from training.artifact.loading import (
    base_for,
    load_attack_classifier,
    load_tokenizer,
    pick_device,
    pick_dtype,
)
from training.artifact.manifest import AttackSplit, Manifest, load_manifest, load_split
from training.attack.cross_validation import EXCERPT_KEYS, SUMMARY_KEYS, excerpt_ids, honest_attack_metrics
from training.evaluation.baseline import attack_baseline
from training.evaluation.report import write_json

log = logging.getLogger(__name__)
REPORT_KEYS = (*SUMMARY_KEYS, *EXCERPT_KEYS, "ece_calibrated_crossfit", "n_calibration_scored")


def evaluate_attack(artifact: Path, data: Path, base_model: str | None = None) -> dict:
    from training.attack.catalogue import catalogue
    from training.attack.train import evaluate_attack_model, extra_rows
    from training.data import load_cti_hal
    from training.evaluation.plots import reliability_diagram

    manifest = load_manifest(artifact)
    split = load_split(artifact)
    cat = catalogue()
    ids = [t.id for t in manifest.labels.techniques]
    index = set(ids)
    examples, dropped = load_cti_hal(data, cat.remap)
    examples = [e for e in examples if e.technique in index]
    seen = set(split.train_groups) if isinstance(split, AttackSplit) else set()
    fit_groups = split.temperature_fit_groups if isinstance(split, AttackSplit) else []
    test = [e for e in examples if e.group not in seen]
    train = [e for e in examples if e.group in seen]
    if not test:
        if "mean" in manifest.metrics:
            log.info("every group in --data was trained on; reporting the manifest's cross-validation")
            return _cross_validation_report(manifest)
        raise ValueError(f"every group in --data was used in training ({sorted(seen)}); nothing honest to evaluate")
    log.info("evaluating on %d items (%d excluded: groups seen in training)", len(test), len(train))
    device = pick_device()
    base = base_for(manifest, base_model)
    tokenizer = load_tokenizer(base)
    model = load_attack_classifier(artifact, manifest, base, tokenizer.pad_token_id, device, pick_dtype(device))
    logits, targets = evaluate_attack_model(model, tokenizer, manifest, test)
    groups = [e.group for e in test]
    metrics = honest_attack_metrics(
        logits,
        targets,
        groups,
        [f"{e.group}/{e.report}" for e in test],
        manifest.temperature,
        fit_groups,
        excerpt_ids(test),
    )
    report = {
        "task": "attack",
        "artifact": manifest.name,
        "version": manifest.version,
        "model": metrics,
        "excluded_seen_in_training": len(train),
        "temperature_fit_groups": list(fit_groups),
        "dropped_labels": dict(dropped),
    }
    if train:
        hp = manifest.hyperparameters  # the baseline trains on what the model trained on
        # the rows as training built them: from the groups it knew, less those tied to its validation groups
        known = seen | set(split.validation_groups)
        rows = extra_rows(
            manifest.labels.techniques,
            [e for e in examples if e.group in known],
            hp.get("catalogue_examples", True),
            hp.get("procedures", 0),
            hp.get("rationales", False),
        )
        extra = [r for r in rows if r.trains_without(split.validation_groups)]
        report["tfidf_logreg"] = attack_baseline(train + extra, test, ids, excerpt_ids(test))
    out = artifact / REPORT_DIR
    out.mkdir(exist_ok=True)
    raw, cal = softmax(logits, axis=1), softmax(logits / manifest.temperature, axis=1)
    correct = raw.argmax(1) == targets
    curves = {"uncalibrated": (raw.max(1), correct)}
    unfitted = ~np.isin(groups, fit_groups)
    if unfitted.any():  # calibration is only ever shown on groups the temperature did not see
        curves[f"T={manifest.temperature:.2f}"] = (cal.max(1)[unfitted], correct[unfitted])
    reliability_diagram(out / "reliability_attack.png", "ATT&CK top-1 probability", curves)
    order = np.argsort(-cal, axis=1)[:, :5]
    with (out / "predictions_attack.jsonl").open("w") as fh:
        for e, row, p in zip(test, order, cal, strict=True):
            fh.write(
                json.dumps(
                    {
                        "text": e.text,
                        "truth": e.technique,
                        "group": e.group,
                        "top5": [[ids[j], float(p[j])] for j in row],
                    }
                )
                + "\n"
            )
    write_json(out / "metrics_attack.json", report)
    return report


def _cross_validation_report(manifest: Manifest) -> dict:
    """The out-of-fold figures training recorded, labelled as such (group means)."""
    m, base = manifest.metrics, manifest.metrics.get("tfidf_logreg", {})
    n = sum(g.get("n", 0) for g in m.get("per_group", {}).values())
    return {
        "task": "attack",
        "artifact": manifest.name,
        "version": manifest.version,
        "source": m.get("validation", "cross-validation"),
        "model": {"n": n, **m["mean"]},
        "model_std": m.get("std", {}),
        **({"tfidf_logreg": {"n": n, **base["mean"]}} if "mean" in base else {}),
    }
