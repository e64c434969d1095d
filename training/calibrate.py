"""Temperature scaling (fit by minimising NLL) and expected calibration error."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax


def nll(logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    lp = log_softmax(logits / temperature, axis=1)
    return float(-lp[np.arange(len(targets)), targets].mean())


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The T > 0 that minimises validation NLL of softmax(logits / T)."""
    res = minimize_scalar(lambda log_t: nll(logits, targets, float(np.exp(log_t))), bounds=(-3, 3), method="bounded")
    return float(np.exp(res.x))


def ece(confidences: Sequence[float], correct: Sequence[bool], n_bins: int = 15) -> float:
    """Top-label expected calibration error over equal-width confidence bins."""
    conf, corr = np.asarray(confidences, float), np.asarray(correct, float)
    if len(conf) == 0:
        return float("nan")
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            total += sel.mean() * abs(conf[sel].mean() - corr[sel].mean())
    return float(total)


def reliability_bins(confidences, correct, n_bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin centres, accuracy per bin, count per bin) for a reliability diagram."""
    conf, corr = np.asarray(confidences, float), np.asarray(correct, float)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    acc = np.array([corr[bins == b].mean() if (bins == b).any() else np.nan for b in range(n_bins)])
    count = np.array([(bins == b).sum() for b in range(n_bins)])
    return (np.arange(n_bins) + 0.5) / n_bins, acc, count


def cross_fitted_temperature_ece(
    logits: np.ndarray, targets: np.ndarray, folds: np.ndarray, n_bins: int = 15
) -> tuple[float, float]:
    """Honest post-calibration scores: each fold is scaled by a T fitted on the other folds.

    Returns (ECE, NLL) over all rows. With a single fold it falls back to the in-sample fit.
    """
    scaled = np.empty_like(logits)
    uniq = np.unique(folds)
    for f in uniq:
        test = folds == f
        fit = ~test if len(uniq) > 1 else test
        scaled[test] = logits[test] / fit_temperature(logits[fit], targets[fit])
    probs = np.exp(log_softmax(scaled, axis=1))
    return ece(probs.max(1), probs.argmax(1) == targets, n_bins), nll(scaled, targets)
