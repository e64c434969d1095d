"""ATT&CK catalogue label set and remapping; temperature scaling and ECE on synthetic data."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest
from scipy.special import softmax

from training.calibrate import ece, ece_floor, fit_temperature, nll
from training.catalogue import catalogue


def test_label_set_is_current_top_level():
    labels = catalogue().labels()
    ids = [t.id for t in labels]
    assert len(ids) == len(set(ids)) > 200
    assert all("." not in i for i in ids)
    assert "T1086" not in ids  # revoked (PowerShell, now T1059.001)
    assert next(t for t in labels if t.id == "T1047").name == "Windows Management Instrumentation"


def test_remap():
    c = catalogue()
    assert c.remap("T1059.001") == "T1059"
    assert c.remap("T1086") == "T1059"
    assert c.remap("T0833") is None  # ICS technique: not in Enterprise
    assert c.remap("T9999") is None


def test_fit_temperature_recovers_scale():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 10)) * 2
    targets = np.array([rng.choice(10, p=p) for p in softmax(true_logits, axis=1)])
    overconfident = true_logits * 3  # a model 3x too sharp
    t = fit_temperature(overconfident, targets)
    assert 2.6 < t < 3.4
    assert nll(overconfident, targets, t) < nll(overconfident, targets)
    p = softmax(overconfident / t, axis=1)
    assert ece(p.max(1), p.argmax(1) == targets) < 0.03 < ece(softmax(overconfident, 1).max(1), p.argmax(1) == targets)


def test_ece_floor_is_the_binning_error_of_a_calibrated_predictor():
    # Every confidence c (one bin): a calibrated predictor's ECE is |right/n - c|, right ~ Binomial(n, c).
    for n, c in ((2, 0.5), (60, 0.5), (10, 0.9)):
        exact = sum(comb(n, k) * c**k * (1 - c) ** (n - k) * abs(k / n - c) for k in range(n + 1))
        assert ece_floor([c] * n, draws=20000) == pytest.approx(exact, abs=0.008)  # 4 standard errors
    # Larger samples bin more accurately; the floor falls like 1/sqrt(n).
    assert ece_floor([0.5] * 600, draws=1000) == pytest.approx(ece_floor([0.5] * 60, draws=1000) / 10**0.5, rel=0.1)
