"""`evaluate`: score an artifact on data it did not train on, beside the TF-IDF baseline; write report/."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from scipy.special import softmax

from training.baseline import attack_baseline, cvss_baseline, cvss_majority
from training.manifest import Manifest, load_manifest
from training.modeling import (
    base_for,
    load_attack_classifier,
    load_causal_lm_with_adapter,
    load_tokenizer,
    pick_device,
    pick_dtype,
)

log = logging.getLogger(__name__)
REPORT_DIR = "report"


def _split(artifact: Path) -> dict:
    f = artifact / "split.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def evaluate_cvss(artifact: Path, data: list[Path], base_model: str | None = None) -> dict:
    from training.cvss import evaluate_cvss_model
    from training.data import load_cvss
    from training.plots import confusion_matrix, reliability_diagram

    manifest = load_manifest(artifact)
    examples = load_cvss(data)
    seen = set(_split(artifact).get("train_ids", []))
    test = [e for e in examples if e.cve_id not in seen]
    train = [e for e in examples if e.cve_id in seen]
    if not test:
        raise ValueError("every CVE in --data was used in training; nothing honest to evaluate")
    log.info("evaluating on %d CVEs (%d excluded: seen in training)", len(test), len(train))
    device = pick_device()
    base = base_for(manifest, base_model)
    tokenizer = load_tokenizer(base)
    model = load_causal_lm_with_adapter(artifact, base, device, pick_dtype(device))
    metrics, probs = evaluate_cvss_model(model, tokenizer, manifest, test)
    predicted = [{k: max(p[k], key=p[k].get) for k in p} for p in probs]
    keys = [m.key for m in manifest.labels.metrics]
    report = {
        "task": "cvss",
        "artifact": manifest.name,
        "version": manifest.version,
        "model": metrics,
        "excluded_seen_in_training": len(train),
    }
    if train:
        report["tfidf_logreg"] = cvss_baseline(train, test, keys)
        report["majority_class"] = cvss_majority(train, test, keys)
    out = artifact / REPORT_DIR
    out.mkdir(exist_ok=True)
    conf = [max(p[k].values()) for p in probs for k in keys]
    corr = [pr[k] == e.values[k] for pr, e in zip(predicted, test, strict=True) for k in keys]
    reliability_diagram(out / "reliability_cvss.png", "CVSS per-metric probabilities", {"model": (conf, corr)})
    for m in manifest.labels.metrics:
        confusion_matrix(
            out / f"confusion_{m.key}.png",
            f"{m.name} ({m.key})",
            [e.values[m.key] for e in test],
            [p[m.key] for p in predicted],
            list(m.values),
        )
    with (out / "predictions_cvss.jsonl").open("w") as fh:
        for e, p, pr in zip(test, predicted, probs, strict=True):
            fh.write(json.dumps({"cve_id": e.cve_id, "truth": e.values, "predicted": p, "probabilities": pr}) + "\n")
    _write_json(out / "metrics_cvss.json", report)
    return report


def evaluate_attack(artifact: Path, data: Path, base_model: str | None = None) -> dict:
    from training.attack import evaluate_attack_model
    from training.catalogue import CATALOGUE_NAME, catalogue
    from training.data import AttackExample, load_cti_hal
    from training.plots import reliability_diagram

    manifest = load_manifest(artifact)
    cat = catalogue()
    ids = [t.id for t in manifest.labels.techniques]
    index = set(ids)
    examples, dropped = load_cti_hal(data, cat.remap)
    examples = [e for e in examples if e.technique in index]
    seen = set(_split(artifact).get("train_groups", []))
    test = [e for e in examples if e.group not in seen]
    train = [e for e in examples if e.group in seen]
    if not test:
        raise ValueError(f"every group in --data was used in training ({sorted(seen)}); nothing honest to evaluate")
    log.info("evaluating on %d items (%d excluded: groups seen in training)", len(test), len(train))
    device = pick_device()
    base = base_for(manifest, base_model)
    tokenizer = load_tokenizer(base)
    model = load_attack_classifier(artifact, manifest, base, tokenizer.pad_token_id, device, pick_dtype(device))
    metrics, logits, targets = evaluate_attack_model(model, tokenizer, manifest, test)
    report = {
        "task": "attack",
        "artifact": manifest.name,
        "version": manifest.version,
        "model": metrics,
        "excluded_seen_in_training": len(train),
        "dropped_labels": dict(dropped),
    }
    if train and manifest.hyperparameters.get("catalogue_examples", True):
        extra = [AttackExample(cat.description(t), t, "catalogue", "catalogue", CATALOGUE_NAME) for t in ids]
        report["tfidf_logreg"] = attack_baseline(train + extra, test, ids)
    elif train:
        report["tfidf_logreg"] = attack_baseline(train, test, ids)
    out = artifact / REPORT_DIR
    out.mkdir(exist_ok=True)
    raw, cal = softmax(logits, axis=1), softmax(logits / manifest.temperature, axis=1)
    correct = raw.argmax(1) == targets
    reliability_diagram(
        out / "reliability_attack.png",
        "ATT&CK top-1 probability",
        {"uncalibrated": (raw.max(1), correct), f"T={manifest.temperature:.2f}": (cal.max(1), correct)},
    )
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
    _write_json(out / "metrics_attack.json", report)
    return report


def format_report(report: dict) -> str:
    """A small text table: model beside the baselines on the headline metrics."""
    keys = (
        [
            "mean_metric_accuracy",
            "exact_vector_match",
            "base_score_mae",
            "severity_accuracy",
            "ece_metric_probabilities",
        ]
        if report["task"] == "cvss"
        else [
            "top1",
            "top5",
            "macro_f1",
            "nll_uncalibrated",
            "nll_calibrated",
            "ece_uncalibrated",
            "ece_calibrated",
            "ece_calibrated_crossfit",
        ]
    )
    cols = [c for c in ("model", "tfidf_logreg", "majority_class") if c in report]
    lines = [
        f"{report['task']} / {report['artifact']} ({report['version']}), n={report['model']['n']}",
        f"{'metric':<28}" + "".join(f"{c:>16}" for c in cols),
    ]
    for k in keys:
        vals = [report[c].get(k) for c in cols]
        lines.append(f"{k:<28}" + "".join(f"{v:>16.4f}" if isinstance(v, (int, float)) else f"{'-':>16}" for v in vals))
    return "\n".join(lines)


__all__ = ["Manifest", "evaluate_attack", "evaluate_cvss", "format_report"]
