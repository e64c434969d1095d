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


def ece_floor(confidences: Sequence[float], n_bins: int = 15, draws: int = 200, seed: int = 0) -> float:
    """Expected ECE of a perfectly calibrated predictor with these confidences (each answer right with
    probability equal to its confidence): what binning a finite sample adds on its own. On 60-item
    groups it is about 0.15, so an ECE is read against it, not against 0."""
    conf = np.asarray(confidences, float)
    if len(conf) == 0:
        return float("nan")
    onehot = np.eye(n_bins)[np.minimum((conf * n_bins).astype(int), n_bins - 1)]  # [n, bins], as `ece` bins
    right = np.random.default_rng(seed).random((draws, len(conf))) < conf  # [draws, n]
    # per draw: sum over bins of |sum of confidences - number right| / n, which is `ece`
    return float(np.mean(np.abs(conf @ onehot - right @ onehot).sum(1)) / len(conf))


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


def fit_cvss_temperature(probs: Sequence[dict[str, dict[str, float]]], truth: Sequence[dict[str, str]]) -> float:
    """One T for every CVSS metric: minimises the mean NLL of softmax(log p / T) of the true values."""
    keys = list(truth[0])
    per_metric = []
    for k in keys:
        values = list(probs[0][k])
        logp = np.log(np.maximum(np.array([[p[k][v] for v in values] for p in probs]), 1e-12))
        per_metric.append((logp, np.array([values.index(t[k]) for t in truth])))

    def loss(log_t: float) -> float:
        return float(np.mean([nll(lg, tg, float(np.exp(log_t))) for lg, tg in per_metric]))

    return float(np.exp(minimize_scalar(loss, bounds=(-3, 3), method="bounded").x))


def cvss_ece(probs: Sequence[dict[str, dict[str, float]]], truth: Sequence[dict[str, str]], n_bins: int = 15) -> float:
    """ECE of each metric's top probability (all metrics pooled), as the README reports it."""
    keys = list(truth[0])
    conf = [max(p[k].values()) for p in probs for k in keys]
    corr = [max(p[k], key=p[k].get) == t[k] for p, t in zip(probs, truth, strict=True) for k in keys]
    return ece(conf, corr, n_bins)


def cross_fitted_cvss_ece(
    probs: Sequence[dict[str, dict[str, float]]], truth: Sequence[dict[str, str]], folds: Sequence[int]
) -> float:
    """ECE where each fold's rows are scaled by a temperature fitted on the other folds' rows only."""
    from training.artifact.encoding import sharpen

    folds_arr = np.asarray(folds)
    scaled: list = [None] * len(probs)
    for f in np.unique(folds_arr):
        fit = [i for i in range(len(probs)) if folds_arr[i] != f]
        t = fit_cvss_temperature([probs[i] for i in fit], [truth[i] for i in fit])
        for i in np.flatnonzero(folds_arr == f):
            scaled[i] = {k: sharpen(p, t) for k, p in probs[i].items()}
    return cvss_ece(scaled, truth, 15)
