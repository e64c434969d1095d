"""`evaluate --task attack-report`'s bookkeeping (fast tier, synthetic scores): reports rebuilt from CTI-HAL
files, micro P/R/F1, and settings and thresholds chosen without the group they are scored on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.attack.report_evaluate import SETTINGS, Scored, Setting, leave_group_out
from training.attack.report_folds import unit_texts
from training.data.cti_hal import HalReport, load_cti_hal_reports

LABELS = ["T1003", "T1059", "T1566", "T1105"]  # T1105: what a sentence naming none leans to


def _report(group: str, name: str, sentences: list[str], truth: set[str]) -> HalReport:
    return HalReport(group, f"{group}/{name}.json", "\n\n".join(sentences), frozenset(truth))


def _scored(reports: list[HalReport], strength: dict[str, float]) -> Scored:
    """Every unit text gets probability `strength[group]` on the label its sentence names, the rest spread."""
    probs = {}
    for r in reports:
        for variant in unit_texts(r).values():
            for _, _, text in variant:
                p = np.full(len(LABELS), 0.01)
                p[-1] = 0.05
                for j, tid in enumerate(LABELS):
                    if tid in text:
                        p[j] = strength[r.group]
                probs[text] = p / p.sum() if p.sum() > 1 else p
    return Scored(reports, probs, LABELS)


def _reports() -> list[HalReport]:
    out = []
    for g in ("a", "b", "c"):
        out.append(_report(g, "one", [f"The {g} actor ran {LABELS[1]} scripts on every host they reached."], {"T1059"}))
        out.append(
            _report(
                g,
                "two",
                [f"They sent {LABELS[2]} lures to {g} staff members.", f"Nothing else happened at {g} here."],
                {"T1566", "T1003"},
            )
        )
    return out


def test_threshold_and_setting_of_a_group_never_depend_on_its_own_scores():
    reports = _reports()
    base = leave_group_out(_scored(reports, {"a": 0.9, "b": 0.9, "c": 0.9}), SETTINGS)
    shifted = leave_group_out(_scored(reports, {"a": 0.04, "b": 0.9, "c": 0.9}), SETTINGS)
    keys = ("min_score", "units", "prose_only", "aggregation")
    assert [base["per_group"]["a"][k] for k in keys] == [shifted["per_group"]["a"][k] for k in keys]
    # group a scored at 0.04 falls under the lowest threshold the others accept (0.06): its recall drops to zero
    assert base["per_group"]["a"]["recall"] == pytest.approx(2 / 3)
    assert shifted["per_group"]["a"]["recall"] == 0.0


def test_micro_figures_count_techniques_over_a_groups_reports():
    reports = _reports()
    out = leave_group_out(_scored(reports, {"a": 0.9, "b": 0.9, "c": 0.9}), [Setting("context0", False, "max")])
    g = out["per_group"]["b"]
    # T1059 and T1566 found, T1003 missed, nothing wrong: P 1, R 2/3
    assert (g["precision"], g["recall"]) == (1.0, pytest.approx(2 / 3))
    assert g["f1"] == pytest.approx(0.8) and out["mean"]["f1"] == pytest.approx(0.8)
    # the floor keeps every sentence's top-1: "Nothing else happened here." adds T1105, a false positive
    assert (g["floor"]["precision"], g["floor"]["recall"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))


def test_cti_hal_files_become_reports_with_every_excerpt_once(tmp_path):
    items = [
        {"context": "First excerpt.", "technique": "T1059.001", "metadata": {}},
        {"context": "First excerpt.", "technique": "T1003", "metadata": {}},
        {"context": "An excerpt with no technique.", "technique": None, "metadata": {}},
        {"context": "", "technique": "T1566", "metadata": {}},
        {"context": "Malformed label.", "technique": "1036", "metadata": {}},
    ]
    (tmp_path / "grp").mkdir()
    (tmp_path / "grp" / "R1.json").write_text(json.dumps(items))
    remap = {"T1059.001": "T1059", "T1003": "T1003", "T1566": "T1566"}.get
    (r,) = load_cti_hal_reports(tmp_path, remap)
    assert r.group == "grp" and r.name == "grp/R1.json"
    assert r.text == "First excerpt.\n\nAn excerpt with no technique.\n\nMalformed label."
    assert r.truth == {"T1059", "T1003", "T1566"}
