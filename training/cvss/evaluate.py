"""`evaluate --task cvss`: score a CVSS artifact on CVEs it did not train on, beside TF-IDF + LR and the
majority class; write report/."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from training.artifact.layout import REPORT_DIR
from training.artifact.loading import (
    base_for,
    load_causal_lm_with_adapter,
    load_tokenizer,
    pick_device,
    pick_dtype,
)
from training.artifact.manifest import CvssSplit, Manifest, load_manifest, load_split
from training.evaluation.baseline import cvss_baseline, cvss_majority
from training.evaluation.report import write_json

log = logging.getLogger(__name__)
REPORT_KEYS = (
    "mean_metric_accuracy",
    "exact_vector_match",
    "base_score_mae",
    "severity_accuracy",
    "distinct_predicted_vectors",
    "ece_metric_probabilities",
    "ece_uncalibrated",
    "ece_calibrated_crossfit",
)


def evaluate_cvss(artifact: Path, data: list[Path], base_model: str | None = None) -> dict:
    from training.cvss.train import evaluate_cvss_model
    from training.data import load_cvss
    from training.evaluation.plots import confusion_matrix, reliability_diagram

    manifest = load_manifest(artifact)
    examples = load_cvss(data)
    split = load_split(artifact)
    seen = set(split.train_ids) if isinstance(split, CvssSplit) else set()
    test = [e for e in examples if e.cve_id not in seen]
    train = [e for e in examples if e.cve_id in seen]
    if not test:
        if isinstance(split, CvssSplit) and split.selection_ids:
            log.info("every CVE in --data was trained on; reporting the validation run's recorded figures")
            return _validation_run_report(manifest, split, examples)
        raise ValueError("every CVE in --data was used in training; nothing honest to evaluate")
    log.info("evaluating on %d CVEs (%d excluded: seen in training)", len(test), len(train))
    device = pick_device()
    base = base_for(manifest, base_model)
    tokenizer = load_tokenizer(base)
    model = load_causal_lm_with_adapter(artifact, base, device, pick_dtype(device))
    metrics, probs = evaluate_cvss_model(model, tokenizer, manifest, test)
    _honest_cvss_calibration(metrics, probs, test, manifest, split)
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
    write_json(out / "metrics_cvss.json", report)
    return report


def _validation_run_report(manifest: Manifest, split: CvssSplit, examples) -> dict:
    """A refit on every CVE (`refit-cvss`): the figures its validation run recorded on the CVEs it held out,
    labelled as such, beside TF-IDF + LR and the majority class trained on that run's training CVEs."""
    held_out = set(split.selection_ids)
    test = [e for e in examples if e.cve_id in held_out]
    train = [e for e in examples if e.cve_id not in held_out and e.cve_id in set(split.train_ids)]
    keys = [m.key for m in manifest.labels.metrics]
    recorded = {k: v for k, v in manifest.metrics.items() if isinstance(v, (int, float)) and k != "n"}
    report = {
        "task": "cvss",
        "artifact": manifest.name,
        "version": manifest.version,
        "source": manifest.metrics.get("validation", "the validation run"),
        "model": {"n": manifest.metrics.get("n", len(held_out)), **recorded},
        "excluded_seen_in_training": len(examples),
    }
    if len(test) == len(held_out) and train:
        report["tfidf_logreg"] = cvss_baseline(train, test, keys)
        report["majority_class"] = cvss_majority(train, test, keys)
    return report


def recorded_baseline(artifact: Path, manifest: Manifest, data: list[Path]) -> dict:
    """TF-IDF + LR trained on the CVEs the recorded figures' model trained on, scored on the CVEs those
    figures are of: the baseline a CVSS manifest records beside its own figures."""
    from training.data import load_cvss

    split = load_split(artifact)
    scored = set(split.scored_ids)
    examples = load_cvss(data)
    test = [e for e in examples if e.cve_id in scored]
    train = [e for e in examples if e.cve_id in set(split.train_ids) and e.cve_id not in scored]
    if len(test) != len(scored) or not train:
        raise ValueError(f"the data holds {len(test)} of the {len(scored)} CVEs the artifact's figures are of")
    return cvss_baseline(train, test, [m.key for m in manifest.labels.metrics])


def _honest_cvss_calibration(metrics: dict, probs, test, manifest: Manifest, split) -> None:
    """Calibration scored only where the temperature was not fitted: the CVEs the artifact validated on
    fitted it, so on those the temperature's effect is scored cross-fitted (by halves) instead."""
    from training.artifact.encoding import sharpen
    from training.evaluation.calibrate import cross_fitted_cvss_ece, cvss_ece
    from training.evaluation.split import calibration_halves

    fitted_ids = set(split.validation_ids) if isinstance(split, CvssSplit) and manifest.temperature != 1.0 else set()
    fitted = [e.cve_id in fitted_ids for e in test]
    out = metrics
    out["n_calibration_scored"] = fitted.count(False)
    unfitted = [i for i, f in enumerate(fitted) if not f]
    if unfitted:
        out["ece_metric_probabilities"] = cvss_ece([probs[i] for i in unfitted], [test[i].values for i in unfitted])
    else:
        out.pop("ece_metric_probabilities", None)
    if any(fitted):
        idx = [i for i, f in enumerate(fitted) if f]
        raw = [{k: sharpen(p, 1 / manifest.temperature) for k, p in probs[i].items()} for i in idx]  # undo T
        truth = [test[i].values for i in idx]
        out["ece_uncalibrated"] = cvss_ece(raw, truth)
        halves = calibration_halves([test[i].cve_id for i in idx])
        out["ece_calibrated_crossfit"] = cross_fitted_cvss_ece(raw, truth, halves)
