"""Cross-group validation bookkeeping: folds, per-group temperatures, and `evaluate` never scoring
calibration on the groups the temperature was fitted on."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from tests.conftest import run_module
from training.attack.cross_validation import excerpt_ids, honest_attack_metrics, per_group_metrics, summarize
from training.data import AttackExample
from training.evaluation.calibrate import fit_temperature, nll
from training.evaluation.metrics import attack_metrics, shared_excerpt_metrics
from training.evaluation.split import SplitError, group_k_folds


def _ex(group: str, n: int) -> list[AttackExample]:
    return [AttackExample(f"{group} {i}", "T1059", group, "r", "x") for i in range(n)]


def test_group_k_folds_hold_out_every_group_once_and_balance_sizes():
    ex = _ex("a", 50) + _ex("b", 30) + _ex("c", 25) + _ex("d", 20) + _ex("e", 5)
    folds = group_k_folds(ex, 2)
    flat = [g for f in folds for g in f]
    assert sorted(flat) == ["a", "b", "c", "d", "e"] and len(flat) == len(set(flat))
    # largest group first, each into the fold with fewer items: a(50) | b(30) c(25)=55 | +d(20)->a: 70 | +e(5)->60
    assert folds == [("a", "d"), ("b", "c", "e")]
    with pytest.raises(SplitError, match="folds <= 5 groups"):
        group_k_folds(ex, 6)
    # 0: leave-one-group-out, largest group first
    assert group_k_folds(ex, 0) == [("a",), ("b",), ("c",), ("d",), ("e",)]
    assert group_k_folds(_ex("a", 3) + _ex("b", 3), 0) == [("a",), ("b",)]


@pytest.mark.parametrize(
    ("option", "hint", "message"),
    [
        (["--folds", "7"], "--folds", "need 2 <= folds <= 6 groups"),
        (["--validation-group", "lazarus"], "--validation-group", "['lazarus'] not in the data"),
        (["--head-init", "prototype"], "--head-init", "must be one of ('random', 'imprint', 'probe')"),
    ],
)
def test_attack_cli_refuses_options_the_data_or_code_cannot_serve(tmp_path, cti_hal, option, hint, message):
    """A usage error, before any model loads: exit 2 naming the option, no traceback, nothing written."""
    out = tmp_path / "a"
    r = run_module("training", "attack", "--data", str(cti_hal), "--out", str(out), *option, COLUMNS="300")
    assert r.returncode == 2, r.stderr[-2000:]
    assert hint in r.stderr and message in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


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


def test_top1_on_shared_excerpts_counts_any_annotated_label_and_the_reachable_ceiling():
    rows = [
        ("a", "Ran  PowerShell.", 0),
        ("a", "ran powershell.", 1),  # the same excerpt with a second technique
        ("a", "RAN POWERSHELL.", 0),  # ... and a second annotator agreeing with the first
        ("b", "ran powershell.", 0),  # another group's excerpt, however alike
        ("a", "Dumped LSASS.", 2),
    ]
    ex = [AttackExample(text, "T1059", g, "r", "x") for g, text, _ in rows]
    ids = excerpt_ids(ex)
    assert ids[0] == ids[1] == ids[2] and len(set(ids)) == 3
    targets = np.array([t for *_, t in rows])
    logits = np.eye(3)[[1, 1, 1, 0, 0]]  # answers: 1, 1, 1, 0, 0
    m = shared_excerpt_metrics(logits, targets, ids)
    assert attack_metrics(logits, targets, 1.0)["top1"] == pytest.approx(2 / 5)
    # rows 1-3 answer one of their excerpt's labels, row 4 is right, row 5 is not
    assert m["top1_any_label"] == pytest.approx(4 / 5)
    # one answer per excerpt: at best 2 of the 3 shared rows, then 1 and 1
    assert m["top1_ceiling"] == pytest.approx(4 / 5)
    m_best = shared_excerpt_metrics(np.eye(3)[[0, 0, 0, 0, 2]], targets, ids)
    assert m_best == {"top1_any_label": 1.0, "top1_ceiling": pytest.approx(4 / 5)}

    per = per_group_metrics(logits, targets, [g for g, *_ in rows], calibrate=False, excerpts=ids)
    assert per["a"]["top1_any_label"] == pytest.approx(3 / 4) and per["b"]["top1_any_label"] == 1.0
    assert summarize(per)["mean"]["top1_ceiling"] == pytest.approx((3 / 4 + 1) / 2)
    assert "top1_ceiling" not in summarize(per_group_metrics(logits, targets, [g for g, *_ in rows]))["mean"]
