"""Conformal prediction sets: the threshold and the sets on cases with a known answer, coverage of a
calibrated model, and the committed artifacts' coverage on out-of-sample scores they keep."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from cvss import CVSS3
from scipy.special import softmax

from tests.conftest import DEFAULT_ATTACK, DEFAULT_CVSS
from training import heldout
from training.artifact.conformal import covered, fit_params, prediction_set, set_sizes, threshold, true_label_scores
from training.artifact.manifest import ConformalParams, load_manifest
from training.artifact.scoring import base_score_range
from training.split import calibration_halves


def test_threshold_is_the_finite_sample_quantile():
    scores = np.array([0.7, 0.1, 0.5, 0.9, 0.3, 0.2, 1.0, 0.4, 0.6, 0.8])
    # n = 10: the ceil(11 * 0.8) = 9th smallest score, and ceil(11 * 0.9) = 10th
    assert threshold(scores, 0.2, 99.0) == pytest.approx(0.9)
    assert threshold(scores, 0.1, 99.0) == pytest.approx(1.0)
    # ceil(11 * 0.95) = 11 > n: too few rows for that coverage, so every label
    assert threshold(scores, 0.05, 99.0) == 99.0


def test_scores_and_sets_by_hand():
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    # row 0, true label 1 (rank 2): 0.5 + 0.3; row 1, true label 0 (rank 3): 1.0
    assert true_label_scores(probs, np.array([1, 0])) == pytest.approx([0.8, 1.0])
    # RAPS adds lam per rank past k_reg: rank 2 -> +0.1, rank 3 -> +0.2
    assert true_label_scores(probs, np.array([1, 0]), lam=0.1, k_reg=1) == pytest.approx([0.9, 1.2])
    assert prediction_set(probs[0].tolist(), ConformalParams(qhat=0.8)) == [0, 1]
    assert prediction_set(probs[0].tolist(), ConformalParams(qhat=0.79)) == [0]
    assert prediction_set(probs[1].tolist(), ConformalParams(qhat=1.0, lam=0.1, k_reg=1)) == [1, 2]  # 0.9 + 0.1
    assert prediction_set(probs[1].tolist(), ConformalParams(qhat=0.95, lam=0.1, k_reg=1)) == [1]
    # the top label is kept even when its own mass exceeds qhat
    assert prediction_set(probs[1].tolist(), ConformalParams(qhat=0.2)) == [1]


def test_vectorised_sets_match_the_served_ones():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(12, 0.3), size=300)
    targets = rng.integers(0, 12, size=300)
    for params in (ConformalParams(qhat=0.7), ConformalParams(qhat=0.9, lam=0.05, k_reg=2)):
        sets = [prediction_set(p.tolist(), params) for p in probs]
        assert set_sizes(probs, params).tolist() == [len(s) for s in sets]
        assert covered(probs, targets, params).tolist() == [t in s for t, s in zip(targets, sets, strict=True)]


@pytest.mark.parametrize(("alpha", "lam", "k_reg"), [(0.1, 0.0, 1), (0.2, 0.0, 1), (0.1, 0.05, 2), (0.2, 0.2, 1)])
def test_sets_of_a_calibrated_model_cover_one_minus_alpha(alpha, lam, k_reg):
    """Labels drawn from the model's own probabilities (a perfectly calibrated model): the coverage of
    sets fitted on 2,000 rows, measured on 20,000 others, is 1 - alpha to within sampling error."""
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.full(20, 0.2), size=22_000)
    targets = np.array([rng.choice(20, p=p) for p in probs])
    params = fit_params(probs[:2000], targets[:2000], alpha, lam, k_reg)
    coverage = covered(probs[2000:], targets[2000:], params).mean()
    assert abs(coverage - (1 - alpha)) < 0.02, coverage


def test_base_score_range_is_the_extremes_over_the_product_of_sets():
    labels = load_manifest(DEFAULT_CVSS).labels
    rng = np.random.default_rng(2)
    keys = [m.key for m in labels.metrics]
    for _ in range(20):
        sets = {m.key: list(rng.permutation(list(m.values))[: rng.integers(1, 3)]) for m in labels.metrics}
        scores = [
            CVSS3(labels.vector(dict(zip(keys, combo, strict=True)))).scores()[0]
            for combo in itertools.product(*(sets[k] for k in keys))
        ]
        assert base_score_range(labels, sets) == (float(min(scores)), float(max(scores)))


def _levels(manifest):
    assert manifest.conformal is not None, "the committed default ships prediction-set thresholds"
    return {lv.coverage: lv for lv in manifest.conformal.levels}


def test_attack_default_covers_held_out_groups():
    """On the committed ATT&CK default's out-of-fold probabilities, sets fitted on the other groups (with
    the shipped penalty) hold the true technique of each held-out group's rows at the target rate."""
    manifest = load_manifest(DEFAULT_ATTACK)
    held = heldout.load(DEFAULT_ATTACK)
    probs = softmax(held.logits / manifest.temperature, axis=1)
    assert set(_levels(manifest)) == {0.9, 0.8}
    for coverage, level in _levels(manifest).items():
        shipped = level.fields["technique"]
        hits = []
        for g in np.unique(held.groups):
            other = held.groups != g
            params = fit_params(probs[other], held.targets[other], 1 - coverage, shipped.lam, shipped.k_reg)
            hits.append(covered(probs[~other], held.targets[~other], params))
        assert np.concatenate(hits).mean() >= coverage - 0.03
        # the shipped thresholds on their own calibration rows: the finite-sample guarantee
        assert covered(probs, held.targets, shipped).mean() >= coverage


def test_cvss_default_covers_each_metric_cross_fitted():
    """Each half of the validation CVEs, with thresholds fitted on the other half: every metric's sets
    hold the true value at the target rate (less the 0.03 the issue allows)."""
    manifest = load_manifest(DEFAULT_CVSS)
    held = heldout.load(DEFAULT_CVSS)
    halves = np.array(calibration_halves(held.ids))
    for coverage, level in _levels(manifest).items():
        for key, shipped in level.fields.items():
            probs = softmax(held.logprobs[key] / manifest.temperature, axis=1)
            hit = np.zeros(len(halves), bool)
            for h in (0, 1):
                fit = halves != h
                params = fit_params(probs[fit], held.targets[key][fit], 1 - coverage, shipped.lam, shipped.k_reg)
                hit[~fit] = covered(probs[~fit], held.targets[key][~fit], params)
            assert hit.mean() >= coverage - 0.03, (key, coverage, hit.mean())
