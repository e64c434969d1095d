"""Split-conformal prediction sets over calibrated probabilities. Shared by training (fitting thresholds,
measuring coverage) and the service (sets).

ATT&CK: RAPS (Angelopoulos et al., 2021), which is APS when lam = 0. A label's score is the probability
mass of every label ranked at or above it, plus lam for each rank past k_reg. A set keeps labels in rank
order while their score is at most qhat; the top label is always kept, which can only add coverage.

CVSS: one set of whole vectors, the vectors whose negative log-likelihood (the sum over metrics of
-ln calibrated probability) is at most a threshold. Its guarantee is on the vector, so the base-score
range it spans holds the true score at least as often; per metric it shows the values that occur in it.
(Per-metric sets cannot hit their target: a set always keeps the top value, so a metric the model gets
right 95 % of the time covers 95 % at any target below that.)

The threshold is the conformal quantile of the true labels' scores on calibration rows. With weights
(ATT&CK: each threat group weighs the same, so a new group, not the pooled rows, gets the target), it is
the weighted quantile at level (1 - alpha)(1 + 1/n_eff), which is the textbook ceil((n + 1)(1 - alpha))-th
smallest score when the weights are equal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from training.artifact.manifest import ConformalParams, CvssLabels
from training.artifact.scoring import vector_table

# Scores are sums of floats computed in two places (numpy here, a loop in `prediction_set`): a label
# whose score ties qhat must land inside the set on both.
_TOLERANCE = 1e-9


def true_label_scores(probs: np.ndarray, targets: np.ndarray, lam: float = 0.0, k_reg: int = 1) -> np.ndarray:
    """RAPS score of each row's true label; `probs` is [n, labels], rows summing to 1."""
    order = np.argsort(-probs, axis=1, kind="stable")
    cum = np.cumsum(np.take_along_axis(probs, order, axis=1), axis=1)
    rank = np.argmax(order == np.asarray(targets)[:, None], axis=1)  # 0-based
    return cum[np.arange(len(probs)), rank] + lam * np.maximum(0, rank + 1 - k_reg)


def threshold(scores: np.ndarray, alpha: float, max_score: float, weights: np.ndarray | None = None) -> float:
    """The finite-sample conformal quantile; `max_score` (every label) when n is too small for alpha."""
    n = len(scores)
    if n == 0:
        return float(max_score)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    level = (1 - alpha) * (1 + float(np.sum(w**2)))  # 1 / n_eff = sum of squared normalised weights
    order = np.argsort(scores, kind="stable")
    cum = np.cumsum(w[order])
    k = int(np.searchsorted(cum, level - 1e-12))  # first index whose cumulative weight reaches the level
    if k >= n:
        return float(max_score)
    return float(np.asarray(scores)[order][k])


def group_weights(groups: np.ndarray) -> np.ndarray:
    """1 / (rows in the row's group): every group weighs the same in a weighted threshold."""
    _, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse]


def fit_params(
    probs: np.ndarray,
    targets: np.ndarray,
    alpha: float,
    lam: float = 0.0,
    k_reg: int = 1,
    weights: np.ndarray | None = None,
) -> ConformalParams:
    n_labels = probs.shape[1]
    scores = true_label_scores(probs, targets, lam, k_reg)
    return ConformalParams(qhat=threshold(scores, alpha, 1.0 + lam * n_labels, weights), lam=lam, k_reg=k_reg)


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


# -- CVSS: sets of whole vectors -------------------------------------------------------------------
EVERY_VECTOR = 1e9  # an NLL threshold above any vector's (8 metrics, probabilities floored at 1e-300)


def vector_nll(logprobs: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray]) -> np.ndarray:
    """Each row's true-vector score: the sum over metrics of -log p(true value); `logprobs` calibrated."""
    return -np.sum([lp[np.arange(len(lp)), np.asarray(targets[k])] for k, lp in logprobs.items()], axis=0)


def fit_vector_nll(logprobs: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray], alpha: float) -> float:
    return threshold(vector_nll(logprobs, targets), alpha, EVERY_VECTOR)


def vector_covered(logprobs: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray], max_nll: float) -> np.ndarray:
    """Whether each row's set holds its true vector (vectorised `VectorSet`: the top vector is always in)."""
    top = np.all([lp.argmax(axis=1) == np.asarray(targets[k]) for k, lp in logprobs.items()], axis=0)
    return (vector_nll(logprobs, targets) <= max_nll + _TOLERANCE) | top


class VectorSet:
    """The vectors whose NLL is at most the threshold (the most probable vector always), seen per metric
    (the values that occur in them, most probable first) and as the span of their base scores."""

    def __init__(self, labels: CvssLabels, probs: Mapping[str, Mapping[str, float]], max_nll: float) -> None:
        grid, scores = vector_table(labels)
        values = [list(m.values) for m in labels.metrics]
        logp = [
            np.log(np.maximum([probs[m.key][v] for v in vals], 1e-300))
            for m, vals in zip(labels.metrics, values, strict=True)
        ]
        nll = -np.sum([lp[grid[:, j]] for j, lp in enumerate(logp)], axis=0)
        keep = nll <= max_nll + _TOLERANCE
        keep[np.argmin(nll)] = True
        self._labels, self._values, self._grid, self._keep = labels, values, grid, keep
        self.size = int(keep.sum())
        self.base_score_range = (float(scores[keep].min()), float(scores[keep].max()))
        self.sets: dict[str, list[str]] = {}
        for j, (m, vals) in enumerate(zip(labels.metrics, values, strict=True)):
            present = np.unique(grid[keep, j])
            self.sets[m.key] = [vals[i] for i in sorted(present, key=lambda i: -logp[j][i])]

    def contains(self, truth: Mapping[str, str]) -> bool:
        """Whether the vector with these values is in the set (not only each value in its metric's set)."""
        row = [vals.index(truth[m.key]) for m, vals in zip(self._labels.metrics, self._values, strict=True)]
        return bool(self._keep[np.all(self._grid == np.array(row), axis=1)][0])
