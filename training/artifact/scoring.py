"""CVSS v3.1 base score and severity of a vector (the `cvss` library): shared by evaluation and serving,
kept apart from `training.metrics` so the service does not import scipy."""

from __future__ import annotations

from cvss import CVSS3


def score_vector(vector: str) -> tuple[float, str]:
    """(base score, severity)."""
    c = CVSS3(vector)
    return float(c.scores()[0]), c.severities()[0]
