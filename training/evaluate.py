"""`evaluate`: score an artifact on data it did not train on, beside the TF-IDF baseline; write report/."""

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
    load_causal_lm_with_adapter,
    load_tokenizer,
    pick_device,
    pick_dtype,
)
from training.artifact.manifest import AttackSplit, CvssSplit, Manifest, load_manifest, load_split
from training.attack_cv import EXCERPT_KEYS, SUMMARY_KEYS, excerpt_ids, honest_attack_metrics
from training.baseline import attack_baseline, cvss_baseline, cvss_majority

log = logging.getLogger(__name__)


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
    _write_json(out / "metrics_cvss.json", report)
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
    from training.calibrate import cross_fitted_cvss_ece, cvss_ece
    from training.split import calibration_halves

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


def evaluate_attack(artifact: Path, data: Path, base_model: str | None = None) -> dict:
    from training.attack import evaluate_attack_model, extra_rows
    from training.catalogue import catalogue
    from training.data import load_cti_hal
    from training.plots import reliability_diagram

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
    _write_json(out / "metrics_attack.json", report)
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


def format_report(report: dict) -> str:
    """A small text table: model beside the baselines on the headline metrics."""
    keys = (
        [
            "mean_metric_accuracy",
            "exact_vector_match",
            "base_score_mae",
            "severity_accuracy",
            "distinct_predicted_vectors",
            "ece_metric_probabilities",
            "ece_uncalibrated",
            "ece_calibrated_crossfit",
        ]
        if report["task"] == "cvss"
        else [*SUMMARY_KEYS, *EXCERPT_KEYS, "ece_calibrated_crossfit", "n_calibration_scored"]
    )
    cols = [c for c in ("model", "tfidf_logreg", "majority_class") if c in report]
    lines = [
        f"{report['task']} / {report['artifact']} ({report['version']}), n={report['model']['n']}",
        f"{'metric':<28}" + "".join(f"{c:>16}" for c in cols),
    ]
    if report.get("source"):  # figures recorded in training, not scored now
        lines.insert(1, f"recorded: {report['source']}")
    for k in keys:
        vals = [report[c].get(k) for c in cols]
        lines.append(f"{k:<28}" + "".join(f"{v:>16.4f}" if isinstance(v, (int, float)) else f"{'-':>16}" for v in vals))
    if report.get("abstention"):
        lines += ["", f"choosing min_confidence ({report['abstention_source']}):", "threshold  coverage  precision"]
        lines += [  # precision is None where no answer reaches the threshold
            f"{r['min_confidence']:>9.2f}  {r['coverage']:>8.3f}  "
            + (f"{r['precision']:>9.3f}" if r["precision"] is not None else f"{'-':>9}")
            for r in report["abstention"]
        ]
    return "\n".join(lines)


__all__ = ["Manifest", "evaluate_attack", "evaluate_cvss", "format_report"]
