"""Refit an existing artifact's conformal prediction-set thresholds (what training now does at its end)
and rewrite it atomically: for artifacts trained before training did, or to audit a shipped one. ATT&CK's
cross-group metrics are recomputed from the same out-of-fold logits too, so a metric added since the
artifact was trained appears without retraining (the figures already there come out the same).

ATT&CK refits from the out-of-fold logits the artifact keeps. CVSS uses its kept validation scores, or
runs the adapter over its validation CVEs once (with transformers) and keeps them from then on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from training.artifact.layout import HELDOUT_FILE, REPORT_DIR
from training.artifact.manifest import (
    ArtifactError,
    AttackSplit,
    CvssSplit,
    Manifest,
    load_manifest,
    load_split,
    write_artifact,
)
from training.evaluation import heldout


def refit_conformal(artifact: Path, data: list[Path], out: Path | None = None) -> Manifest:
    artifact = Path(artifact)
    manifest = load_manifest(artifact)
    split = load_split(artifact)
    held = heldout.load(artifact)
    cross_group: dict = {}
    if manifest.task == "cvss":
        held, conformal, report = _cvss(artifact, manifest, split, held, data)
    else:
        conformal, report, cross_group = _attack(manifest, split, held, data)
    metrics = {**manifest.metrics, **cross_group, "conformal": report}
    final = manifest.model_copy(update={"conformal": conformal, "metrics": metrics})

    def write(d: Path) -> None:
        for rel in manifest.files:
            if rel != HELDOUT_FILE:
                (d / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(artifact / rel, d / rel)
        if (artifact / REPORT_DIR).is_dir():
            shutil.copytree(artifact / REPORT_DIR, d / REPORT_DIR)
        heldout.save(d, held)

    return write_artifact(Path(out or artifact), final, write)


def _cvss(artifact: Path, manifest: Manifest, split, held, data: list[Path]):
    from training.cvss.train import _conformal, _values, evaluate_cvss_model
    from training.data import load_cvss

    if not isinstance(split, CvssSplit):
        raise ArtifactError(f"{artifact}: a CVSS artifact needs its split.json")
    by_id = {e.cve_id: e for e in load_cvss(data)}
    scored = split.scored_ids  # a refit on every CVE keeps its validation run's
    missing = [i for i in scored if i not in by_id]
    if missing:
        raise ValueError(f"--data lacks {len(missing)} of the artifact's validation CVEs, e.g. {missing[:3]}")
    val_ex = [by_id[i] for i in scored]
    train_ex = [by_id[i] for i in split.train_ids if i in by_id and i not in set(scored)]
    if held is None:
        if split.selection_ids:  # this adapter trained on them: its scores there would not be held out
            raise ArtifactError(f"{artifact}: a refit on every CVE needs its validation run's {HELDOUT_FILE}")
        from training.artifact.loading import (
            base_for,
            load_causal_lm_with_adapter,
            load_tokenizer,
            pick_device,
            pick_dtype,
        )

        device = pick_device()
        base = base_for(manifest)
        model = load_causal_lm_with_adapter(artifact, base, device, pick_dtype(device))
        raw = manifest.model_copy(update={"temperature": 1.0})
        _, probs = evaluate_cvss_model(model, load_tokenizer(base), raw, val_ex)
        held = heldout.cvss_heldout(probs, [e.values for e in val_ex], [e.cve_id for e in val_ex], _values(manifest))
    if sorted(held.ids) != sorted(scored):  # same CVEs; training keeps them in its own order
        raise ArtifactError(f"{artifact}: kept validation scores do not match split.json")
    val_ex = [by_id[i] for i in held.ids]
    conformal, report = _conformal(held, manifest.labels, manifest.temperature, train_ex, val_ex)
    return held, conformal, report


def _attack(manifest: Manifest, split, held, data: list[Path]):
    from training.attack.cross_validation import cross_group_metrics, excerpt_ids
    from training.attack.train import attack_examples
    from training.evaluation.baseline import attack_baseline_oof
    from training.evaluation.conformal import attack_conformal

    if held is None:
        raise ArtifactError(
            f"{manifest.name}: keeps no out-of-fold logits ({HELDOUT_FILE}); retrain it with `training attack`"
        )
    if not isinstance(split, AttackSplit) or len(data) != 1:
        raise ValueError("an ATT&CK artifact needs its split.json and one --data folder (CTI-HAL)")
    hp = manifest.hyperparameters
    labels, examples, extra, _ = attack_examples(
        data[0],
        hp.get("catalogue_examples", True),
        hp.get("limit_train", 0),
        hp.get("procedures", 0),
        hp.get("rationales", False),
    )
    folds = split.cv_folds or [split.validation_groups]
    baseline = attack_baseline_oof(examples, extra, folds, [t.id for t in labels])
    if len(baseline) != len(held.targets):
        raise ArtifactError(
            f"{manifest.name}: --data gives {len(baseline)} held-out rows, the artifact kept {len(held.targets)}"
        )
    held_groups = {g for fold in folds for g in fold}
    excerpts = excerpt_ids([e for e in examples if e.group in held_groups])
    cross_group = cross_group_metrics(held.logits, held.targets, held.groups, baseline, excerpts)
    return *attack_conformal(held, manifest.temperature, baseline), cross_group
