"""Catalogue procedure examples: cleaning, the seeded cap, and no fold training on rows tied to its held-out group."""

from __future__ import annotations

from collections import Counter

import numpy as np

from training.baseline import attack_baseline_oof
from training.catalogue import catalogue
from training.data import AttackExample
from training.procedures import PROCEDURE_GROUP, clean_procedure, procedure_examples

GROUPS = ["apt29", "carbanak", "fin6", "fin7", "sandworm", "wizardspider"]


def test_clean_procedure_keeps_link_text_and_drops_citations():
    raw = "[APT29](https://attack.mitre.org/groups/G0016) has used [WMI](https://x/y) to run code.(Citation: A B) ..."
    assert clean_procedure(raw) == "APT29 has used WMI to run code."


def test_clean_procedure_drops_what_the_cut_left_open():
    # the lookup cuts procedures at ~200 characters, sometimes inside a citation marker or a link
    cut = {
        "It has used ntds.util.(Citation: Microsoft Volt Typhoon May 2...": "It has used ntds.util.",
        "UNC3886 has employed layers of redundancy.(Citation...": "UNC3886 has employed layers of redundancy.",
        "It modified the boot record.(Ci": "It modified the boot record.",
        "Wizard Spider has also used [Conti](https://attack.mitre.org/softw...": "Wizard Spider has also used Conti",
        "It deployed XMRig images. [TeamTN...": "It deployed XMRig images. TeamTN",
    }
    assert {raw: clean_procedure(raw) for raw in cut} == cut
    # a closed parenthesis, a CVE or a bracket inside code is text, not a cut marker
    for kept in ("It exploited (CVE-2021-44228", "It ran <code>[Responder file path] -i</code>", "(Cobalt Strike"):
        assert clean_procedure(kept) == kept


def test_rows_are_capped_per_technique_reproducibly_and_labelled_with_current_ids():
    cat = catalogue()
    ids = {t.id for t in cat.labels()}
    rows = procedure_examples(cat, ids, 3, GROUPS)
    per = Counter(r.technique for r in rows)
    assert max(per.values()) == 3 and len(per) > 150  # most techniques have procedures
    assert all(r.technique in ids and r.group == PROCEDURE_GROUP for r in rows)  # sub-techniques -> parent
    assert rows == procedure_examples(cat, ids, 3, GROUPS)
    assert rows != procedure_examples(cat, ids, 3, GROUPS, seed=14)
    assert procedure_examples(cat, ids, 0, GROUPS) == []


def test_rows_naming_or_coming_from_a_group_are_tied_to_it():
    cat = catalogue()
    rows = procedure_examples(cat, {t.id for t in cat.labels()}, 10_000, GROUPS)  # every procedure
    tied = {g: [r for r in rows if g in r.related_groups] for g in GROUPS}
    assert all(tied[g] for g in GROUPS)  # each CTI-HAL group has catalogue procedures
    # by name or alias in the text ...
    named = [r for r in rows if "apt29" in r.text.lower() or "cozy bear" in r.text.lower()]
    assert named and all("apt29" in r.related_groups for r in named)
    # ... and by source, even where the text names only the software (TrickBot is Wizard Spider's)
    trickbot = [r for r in rows if r.text.startswith("TrickBot ")]
    assert trickbot and all("wizardspider" in r.related_groups for r in trickbot)
    assert not any("wizardspider" in r.related_groups for r in rows if r.text.startswith("Flame "))


def test_no_fold_trains_on_rows_tied_to_its_held_out_groups():
    tied = AttackExample("APT29 used X.", "T1047", PROCEDURE_GROUP, "r", "s", ("apt29",))
    free = AttackExample("Flame used X.", "T1047", PROCEDURE_GROUP, "r", "s")
    assert not tied.trains_without(["apt29"]) and tied.trains_without(["fin6", "fin7"])
    assert free.trains_without(["apt29"])

    # The baseline's folds: a held-out row whose text is exactly a tied row's is not memorised.
    labels = ["T1047", "T1059"]
    examples = [
        AttackExample("alpha beta gamma", "T1047", "apt29", "r1", "s"),
        AttackExample("delta epsilon zeta", "T1059", "fin6", "r2", "s"),
        AttackExample("eta theta iota", "T1047", "fin6", "r3", "s"),
        AttackExample("kappa lambda mu", "T1047", "fin6", "r3", "s"),
    ]
    leak = [AttackExample("alpha beta gamma", "T1059", PROCEDURE_GROUP, "p", "s", ("apt29",))] * 3
    oof = attack_baseline_oof(examples, leak, [["apt29"], ["fin6"]], labels)
    untied = [AttackExample(e.text, e.technique, e.group, e.report, e.source) for e in leak]
    oof_leaky = attack_baseline_oof(examples, untied, [["apt29"], ["fin6"]], labels)
    assert oof_leaky[0].argmax() == 1 and oof[0].argmax() != 1  # the tie keeps the answer out of training
    assert np.allclose(oof[1:], oof_leaky[1:])  # the fin6 fold trains on the tied rows either way
