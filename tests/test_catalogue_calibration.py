"""ATT&CK catalogue label set, remapping and prose cleaning; temperature scaling and ECE on synthetic data."""

from __future__ import annotations

import re
from math import comb

import numpy as np
import pytest
from scipy.special import softmax

from training.attack.catalogue import catalogue, clean_prose
from training.attack.procedures import procedure_examples
from training.evaluation.calibrate import ece, ece_floor, fit_temperature, nll


def test_label_set_is_current_top_level():
    labels = catalogue().labels()
    ids = [t.id for t in labels]
    assert len(ids) == len(set(ids)) > 200
    assert all("." not in i for i in ids)
    assert "T1086" not in ids  # revoked (PowerShell, now T1059.001)
    assert next(t for t in labels if t.id == "T1047").name == "Windows Management Instrumentation"


def test_clean_prose_keeps_link_text_and_drops_citations():
    raw = "[APT29](https://attack.mitre.org/groups/G0016) has used [WMI](https://x/y) to run code.(Citation: A B) ..."
    assert clean_prose(raw) == "APT29 has used WMI to run code."


def test_clean_prose_drops_what_the_cut_left_open():
    # the lookup cuts descriptions and procedures short, sometimes inside a citation marker or a link
    cut = {
        "It has used ntds.util.(Citation: Microsoft Volt Typhoon May 2...": "It has used ntds.util.",
        "UNC3886 has employed layers of redundancy.(Citation...": "UNC3886 has employed layers of redundancy.",
        "It modified the boot record.(Ci": "It modified the boot record.",
        "Wizard Spider has also used [Conti](https://attack.mitre.org/softw...": "Wizard Spider has also used Conti",
        "It deployed XMRig images. [TeamTN...": "It deployed XMRig images. TeamTN",
    }
    assert {raw: clean_prose(raw) for raw in cut} == cut
    # a closed parenthesis, a CVE or a bracket inside code is text, not a cut marker
    for kept in ("It exploited (CVE-2021-44228", "It ran <code>[Responder file path] -i</code>", "(Cobalt Strike"):
        assert clean_prose(kept) == kept


def test_catalogue_training_texts_carry_no_link_or_citation_markup():
    cat = catalogue()
    ids = {t.id for t in cat.labels()}
    texts = [cat.description(i) for i in ids] + [r.text for r in procedure_examples(cat, ids, 8, [])]
    assert len(texts) > 1500
    markup = [t for t in texts if re.search(r"\(Cit|\]\(|https?:|\n", t) or re.search(r"\[[^\]]*$", t)]
    assert markup == []


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
