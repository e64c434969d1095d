"""The CVSS prior correction (`Manifest.prior_correction`): each metric value's share of the training
vectors, from which decoding shifts the value logits by -tau * ln(share)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from training.artifact.manifest import CvssLabels, PriorCorrection


def fit_prior_correction(labels: CvssLabels, train_values: Sequence[dict[str, str]], tau: float) -> PriorCorrection:
    """ln of each value's add-one-smoothed share among `train_values` (one dict metric -> value per CVE)."""
    log_prior = {}
    for m in labels.metrics:
        counts = {v: 1 + sum(vals[m.key] == v for vals in train_values) for v in m.values}
        total = sum(counts.values())
        log_prior[m.key] = {v: math.log(c / total) for v, c in counts.items()}
    return PriorCorrection(tau=tau, log_prior=log_prior)
