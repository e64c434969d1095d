"""Split-conformal prediction sets over calibrated probabilities: RAPS (Angelopoulos et al., 2021), which
is APS when lam = 0. Shared by training (fitting thresholds, measuring coverage) and the service (sets).

A label's score is the probability mass of every label ranked at or above it, plus lam for each rank
past k_reg. The threshold qhat is the ceil((n + 1)(1 - alpha))-th smallest score of the true labels of
n calibration rows, so a new row's true label scores at most qhat with probability >= 1 - alpha when
rows are exchangeable. A set keeps labels in rank order while their score is at most qhat; the top
label is always kept, which can only add coverage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from training.artifact.manifest import ConformalParams

# Scores are sums of floats computed in two places (numpy here, a loop in `prediction_set`): a label
# whose score ties qhat must land inside the set on both.
_TOLERANCE = 1e-9


def true_label_scores(probs: np.ndarray, targets: np.ndarray, lam: float = 0.0, k_reg: int = 1) -> np.ndarray:
    """RAPS score of each row's true label; `probs` is [n, labels], rows summing to 1."""
    order = np.argsort(-probs, axis=1, kind="stable")
    cum = np.cumsum(np.take_along_axis(probs, order, axis=1), axis=1)
    rank = np.argmax(order == np.asarray(targets)[:, None], axis=1)  # 0-based
    return cum[np.arange(len(probs)), rank] + lam * np.maximum(0, rank + 1 - k_reg)


def threshold(scores: np.ndarray, alpha: float, max_score: float) -> float:
    """The finite-sample conformal quantile; `max_score` (every label) when n is too small for alpha."""
    n = len(scores)
    k = math.ceil((n + 1) * (1 - alpha))
    if n == 0 or k > n:
        return float(max_score)
    return float(np.sort(scores)[k - 1])


def fit_params(probs: np.ndarray, targets: np.ndarray, alpha: float, lam: float = 0.0, k_reg: int = 1):
    n_labels = probs.shape[1]
    scores = true_label_scores(probs, targets, lam, k_reg)
    return ConformalParams(qhat=threshold(scores, alpha, 1.0 + lam * n_labels), lam=lam, k_reg=k_reg)


def set_sizes(probs: np.ndarray, params: ConformalParams) -> np.ndarray:
    """How many labels each row's set holds (vectorised `prediction_set`)."""
    order = np.argsort(-probs, axis=1, kind="stable")
    cum = np.cumsum(np.take_along_axis(probs, order, axis=1), axis=1)
    ranks = np.arange(1, probs.shape[1] + 1)
    score = cum + params.lam * np.maximum(0, ranks - params.k_reg)
    return np.maximum((score <= params.qhat + _TOLERANCE).sum(axis=1), 1)


def covered(probs: np.ndarray, targets: np.ndarray, params: ConformalParams) -> np.ndarray:
    """Whether each row's set holds its true label."""
    order = np.argsort(-probs, axis=1, kind="stable")
    rank = np.argmax(order == np.asarray(targets)[:, None], axis=1)
    return rank < set_sizes(probs, params)


def prediction_set(probs: Sequence[float], params: ConformalParams) -> list[int]:
    """Indices of the labels in the set, most probable first."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])  # stable, as numpy's
    out: list[int] = []
    mass = 0.0
    for rank, i in enumerate(order, start=1):
        mass += probs[i]
        if out and mass + params.lam * max(0, rank - params.k_reg) > params.qhat + _TOLERANCE:
            break
        out.append(i)
    return out
