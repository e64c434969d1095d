"""CVSS v3.1 base score and severity of a vector (the `cvss` library): shared by evaluation and serving,
kept apart from `training.metrics` so the service does not import scipy."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from functools import lru_cache

from cvss import CVSS3

from training.artifact.manifest import CvssLabels


@lru_cache(maxsize=4096)  # the whole v3.1 base space is 2,592 vectors
def score_vector(vector: str) -> tuple[float, str]:
    """(base score, severity)."""
    c = CVSS3(vector)
    return float(c.scores()[0]), c.severities()[0]


def base_score_range(labels: CvssLabels, sets: Mapping[str, Sequence[str]]) -> tuple[float, float]:
    """(min, max) base score over every vector whose values all lie in their metric's set. Enumerated,
    not derived from weight orderings: Scope changes the Privileges Required weights."""
    keys = [m.key for m in labels.metrics]
    scores = [
        score_vector(labels.vector(dict(zip(keys, combo, strict=True))))[0]
        for combo in itertools.product(*(sets[k] for k in keys))
    ]
    return min(scores), max(scores)
