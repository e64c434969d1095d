"""Cross-group validation bookkeeping for ATT&CK: per-group metrics, their mean and spread, and
calibration that is never scored on the logits its temperature was fitted on."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from training.data import AttackExample
from training.evaluation.calibrate import fit_temperature
from training.evaluation.metrics import attack_metrics, shared_excerpt_metrics

# The headline numbers averaged over held-out groups (each group weighs the same, whatever its size).
SUMMARY_KEYS = (
    "top1",
    "top5",
    "macro_f1",
    "nll_uncalibrated",
    "nll_calibrated",
    "ece_uncalibrated",
    "ece_calibrated",
    "ece_calibrated_floor",
)
EXCERPT_KEYS = ("top1_any_label", "top1_ceiling")  # where the rows' excerpts are known


def excerpt_ids(examples: Sequence[AttackExample]) -> list[str]:
    """One id per distinct excerpt of a group (case and spacing ignored): rows sharing one share an id."""
    return [e.group + "\x00" + " ".join(e.text.casefold().split()) for e in examples]


def per_group_metrics(
    logits: np.ndarray,
    targets: np.ndarray,
    groups: Sequence[str],
    calibrate: bool = True,
    excerpts: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of each held-out group's out-of-fold logits.

    With `calibrate`, group g is scaled by a temperature fitted on the other groups' out-of-fold logits
    only (leave-one-group-out over the pool), so its calibration is measured on data the temperature
    never saw. Without it (a baseline's probabilities), T = 1. With `excerpts` (`excerpt_ids`), also the
    top-1 against every label of the row's excerpt and the ceiling of row-level top-1.
    """
    groups_arr = np.asarray(groups)
    out = {}
    for g in sorted(set(groups_arr.tolist())):
        held = groups_arr == g
        t = fit_temperature(logits[~held], targets[~held]) if calibrate and (~held).any() else 1.0
        out[g] = attack_metrics(logits[held], targets[held], t)
        if excerpts is not None:
            out[g].update(shared_excerpt_metrics(logits[held], targets[held], np.asarray(excerpts)[held].tolist()))
    return out


def summarize(per_group: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation over groups of each summary metric."""
    rows = list(per_group.values())
    keys = [*SUMMARY_KEYS, *(k for k in EXCERPT_KEYS if all(k in r for r in rows))]
    return {
        "mean": {k: float(np.mean([r[k] for r in rows])) for k in keys},
        "std": {k: float(np.std([r[k] for r in rows])) for k in keys},
    }


def cross_group_metrics(
    logits: np.ndarray,
    targets: np.ndarray,
    groups: Sequence[str],
    baseline: np.ndarray,
    excerpts: Sequence[str] | None = None,
) -> dict:
    """The manifest's cross-group block: per-group metrics, their mean and spread, and TF-IDF + LR's."""
    per_group = per_group_metrics(logits, targets, groups, excerpts=excerpts)
    baseline_per_group = per_group_metrics(baseline, targets, groups, calibrate=False, excerpts=excerpts)
    return {
        **summarize(per_group),
        "per_group": per_group,
        "tfidf_logreg": {**summarize(baseline_per_group), "per_group": baseline_per_group},
    }


def pick_candidate(scores: dict[tuple[int, int], float], select_best: bool = True) -> tuple[int, int]:
    """The (average start, epoch) to ship from held-out scores keyed the same way (start 0: the live
    weights). The best score wins; a tie goes to the candidate `EpochEnd` scores first (the earlier epoch,
    then the live weights, then the earlier start). Without `select_best`, the last epoch's live weights."""
    if not select_best:
        return 0, max(e for s, e in scores if s == 0)
    order = sorted(scores, key=lambda c: (c[1], c[0]))
    return max(order, key=lambda c: scores[c])  # max keeps the first of equals


def pooled_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature the shipped model uses: fitted on every group's out-of-fold logits."""
    return fit_temperature(logits, targets)


CALIBRATED_KEYS = ("nll_calibrated", "ece_calibrated", "ece_calibrated_floor")


def honest_attack_metrics(
    logits: np.ndarray,
    targets: np.ndarray,
    groups: Sequence[str],
    reports: Sequence[str],
    temperature: float,
    temperature_fit_groups: Sequence[str],
    excerpts: Sequence[str] | None = None,
) -> dict[str, float]:
    """`evaluate`'s ATT&CK metrics: calibration is scored only on rows whose group did not fit the
    temperature. Rows that did are scored uncalibrated, plus a cross-fit by report (each report
    scaled by a temperature refitted on the other reports)."""
    from training.evaluation.calibrate import cross_fitted_temperature_ece

    fitted = np.isin(np.asarray(groups), list(temperature_fit_groups))
    out = attack_metrics(logits, targets, temperature)
    if excerpts is not None:
        out.update(shared_excerpt_metrics(logits, targets, excerpts))
    for k in CALIBRATED_KEYS:
        out.pop(k)
    out["n_calibration_scored"] = int((~fitted).sum())
    if (~fitted).any():
        cal = attack_metrics(logits[~fitted], targets[~fitted], temperature)
        out.update({k: cal[k] for k in CALIBRATED_KEYS})
    folds = np.asarray(reports)[fitted]
    if len(np.unique(folds)) > 1:
        out["ece_calibrated_crossfit"], out["nll_calibrated_crossfit"] = cross_fitted_temperature_ece(
            logits[fitted], targets[fitted], folds
        )
    return out
