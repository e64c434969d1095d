"""What an analyst acts on beyond the top answer, measured on data that fitted neither it nor the
temperature: the conformal thresholds an artifact ships with their coverage, and the precision/coverage
table that tells a user which `min_confidence` to pick.

ATT&CK: calibrated on the out-of-fold probabilities of every threat group, each group weighing the same
(a new group is exactly what users send). Coverage is reported per held-out group: group g's sets use a
temperature, a RAPS penalty and a threshold fitted on the other groups only. CVSS: one threshold on the
vector NLL of the validation CVEs; coverage is cross-fitted by halves (each half's sets use the other
half's temperature and threshold). TF-IDF + LR sets are built the same way beside them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import log_softmax, softmax

from training.artifact.conformal import (
    VectorSet,
    covered,
    fit_params,
    fit_vector_nll,
    group_weights,
    set_sizes,
    vector_covered,
)
from training.artifact.manifest import Conformal, ConformalLevel, CvssLabels
from training.artifact.scoring import score_vector
from training.evaluation.calibrate import fit_temperature
from training.evaluation.heldout import AttackHeldout, CvssHeldout
from training.evaluation.metrics import precision_coverage

ALPHAS = (0.1, 0.2)  # offered coverages 0.9 and 0.8
# RAPS penalties tried (APS first), chosen per alpha and field by the smallest mean set size on held-out
# folds of the calibration rows; the coverage guarantee holds whichever is chosen. A large lam makes the
# set size follow the rank alone: for a sharp model, APS (lam = 0) adds a second label to every row
# whose top probability is below a threshold near 1.
RAPS_GRID = ((0.0, 1),) + tuple((lam, k) for lam in (0.002, 0.01, 0.05, 0.2, 1.0) for k in (1, 2, 3, 5, 10))
ATTACK_FIELD = "technique"


def _coverage(alpha: float) -> float:
    return round(1 - alpha, 6)


def choose_raps(
    probs: np.ndarray, targets: np.ndarray, groups: np.ndarray, alpha: float, weighted: bool = False
) -> tuple[float, int]:
    """(lam, k_reg) with the smallest mean set size when each group (fold) is held out in turn; with
    `weighted`, thresholds weigh every remaining group the same."""
    groups = np.asarray(groups)
    uniq = np.unique(groups)
    if len(uniq) < 2:
        return 0.0, 1

    def mean_size(lam: float, k: int) -> float:
        sizes = []
        for g in uniq:
            held = groups == g
            params = _fit_raps(probs[~held], targets[~held], groups[~held], alpha, lam, k, weighted)
            sizes.append(set_sizes(probs[held], params).mean())
        return float(np.mean(sizes))

    return min(RAPS_GRID, key=lambda c: (mean_size(*c), c[0]))


def _fit_raps(probs, targets, groups, alpha, lam, k, weighted: bool):
    return fit_params(probs, targets, alpha, lam, k, group_weights(groups) if weighted else None)


def _set_summary(cov: np.ndarray, sizes: np.ndarray) -> dict[str, float]:
    return {"n": len(cov), "coverage": float(cov.mean()), "mean_set_size": float(sizes.mean())}


def attack_conformal(held: AttackHeldout, temperature: float, baseline_logprobs: np.ndarray | None = None):
    """(the manifest's Conformal, a report of held-out-group coverage for the model and the baseline)."""
    probs = softmax(held.logits / temperature, axis=1)
    levels = []
    for alpha in ALPHAS:
        lam, k = choose_raps(probs, held.targets, held.groups, alpha, weighted=True)
        params = _fit_raps(probs, held.targets, held.groups, alpha, lam, k, weighted=True)
        levels.append(ConformalLevel(coverage=_coverage(alpha), fields={ATTACK_FIELD: params}))
    conformal = Conformal(
        method="RAPS over temperature-scaled probabilities (APS when lam = 0); the top technique is always kept",
        calibration=f"out-of-fold logits of every threat group ({', '.join(np.unique(held.groups))}), "
        "each group weighing the same",
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
            lam, k = choose_raps(probs[~held], targets[~held], groups[~held], alpha, weighted=True)
            params = _fit_raps(probs[~held], targets[~held], groups[~held], alpha, lam, k, weighted=True)
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
    logprobs = _scaled(held.logprobs, temperature)
    levels = [
        ConformalLevel(coverage=_coverage(alpha), vector_nll=fit_vector_nll(logprobs, held.targets, alpha))
        for alpha in ALPHAS
    ]
    conformal = Conformal(
        method="the CVSS vectors whose NLL over temperature-scaled probabilities is at most the threshold "
        "(the most probable vector always); per metric, the values that occur in them",
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


def _scaled(logprobs: dict[str, np.ndarray], temperature: float) -> dict[str, np.ndarray]:
    return {k: log_softmax(lp / temperature, axis=1) for k, lp in logprobs.items()}


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

    from training.evaluation.calibrate import nll

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
    """Each half's sets come from a temperature (with `calibrate`) and a threshold fitted on the other half."""
    keys = [m.key for m in labels.metrics]
    values = {m.key: list(m.values) for m in labels.metrics}
    n = len(halves)
    out = {}
    for alpha in ALPHAS:
        cov, size, in_range, width = np.zeros(n, bool), np.zeros(n), np.zeros(n, bool), np.zeros(n)
        metric_cov = {k: np.zeros(n, bool) for k in keys}
        metric_size = {k: np.zeros(n) for k in keys}
        for h in np.unique(halves):
            test = halves == h
            fit = ~test if len(np.unique(halves)) > 1 else test
            scaled, q, cov[test] = _cross_fit(logprobs, targets, fit, test, alpha, calibrate)
            for i in np.where(test)[0]:
                vs = VectorSet(labels, {k: dict(zip(values[k], np.exp(scaled[k][i]), strict=True)) for k in keys}, q)
                truth = {k: values[k][targets[k][i]] for k in keys}
                true_score = score_vector(labels.vector(truth))[0]
                size[i] = vs.size
                lo, hi = vs.base_score_range
                in_range[i], width[i] = lo <= true_score <= hi, hi - lo
                for k in keys:
                    metric_cov[k][i] = truth[k] in vs.sets[k]
                    metric_size[k][i] = len(vs.sets[k])
        out[str(_coverage(alpha))] = {
            "vector_random_halves": random_halves_coverage(logprobs, targets, alpha, calibrate),
            "vector": {
                "n": n,
                "coverage": float(cov.mean()),
                "mean_set_size": float(size.mean()),
                "median_set_size": float(np.median(size)),
            },
            "base_score_in_range": float(in_range.mean()),
            "mean_base_score_range_width": float(width.mean()),
            "mean_over_metrics": {
                "coverage": float(np.mean([metric_cov[k].mean() for k in keys])),
                "mean_set_size": float(np.mean([metric_size[k].mean() for k in keys])),
            },
            "per_metric": {k: _set_summary(metric_cov[k], metric_size[k]) for k in keys},
        }
    return out


def random_halves_coverage(
    logprobs: dict[str, np.ndarray], targets: dict[str, np.ndarray], alpha: float, calibrate: bool, splits: int = 100
) -> dict[str, float]:
    """Vector coverage over many random halvings (T and threshold fitted on one half, scored on the other):
    one fixed split of 120 CVEs estimates coverage with a standard error near 0.035; the mean over
    splits is the estimate to compare with the target."""
    n = len(next(iter(targets.values())))
    rng = np.random.default_rng(0)
    covs = []
    for _ in range(splits):
        fit = np.zeros(n, bool)
        fit[rng.permutation(n)[: n // 2]] = True
        covs.append(_cross_fit(logprobs, targets, fit, ~fit, alpha, calibrate)[2].mean())
    return {"splits": splits, "mean_coverage": float(np.mean(covs)), "sd_coverage": float(np.std(covs))}


def _cross_fit(logprobs, targets, fit: np.ndarray, test: np.ndarray, alpha: float, calibrate: bool):
    """T (with `calibrate`) and the vector threshold fitted on the `fit` rows; returns the scaled
    log-probabilities, the threshold and whether each `test` row's set holds its true vector."""
    t = cvss_temperature(logprobs, targets, fit) if calibrate else 1.0
    scaled = _scaled(logprobs, t)
    q = fit_vector_nll({k: lp[fit] for k, lp in scaled.items()}, {k: y[fit] for k, y in targets.items()}, alpha)
    return (
        scaled,
        q,
        vector_covered({k: lp[test] for k, lp in scaled.items()}, {k: y[test] for k, y in targets.items()}, q),
    )
