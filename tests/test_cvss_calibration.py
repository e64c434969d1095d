"""CVSS temperature scaling on probability dicts: sharpen, the fit, and the cross-fitted ECE."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.artifact.encoding import sharpen
from training.evaluation.calibrate import cross_fitted_cvss_ece, cvss_ece, fit_cvss_temperature


def test_sharpen_is_temperature_scaled_softmax_and_invertible():
    p = {"N": 0.7, "L": 0.2, "H": 0.1}
    t = 2.0
    expected = np.exp(np.log([0.7, 0.2, 0.1]) / t)
    expected /= expected.sum()
    got = sharpen(p, t)
    assert [got[k] for k in "NLH"] == pytest.approx(expected.tolist())
    assert math.isclose(sum(got.values()), 1.0)
    back = sharpen(got, 1 / t)  # undoing the temperature recovers the raw probabilities
    assert [back[k] for k in "NLH"] == pytest.approx([0.7, 0.2, 0.1])
    assert sharpen({"N": 1.0, "L": 0.0}, 0.5) == {"N": 1.0, "L": 0.0}


def _overconfident(n: int, seed: int, scale: float = 3.0):
    """Rows drawn from a calibrated model, reported `scale` times too sharp."""
    rng = np.random.default_rng(seed)
    probs, truth = [], []
    for _ in range(n):
        row, t = {}, {}
        for k, values in (("AV", "NALP"), ("C", "NLH")):
            logits = rng.normal(size=len(values)) * 1.5
            p = np.exp(logits) / np.exp(logits).sum()
            t[k] = values[rng.choice(len(values), p=p)]
            sharp = np.exp(logits * scale) / np.exp(logits * scale).sum()
            row[k] = dict(zip(values, sharp.tolist(), strict=True))
        probs.append(row)
        truth.append(t)
    return probs, truth


def test_fit_recovers_the_overconfidence_and_lowers_ece():
    probs, truth = _overconfident(3000, 0)
    t = fit_cvss_temperature(probs, truth)
    assert 2.6 < t < 3.4
    calibrated = [{k: sharpen(p, t) for k, p in row.items()} for row in probs]
    assert cvss_ece(calibrated, truth) < 0.03 < cvss_ece(probs, truth)
    crossfit = cross_fitted_cvss_ece(probs, truth, [i % 2 for i in range(len(probs))])
    assert crossfit < 0.03
