"""Segment probabilities to one score per technique per report, and the evidence behind each score: one code
path for the service's report route and `evaluate --task attack-report`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AGGREGATIONS = ("max", "noisy_or")


def aggregate(probs: np.ndarray, method: str) -> np.ndarray:
    """[n_units, n_labels] calibrated probabilities -> [n_labels] report scores.

    max: the best single sentence's probability (a repeated sentence adds nothing). noisy_or: the chance that
    at least one sentence shows the technique if each did independently, 1 - prod(1 - p): many weak
    mentions add up, so long reports score higher.
    """
    if probs.ndim != 2:
        raise ValueError(f"expected [units, labels] probabilities, got shape {probs.shape}")
    if len(probs) == 0:
        return np.zeros(probs.shape[1])
    if method == "max":
        return probs.max(axis=0)
    if method == "noisy_or":
        return -np.expm1(np.log1p(-np.clip(probs, 0.0, 1.0 - 1e-12)).sum(axis=0))
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, not {method!r}")


@dataclass(frozen=True)
class Found:
    """A technique a report shows: its label index, its report score, and its best units (index, probability),
    most probable first."""

    label: int
    score: float
    evidence: list[tuple[int, float]]


def techniques(probs: np.ndarray, method: str, min_score: float, top_evidence: int) -> list[Found]:
    """Techniques scoring at least `min_score`, best first (ties by label order), each with up to
    `top_evidence` units."""
    scores = aggregate(probs, method)
    picked = np.flatnonzero(scores >= min_score)
    picked = picked[np.lexsort((picked, -scores[picked]))]
    out = []
    for j in picked.tolist():
        col = probs[:, j]
        best = np.lexsort((np.arange(len(col)), -col))[:top_evidence]
        out.append(Found(j, float(scores[j]), [(int(i), float(col[i])) for i in best]))
    return out
