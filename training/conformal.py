"""What an analyst acts on beyond the top answer, measured on data that fitted neither it nor the
temperature: the conformal thresholds an artifact ships with their coverage, and the precision/coverage
table that tells a user which `min_confidence` to pick.

ATT&CK: calibrated on the pooled out-of-fold probabilities of every threat group. Coverage is reported
per held-out group: group g's sets use a temperature, a RAPS penalty and a threshold fitted on the other
groups only (a new group is exactly what users send). CVSS: one APS threshold per metric on the
validation CVEs; coverage is cross-fitted by halves (each half's sets use the other half's thresholds).
TF-IDF + LR sets are built the same way beside them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import softmax

from training.artifact.conformal import covered, fit_params, set_sizes
from training.artifact.manifest import Conformal, ConformalLevel, CvssLabels
from training.artifact.scoring import base_score_range, score_vector
from training.calibrate import fit_temperature
from training.heldout import AttackHeldout, CvssHeldout
from training.metrics import precision_coverage

ALPHAS = (0.1, 0.2)  # offered coverages 0.9 and 0.8
# RAPS penalties tried (APS first), chosen per alpha and field by the smallest mean set size on held-out
# folds of the calibration rows; the coverage guarantee holds whichever is chosen. A large lam makes the
# set size follow the rank alone: for a sharp model, APS (lam = 0) adds a second label to every row
# whose top probability is below a threshold near 1.
RAPS_GRID = ((0.0, 1),) + tuple((lam, k) for lam in (0.002, 0.01, 0.05, 0.2, 1.0) for k in (1, 2, 3, 5, 10))
ATTACK_FIELD = "technique"


def _coverage(alpha: float) -> float:
    return round(1 - alpha, 6)


def choose_raps(probs: np.ndarray, targets: np.ndarray, groups: np.ndarray, alpha: float) -> tuple[float, int]:
    """(lam, k_reg) with the smallest mean set size when each group (fold) is held out in turn."""
    groups = np.asarray(groups)
    uniq = np.unique(groups)
    if len(uniq) < 2:
        return 0.0, 1

    def mean_size(lam: float, k: int) -> float:
        sizes = []
        for g in uniq:
            held = groups == g
            params = fit_params(probs[~held], targets[~held], alpha, lam, k)
            sizes.append(set_sizes(probs[held], params).mean())
        return float(np.mean(sizes))

    return min(RAPS_GRID, key=lambda c: (mean_size(*c), c[0]))


def _set_summary(cov: np.ndarray, sizes: np.ndarray) -> dict[str, float]:
    return {"n": len(cov), "coverage": float(cov.mean()), "mean_set_size": float(sizes.mean())}


def attack_conformal(held: AttackHeldout, temperature: float, baseline_logprobs: np.ndarray | None = None):
    """(the manifest's Conformal, a report of held-out-group coverage for the model and the baseline)."""
    probs = softmax(held.logits / temperature, axis=1)
    levels = []
    for alpha in ALPHAS:
        lam, k = choose_raps(probs, held.targets, held.groups, alpha)
        levels.append(
            ConformalLevel(
                coverage=_coverage(alpha),
                fields={ATTACK_FIELD: fit_params(probs, held.targets, alpha, lam, k)},
            )
        )
    conformal = Conformal(
        method="RAPS over temperature-scaled probabilities (APS when lam = 0); the top technique is always kept",
        calibration=f"out-of-fold logits of every threat group ({', '.join(np.unique(held.groups))})",
        n_calibration=len(held.targets),
        levels=levels,
    )
    report = {
        "model": _attack_group_coverage(held.logits, held.targets, held.groups, calibrate=True),
        "abstention": _attack_abstention(held),
    }
    if baseline_logprobs is not None:
        report["tfidf_logreg"] = _attack_group_coverage(baseline_logprobs, held.targets, held.groups, calibrate=False)
    return conformal, report


def _attack_abstention(held: AttackHeldout) -> list[dict[str, float]]:
    """Top-1 precision and coverage per min_confidence; each group scaled by a T fitted on the others."""
    conf, correct = np.zeros(len(held.targets)), np.zeros(len(held.targets), bool)
    for g in np.unique(held.groups):
        rows = held.groups == g
        t = fit_temperature(held.logits[~rows], held.targets[~rows]) if (~rows).any() else 1.0
        probs = softmax(held.logits[rows] / t, axis=1)
        conf[rows], correct[rows] = probs.max(1), probs.argmax(1) == held.targets[rows]
    return precision_coverage(conf, correct)


def _attack_group_coverage(logits: np.ndarray, targets: np.ndarray, groups: np.ndarray, calibrate: bool) -> dict:
    if len(np.unique(groups)) < 2:
        return {"note": "one held-out group: no other group to fit its thresholds on"}
    out = {}
    for alpha in ALPHAS:
        per_group, covs, sizes = {}, [], []
        for g in np.unique(groups):
            held = groups == g
            t = fit_temperature(logits[~held], targets[~held]) if calibrate else 1.0
            probs = softmax(logits / t, axis=1)
            lam, k = choose_raps(probs[~held], targets[~held], groups[~held], alpha)
            params = fit_params(probs[~held], targets[~held], alpha, lam, k)
            cov, size = covered(probs[held], targets[held], params), set_sizes(probs[held], params)
            per_group[str(g)] = {**_set_summary(cov, size), "lam": lam, "k_reg": k}
            covs.append(cov)
            sizes.append(size)
        rows = list(per_group.values())
        out[str(_coverage(alpha))] = {
            "mean_over_groups": {
                "coverage": float(np.mean([r["coverage"] for r in rows])),
                "mean_set_size": float(np.mean([r["mean_set_size"] for r in rows])),
            },
            "min_group_coverage": float(min(r["coverage"] for r in rows)),
            "pooled": _set_summary(np.concatenate(covs), np.concatenate(sizes)),
            "per_group": per_group,
        }
    return out


def cvss_conformal(
    held: CvssHeldout,
    labels: CvssLabels,
    temperature: float,
    halves: Sequence[int],
    baseline_probs: dict[str, np.ndarray] | None = None,
):
    """(the manifest's Conformal, a report of coverage cross-fitted by halves, model and baseline)."""
    probs = {k: softmax(lp / temperature, axis=1) for k, lp in held.logprobs.items()}
    levels = [
        ConformalLevel(
            coverage=_coverage(alpha),
            fields={m.key: _fit_chosen(probs[m.key], held.targets[m.key], alpha) for m in labels.metrics},
        )
        for alpha in ALPHAS
    ]
    conformal = Conformal(
        method="RAPS per metric over temperature-scaled probabilities (APS when lam = 0); the top value is always kept",
        calibration=f"the {len(held.ids)} validation CVEs",
        n_calibration=len(held.ids),
        levels=levels,
    )
    halves = np.asarray(halves)
    report = {
        "model": _cvss_halves_coverage(held.logprobs, held.targets, labels, halves, calibrate=True),
        "abstention": _cvss_abstention(held, halves),
    }
    if baseline_probs is not None:
        logs = {k: np.log(np.maximum(p, 1e-12)) for k, p in baseline_probs.items()}
        report["tfidf_logreg"] = _cvss_halves_coverage(logs, held.targets, labels, halves, calibrate=False)
    return conformal, report


def _fit_chosen(probs: np.ndarray, targets: np.ndarray, alpha: float):
    """RAPS with the penalty chosen on two interleaved folds of the rows (CVSS has no groups)."""
    lam, k = choose_raps(probs, targets, np.arange(len(targets)) % 2, alpha)
    return fit_params(probs, targets, alpha, lam, k)


def _cvss_abstention(held: CvssHeldout, halves: np.ndarray) -> list[dict[str, float]]:
    """Per-metric precision and coverage per min_confidence (all metrics pooled); each half scaled by a T
    fitted on the other half."""
    conf, correct = [], []
    for h in np.unique(halves):
        test = halves == h
        fit = ~test if len(np.unique(halves)) > 1 else test
        t = cvss_temperature(held.logprobs, held.targets, fit)
        for k, lp in held.logprobs.items():
            probs = softmax(lp[test] / t, axis=1)
            conf.append(probs.max(1))
            correct.append(probs.argmax(1) == held.targets[k][test])
    return precision_coverage(np.concatenate(conf), np.concatenate(correct))


def cvss_temperature(logprobs: dict[str, np.ndarray], targets: dict[str, np.ndarray], rows: np.ndarray) -> float:
    """One T for every metric's softmax, minimising the mean per-metric NLL over `rows`."""
    from scipy.optimize import minimize_scalar

    from training.calibrate import nll

    def loss(log_t: float) -> float:
        return float(np.mean([nll(lp[rows], targets[k][rows], float(np.exp(log_t))) for k, lp in logprobs.items()]))

    return float(np.exp(minimize_scalar(loss, bounds=(-3, 3), method="bounded").x))


def _cvss_halves_coverage(
    logprobs: dict[str, np.ndarray],
    targets: dict[str, np.ndarray],
    labels: CvssLabels,
    halves: np.ndarray,
    calibrate: bool,
) -> dict:
    """Each half's sets come from a temperature (with `calibrate`) and thresholds fitted on the other half."""
    keys = [m.key for m in labels.metrics]
    values = {m.key: list(m.values) for m in labels.metrics}
    out = {}
    for alpha in ALPHAS:
        cov = {k: np.zeros(len(halves), bool) for k in keys}
        size = {k: np.zeros(len(halves)) for k in keys}
        for h in np.unique(halves):
            test = halves == h
            fit = ~test if len(np.unique(halves)) > 1 else test
            t = cvss_temperature(logprobs, targets, fit) if calibrate else 1.0
            for k in keys:
                params = _fit_chosen(softmax(logprobs[k][fit] / t, axis=1), targets[k][fit], alpha)
                p_test = softmax(logprobs[k][test] / t, axis=1)
                cov[k][test] = covered(p_test, targets[k][test], params)
                size[k][test] = set_sizes(p_test, params)
        # The base-score range each row's sets allow (a set is a prefix of the ranking, which the
        # temperature does not change), and whether it holds the true score.
        in_range, widths = [], []
        for i in range(len(halves)):
            sets = {}
            for k in keys:
                order = np.argsort(-logprobs[k][i], kind="stable")[: int(size[k][i])]
                sets[k] = [values[k][j] for j in order]
            lo, hi = base_score_range(labels, sets)
            true = score_vector(labels.vector({k: values[k][targets[k][i]] for k in keys}))[0]
            in_range.append(lo <= true <= hi)
            widths.append(hi - lo)
        out[str(_coverage(alpha))] = {
            "mean_over_metrics": {
                "coverage": float(np.mean([cov[k].mean() for k in keys])),
                "mean_set_size": float(np.mean([size[k].mean() for k in keys])),
            },
            "per_metric": {k: _set_summary(cov[k], size[k]) for k in keys},
            "all_metrics_covered": float(np.mean(np.all([cov[k] for k in keys], axis=0))),
            "base_score_in_range": float(np.mean(in_range)),
            "mean_base_score_range_width": float(np.mean(widths)),
        }
    return out
