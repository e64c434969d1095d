"""`evaluate --task attack-report`: report-level micro precision, recall and F1 of the whole-report pipeline,
leaving each threat group out, beside the same pipeline run with TF-IDF + LR and the regex-sentence top-1
floor; the chosen settings and threshold are written into the artifact's manifest (`report`).

A report is one CTI-HAL file (`load_cti_hal_reports`); its truth, the set of technique ids annotated in it.
Every score of group g's reports comes from a model that never trained on g (`report_folds`), calibrated
by a temperature fitted on the other groups' out-of-fold logits. Each group's settings (context, prose
filter, aggregation) and threshold are chosen on the other groups' reports only, so the figure for g is
out of fold twice over; the manifest then records the choice made on every group.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import softmax

from training.artifact.aggregating import AGGREGATIONS, aggregate
from training.artifact.manifest import ReportPipeline, load_manifest, update_manifest
from training.artifact.segmenting import units
from training.attack.report_folds import CONTEXTS, load_group, score_folds, unit_texts
from training.data.cti_hal import HalReport, load_cti_hal_reports

log = logging.getLogger(__name__)
THRESHOLDS = np.round(np.arange(0.01, 0.96, 0.01), 2)
DEFAULT_CACHE = Path("runs/attack-report-folds")


@dataclass(frozen=True)
class Setting:
    units: str  # a `unit_texts` variant
    prose_only: bool
    aggregation: str

    @property
    def context(self) -> int:
        return int(self.units.removeprefix("context"))


# chosen from: sentences with 0-2 neighbours of context, prose only (CTI-HAL's excerpts hold almost no
# indicator lists or page furniture, real reports do: `boilerplate_check` measures what the filter saves)
SETTINGS = [Setting(f"context{c}", True, a) for c, a in itertools.product(CONTEXTS, AGGREGATIONS)]
# compared, not chosen from: the same without the prose filter; whole paragraphs as units (their evidence
# would be a paragraph, not a sentence)
NO_FILTER = [Setting(f"context{c}", False, a) for c, a in itertools.product(CONTEXTS, AGGREGATIONS)]
PARAGRAPHS = [Setting("paragraph", False, a) for a in AGGREGATIONS]


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def _counts(predicted: list[set[str]], truth: list[frozenset[str]]) -> tuple[int, int, int]:
    tp = sum(len(p & t) for p, t in zip(predicted, truth, strict=True))
    return tp, sum(map(len, predicted)) - tp, sum(map(len, truth)) - tp


class Scored:
    """Every report's unit probabilities under every setting, for one scorer (the model or the baseline)."""

    def __init__(self, reports: list[HalReport], probs_of: dict[str, np.ndarray], labels: list[str]) -> None:
        self.reports, self.labels = reports, labels
        self.units = [unit_texts(r) for r in reports]
        self._prose = [{(u.start, u.end) for u in units(r.text, 0, True)} for r in reports]
        self.probs_of = probs_of  # unit text -> calibrated probabilities
        self._scores: dict[tuple[Setting, int], np.ndarray] = {}

    def unit_probs(self, i: int, variant: str, prose_only: bool = False) -> np.ndarray:
        keep = self._prose[i] if prose_only else None  # the service's own filter, by sentence span
        rows = [self.probs_of[t] for a, b, t in self.units[i][variant] if keep is None or (a, b) in keep]
        return np.stack(rows) if rows else np.zeros((0, len(self.labels)))

    def scores(self, s: Setting, i: int) -> np.ndarray:
        key = (s, i)
        if key not in self._scores:
            self._scores[key] = aggregate(self.unit_probs(i, s.units, s.prose_only), s.aggregation)
        return self._scores[key]

    def predicted(self, s: Setting, threshold: float, idx: list[int]) -> list[set[str]]:
        return [{self.labels[j] for j in np.flatnonzero(self.scores(s, i) >= threshold)} for i in idx]

    def best(self, idx: list[int], settings: list[Setting]) -> tuple[Setting, float, float]:
        """(setting, threshold, pooled micro F1) maximising F1 over the reports `idx`; ties: the first."""
        truth = [self.reports[i].truth for i in idx]
        best = (settings[0], float(THRESHOLDS[0]), -1.0)
        for s in settings:
            for t in THRESHOLDS:
                f1 = _prf(*_counts(self.predicted(s, float(t), idx), truth))["f1"]
                if f1 > best[2] + 1e-12:
                    best = (s, float(t), f1)
        return best

    def top1_floor(self, idx: list[int]) -> dict[str, float]:
        """Every regex sentence's top-1 technique, kept: the floor a new user gets."""
        predicted = [{self.labels[j] for j in self.unit_probs(i, "regex").argmax(axis=1)} for i in idx]
        return _prf(*_counts(predicted, [self.reports[i].truth for i in idx]))


def leave_group_out(scored: Scored, settings: list[Setting]) -> dict:
    """Per held-out group: the setting and threshold chosen on the other groups, and its P/R/F1 there."""
    groups = sorted({r.group for r in scored.reports})
    per_group = {}
    for g in groups:
        held = [i for i, r in enumerate(scored.reports) if r.group == g]
        rest = [i for i, r in enumerate(scored.reports) if r.group != g]
        s, t, _ = scored.best(rest, settings)
        m = _prf(*_counts(scored.predicted(s, t, held), [scored.reports[i].truth for i in held]))
        per_group[g] = {**m, "reports": len(held), "min_score": t, **vars(s), "floor": scored.top1_floor(held)}
    keys = ("precision", "recall", "f1")
    return {
        "mean": {k: float(np.mean([m[k] for m in per_group.values()])) for k in keys},
        "std": {k: float(np.std([m[k] for m in per_group.values()])) for k in keys},
        "floor_mean": {k: float(np.mean([m["floor"][k] for m in per_group.values()])) for k in keys},
        "per_group": per_group,
    }


def boilerplate_check(artifact: Path, pipeline: ReportPipeline) -> dict:
    """Techniques a report made only of `BOILERPLATE` lines gets at the chosen threshold, with the prose filter
    and without it: every one is a false positive. Scored by the shipped model (none of these lines is a
    training row), calibrated by its temperature."""
    from training.artifact.loading import base_for, load_attack_classifier, load_tokenizer, pick_device, pick_dtype
    from training.attack.predict import attack_logits
    from training.attack.report_boilerplate import BOILERPLATE

    manifest = load_manifest(artifact)
    device = pick_device()
    base = base_for(manifest)
    tok = load_tokenizer(base)
    model = load_attack_classifier(artifact, manifest, base, tok.pad_token_id, device, pick_dtype(device))
    probs = softmax(attack_logits(model, tok, manifest, BOILERPLATE).numpy() / manifest.temperature, axis=1)
    prose = np.array([bool(units(line, 0, True)) for line in BOILERPLATE])  # each line a paragraph of its own
    labels = [t.id for t in manifest.labels.techniques]

    def found(rows: np.ndarray) -> list[str]:
        scores = aggregate(rows, pipeline.aggregation) if len(rows) else np.zeros(len(labels))
        return [labels[j] for j in np.flatnonzero(scores >= pipeline.min_score)]

    return {
        "lines": len(BOILERPLATE),
        "lines_read_as_prose": int(prose.sum()),
        "false_techniques_without_filter": found(probs),
        "false_techniques_with_filter": found(probs[prose]),
    }


def _probabilities(reports, cache: Path, labels: list[str], temperatures: dict[str, float]):
    """unit text -> calibrated model probabilities, and -> baseline probabilities, over every group."""
    model, baseline = {}, {}
    for g in sorted({r.group for r in reports}):
        texts, logits, base = load_group(cache, g)
        if logits.shape[1] != len(labels):
            raise ValueError(f"{cache}: {g} was scored over {logits.shape[1]} labels, the artifact has {len(labels)}")
        p = softmax(logits.astype(np.float64) / temperatures[g], axis=1)
        b = softmax(base.astype(np.float64), axis=1)  # log-probabilities: renormalised after clipping
        model.update(zip(texts, p, strict=True))
        baseline.update(zip(texts, b, strict=True))
    return model, baseline


def evaluate_attack_report(artifact: Path, data: Path, cache: Path | None = None, write: bool = True) -> dict:
    from training.attack.catalogue import catalogue
    from training.evaluation import heldout
    from training.evaluation.calibrate import fit_temperature

    manifest = load_manifest(artifact)
    labels = [t.id for t in manifest.labels.techniques]
    reports = load_cti_hal_reports(data, catalogue().remap)
    cache = Path(cache or DEFAULT_CACHE)
    score_folds(artifact, data, reports, cache)
    held = heldout.load(artifact)
    temperatures = {}
    for g in sorted({r.group for r in reports}):  # each group calibrated without its own logits
        other = held.groups != g
        temperatures[g] = fit_temperature(held.logits[other], held.targets[other]) if other.any() else 1.0
    model_probs, base_probs = _probabilities(reports, cache, labels, temperatures)
    model, base = Scored(reports, model_probs, labels), Scored(reports, base_probs, labels)
    result = {
        "task": "attack-report",
        "artifact": manifest.name,
        "version": manifest.version,
        "reports": len(reports),
        "groups": sorted({r.group for r in reports}),
        "model": leave_group_out(model, SETTINGS),
        "tfidf_logreg": leave_group_out(base, SETTINGS),
        "no_prose_filter": leave_group_out(model, NO_FILTER),
        "paragraph_units": leave_group_out(model, PARAGRAPHS),
    }
    every = list(range(len(reports)))
    chosen, threshold, pooled = model.best(every, SETTINGS)
    result["chosen"] = {**vars(chosen), "min_score": threshold, "pooled_f1_all_groups": pooled}
    log.info("chosen on every group: %s", result["chosen"])
    if write:
        pipeline = ReportPipeline(
            context=chosen.context,  # SETTINGS hold sentence units only
            prose_only=chosen.prose_only,
            aggregation=chosen.aggregation,
            min_score=threshold,
            chosen_on=f"pooled report-level micro F1 of {len(reports)} CTI-HAL reports of {len(result['groups'])} "
            "groups, each scored by a model that never trained on its group (python -m training evaluate "
            "--task attack-report)",
        )
        result["boilerplate"] = boilerplate_check(artifact, pipeline)
        keep = ("model", "tfidf_logreg", "no_prose_filter", "paragraph_units", "boilerplate")
        metrics = {**manifest.metrics, "report": {k: v for k, v in result.items() if k in keep}}
        update_manifest(artifact, manifest.model_copy(update={"report": pipeline, "metrics": metrics}))
    return result


def format_report(result: dict) -> str:
    """The table `evaluate` prints: mean over held-out groups, then each group."""
    rows = [
        ("model (whole-report pipeline)", result["model"]["mean"]),
        ("TF-IDF + LR (same pipeline)", result["tfidf_logreg"]["mean"]),
        ("same, without the prose filter", result["no_prose_filter"]["mean"]),
        ("paragraphs as units (model)", result["paragraph_units"]["mean"]),
        ("regex sentences, every top-1 (model)", result["model"]["floor_mean"]),
    ]
    out = [
        f"{result['reports']} reports of {len(result['groups'])} threat groups, each group held out "
        "(micro figures per group, then their mean)",
        f"{'':40s} {'precision':>9s} {'recall':>7s} {'F1':>6s}",
    ]
    out += [f"{name:40s} {m['precision']:9.3f} {m['recall']:7.3f} {m['f1']:6.3f}" for name, m in rows]
    out.append("per group (model | TF-IDF + LR F1):")
    for g, m in result["model"]["per_group"].items():
        b = result["tfidf_logreg"]["per_group"][g]
        out.append(
            f"  {g:14s} P {m['precision']:.3f} R {m['recall']:.3f} F1 {m['f1']:.3f} | {b['f1']:.3f}"
            f"  ({m['units']}, {m['aggregation']}, prose only {m['prose_only']}, min_score {m['min_score']})"
        )
    if "boilerplate" in result:
        b = result["boilerplate"]
        out.append(
            f"a report of {b['lines']} boilerplate lines (IoCs, references, legal, navigation): "
            f"{len(b['false_techniques_without_filter'])} techniques without the prose filter, "
            f"{len(b['false_techniques_with_filter'])} with it ({b['lines_read_as_prose']} lines read as prose)"
        )
    c = result["chosen"]
    out.append(
        f"chosen on every group: {c['units']}, {c['aggregation']}, prose only {c['prose_only']}, "
        f"min_score {c['min_score']} (pooled F1 {c['pooled_f1_all_groups']:.3f})"
    )
    return "\n".join(out)
