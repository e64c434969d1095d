"""Evaluation metrics for both tasks (used by training for the manifest and by `evaluate`)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
from scipy.special import softmax

from training.artifact.scoring import score_vector
from training.evaluation.calibrate import cross_fitted_temperature_ece, cvss_ece, ece, ece_floor, nll


def cvss_metrics(
    metric_keys: Sequence[str],
    predicted: Sequence[dict[str, str]],
    truth: Sequence[dict[str, str]],
    probabilities: Sequence[dict[str, dict[str, float]]] | None = None,
    vector_of=lambda values: "CVSS:3.1/" + "/".join(f"{k}:{v}" for k, v in values.items()),
) -> dict[str, float]:
    n = len(truth)
    per = {k: float(np.mean([p[k] == t[k] for p, t in zip(predicted, truth, strict=True)])) for k in metric_keys}
    scored_p = [score_vector(vector_of(p)) for p in predicted]
    scored_t = [score_vector(vector_of(t)) for t in truth]
    out: dict[str, float] = {
        "n": n,
        "mean_metric_accuracy": float(np.mean(list(per.values()))),
        **{f"accuracy_{k}": v for k, v in per.items()},
        "exact_vector_match": float(
            np.mean([all(p[k] == t[k] for k in metric_keys) for p, t in zip(predicted, truth, strict=True)])
        ),
        "base_score_mae": float(np.mean([abs(a[0] - b[0]) for a, b in zip(scored_p, scored_t, strict=True)])),
        "severity_accuracy": float(np.mean([a[1] == b[1] for a, b in zip(scored_p, scored_t, strict=True)])),
        "distinct_predicted_vectors": len({vector_of(p) for p in predicted}),
    }
    if probabilities is not None:
        out["ece_metric_probabilities"] = cvss_ece(probabilities, truth)
    return out


def attack_metrics(
    logits: np.ndarray, targets: np.ndarray, temperature: float, folds: np.ndarray | None = None
) -> dict[str, float]:
    """Top-1/top-5/macro-F1 (over labels present in the targets), NLL and ECE before/after temperature.

    `ece_calibrated_crossfit` scales each fold (report) by a temperature fitted on the others.
    """
    from sklearn.metrics import f1_score

    order = np.argsort(-logits, axis=1)
    top1 = order[:, 0]
    p_raw = softmax(logits, axis=1)
    p_cal = softmax(logits / temperature, axis=1)
    out = {
        "n": int(len(targets)),
        "top1": float(np.mean(top1 == targets)),
        "top5": float(np.mean([t in row[:5] for t, row in zip(targets, order, strict=True)])),
        "macro_f1": float(f1_score(targets, top1, labels=np.unique(targets), average="macro", zero_division=0)),
        "nll_uncalibrated": nll(logits, targets),
        "nll_calibrated": nll(logits, targets, temperature),
        "ece_uncalibrated": ece(p_raw.max(1), top1 == targets),
        "ece_calibrated": ece(p_cal.max(1), top1 == targets),
        # what a perfectly calibrated model with these confidences would score on this many rows
        "ece_calibrated_floor": ece_floor(p_cal.max(1)),
        "temperature": float(temperature),
    }
    if folds is not None and len(np.unique(folds)) > 1:
        out["ece_calibrated_crossfit"], out["nll_calibrated_crossfit"] = cross_fitted_temperature_ece(
            logits, targets, folds
        )
    return out


def shared_excerpt_metrics(logits: np.ndarray, targets: np.ndarray, excerpts: Sequence[str]) -> dict[str, float]:
    """Top-1 where one excerpt carries several rows with different labels (two annotators, or two
    techniques in one sentence): then at most one of those rows can be right at top-1.

    `top1_any_label`: the top-1 is one of the labels annotated on its excerpt. `top1_ceiling`: the best
    row-level top-1 any single answer per excerpt could reach on these rows."""
    labels_of: dict[str, list[int]] = defaultdict(list)
    for e, t in zip(excerpts, targets, strict=True):
        labels_of[e].append(int(t))
    top1 = np.asarray(logits).argmax(1)
    return {
        "top1_any_label": float(np.mean([int(p) in labels_of[e] for p, e in zip(top1, excerpts, strict=True)])),
        "top1_ceiling": sum(Counter(v).most_common(1)[0][1] for v in labels_of.values()) / len(targets),
    }


ABSTENTION_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def precision_coverage(
    confidence: np.ndarray, correct: np.ndarray, thresholds: Sequence[float] = ABSTENTION_THRESHOLDS
) -> list[dict[str, float]]:
    """Per `min_confidence` threshold: the share of answers kept (coverage) and their accuracy (precision)."""
    conf, ok = np.asarray(confidence, float), np.asarray(correct, bool)
    rows = []
    for t in thresholds:
        kept = conf >= t
        rows.append(
            {
                "min_confidence": t,
                "coverage": float(kept.mean()),
                "precision": float(ok[kept].mean()) if kept.any() else float("nan"),
            }
        )
    return rows
