"""Cross-group validation bookkeeping: folds, per-group temperatures, and `evaluate` never scoring
calibration on the groups the temperature was fitted on."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from training.attack_cv import honest_attack_metrics, per_group_metrics, summarize
from training.calibrate import fit_temperature, nll
from training.data import AttackExample
from training.metrics import attack_metrics
from training.split import group_k_folds


def _ex(group: str, n: int) -> list[AttackExample]:
    return [AttackExample(f"{group} {i}", "T1059", group, "r", "x") for i in range(n)]


def test_group_k_folds_hold_out_every_group_once_and_balance_sizes():
    ex = _ex("a", 50) + _ex("b", 30) + _ex("c", 25) + _ex("d", 20) + _ex("e", 5)
    folds = group_k_folds(ex, 2)
    flat = [g for f in folds for g in f]
    assert sorted(flat) == ["a", "b", "c", "d", "e"] and len(flat) == len(set(flat))
    # largest group first, each into the fold with fewer items: a(50) | b(30) c(25)=55 | +d(20)->a: 70 | +e(5)->60
    assert folds == [("a", "d"), ("b", "c", "e")]
    with pytest.raises(ValueError):
        group_k_folds(ex, 6)


def _synthetic(seed: int = 0):
    rng = np.random.default_rng(seed)
    groups = np.array(["a"] * 300 + ["b"] * 300 + ["c"] * 300)
    true = rng.normal(size=(900, 6)) * 2
    targets = np.array([rng.choice(6, p=p) for p in softmax(true, axis=1)])
    scale = np.where(groups == "a", 1.0, 3.0)[:, None]  # group a is calibrated, b and c are over-confident
    return true * scale, targets, groups


def test_per_group_temperature_is_fitted_on_the_other_groups_only():
    logits, targets, groups = _synthetic()
    per = per_group_metrics(logits, targets, groups)
    for g in ("a", "b", "c"):
        held = groups == g
        t_other = fit_temperature(logits[~held], targets[~held])
        assert per[g]["temperature"] == pytest.approx(t_other)
        assert per[g]["nll_calibrated"] == pytest.approx(nll(logits[held], targets[held], t_other))
        assert per[g]["temperature"] != pytest.approx(fit_temperature(logits[held], targets[held]), rel=0.05)
    s = summarize(per)
    assert s["mean"]["top1"] == pytest.approx(np.mean([per[g]["top1"] for g in "abc"]))
    assert s["std"]["top1"] == pytest.approx(np.std([per[g]["top1"] for g in "abc"]))
    baseline = per_group_metrics(logits, targets, groups, calibrate=False)
    assert all(baseline[g]["temperature"] == 1.0 for g in "abc")


def test_evaluate_never_scores_calibration_on_temperature_fit_groups():
    logits, targets, groups = _synthetic(1)
    reports = np.array([f"{g}/{i % 4}" for i, g in enumerate(groups)])
    t = 2.5
    m = honest_attack_metrics(logits, targets, groups, reports, t, temperature_fit_groups=["b", "c"])
    unfitted = groups == "a"
    expected = attack_metrics(logits[unfitted], targets[unfitted], t)
    assert m["n_calibration_scored"] == 300
    assert m["ece_calibrated"] == pytest.approx(expected["ece_calibrated"])
    assert m["nll_calibrated"] == pytest.approx(expected["nll_calibrated"])
    assert m["top1"] == pytest.approx(attack_metrics(logits, targets, t)["top1"])  # accuracy over every row
    assert "ece_calibrated_crossfit" in m  # fitted rows: only a temperature refitted on other reports

    everything_fitted = honest_attack_metrics(logits, targets, groups, reports, t, ["a", "b", "c"])
    assert "ece_calibrated" not in everything_fitted and "nll_calibrated" not in everything_fitted
    assert everything_fitted["n_calibration_scored"] == 0
