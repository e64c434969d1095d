"""Extra ATT&CK training rows (catalogue procedures, annotators' reasons): the seeded cap, and no fold
training on rows tied to its held-out group."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np

from training.attack.catalogue import catalogue
from training.attack.procedures import PROCEDURE_GROUP, procedure_examples
from training.attack.train import RATIONALE_GROUP, extra_rows, rationale_rows
from training.data import AttackExample, load_cti_hal
from training.evaluation.baseline import attack_baseline_oof

GROUPS = ["apt29", "carbanak", "fin6", "fin7", "sandworm", "wizardspider"]


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


def test_annotator_reasons_become_rows_tied_to_their_item_group(tmp_path):
    reason = "Credential dumping from the memory of the LSASS process."
    items = [
        {"context": "They dumped LSASS with procdump.", "technique": "T1003.001", "metadata": {"description": reason}},
        {"context": "LSASS was read again later.", "technique": "T1003", "metadata": {"description": reason}},
        {"context": "cmd.exe ran it", "technique": "T1059", "metadata": {"description": "ran a shell"}},  # too short
        {
            "context": "They ran PowerShell scripts.",
            "technique": "T1059",
            "metadata": {"description": " they ran powershell scripts. "},
        },  # the excerpt itself
        {"context": "Scheduled tasks kept it alive.", "technique": "T1053", "metadata": None},
    ]
    (tmp_path / "fin6").mkdir()
    (tmp_path / "fin6" / "REPORT.json").write_text(json.dumps(items))
    examples, _ = load_cti_hal(tmp_path, catalogue().remap)
    assert len(examples) == 5 and examples[0].rationale == reason

    rows = rationale_rows(examples)
    assert [(r.text, r.technique, r.group, r.report) for r in rows] == [(reason, "T1003", RATIONALE_GROUP, "REPORT")]
    assert not rows[0].trains_without(["fin6"]) and rows[0].trains_without(["apt29", "fin7"])

    labels = catalogue().labels()
    assert extra_rows(labels, examples, False, 0, True) == rows
    assert extra_rows(labels, examples, False, 0, False) == []
