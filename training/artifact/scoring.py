"""CVSS v3.1 base score and severity of a vector (the `cvss` library): shared by evaluation and serving,
kept apart from `training.metrics` so the service does not import scipy."""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
from cvss import CVSS3

from training.artifact.manifest import CvssLabels


@lru_cache(maxsize=4096)  # the whole v3.1 base space is 2,592 vectors
def score_vector(vector: str) -> tuple[float, str]:
    """(base score, severity)."""
    c = CVSS3(vector)
    return float(c.scores()[0]), c.severities()[0]


def vector_table(labels: CvssLabels) -> tuple[np.ndarray, np.ndarray]:
    """Every vector of the label space as value indices [n, metrics] (manifest order), and its base score."""
    return _vector_table(labels.model_dump_json())  # cached per label space (a model is not hashable)


@lru_cache(maxsize=8)
def _vector_table(labels_json: str) -> tuple[np.ndarray, np.ndarray]:
    labels = CvssLabels.model_validate_json(labels_json)
    values = [list(m.values) for m in labels.metrics]
    grid = np.array(list(itertools.product(*(range(len(v)) for v in values))), dtype=np.int64)
    keys = [m.key for m in labels.metrics]
    scores = np.array(
        [score_vector(labels.vector({k: v[i] for k, v, i in zip(keys, values, row, strict=True)}))[0] for row in grid]
    )
    grid.setflags(write=False)
    scores.setflags(write=False)
    return grid, scores
