"""`refit-cvss`: train a validated CVSS recipe again on every CVE, as ATT&CK's shipped model trains on every
group. The validation run (`training cvss`, then `calibrate-cvss`) chose the epoch count, the prior
correction's tau, the temperature and the prediction sets on the CVEs it held out; the refit trains a fresh
adapter from the same seed on its training and validation CVEs together, stops at the chosen epoch of the
same schedule, and carries those choices over. Its recorded metrics stay the validation run's, labelled
as such: no CVE is left to score it on, so `evaluate` prints them (or scores CVEs from other data).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from training.artifact.layout import ADAPTER_FILE, HELDOUT_FILE
from training.artifact.loading import base_for, load_tokenizer, pick_device, pick_dtype
from training.artifact.manifest import (
    CvssSplit,
    Manifest,
    library_versions,
    load_manifest,
    load_split,
    write_artifact,
    write_split,
)
from training.artifact_writer import new_version, save_adapter_16bit
from training.cvss.prior_correction import fit_prior_correction
from training.cvss.train import cached_rows, cvss_data_hash, fresh_model, train_adapter
from training.data import CvssExample, load_cvss
from training.fitting.trainer import EpochEnd, TrainConfig, is_main_process
from training.fitting.weight_average import TailAverages

log = logging.getLogger(__name__)


class RefitError(ValueError):
    """The artifact cannot be refitted: not a validation run, or `--data` is not the data it was run on."""


def refit_plan(manifest: Manifest) -> tuple[TrainConfig, int, int]:
    """The validation run's training settings (from its manifest's hyper-parameters), the epoch it chose
    and the start epoch of the weight average it chose (0: its live weights)."""
    cfg = TrainConfig.from_hyperparameters(manifest.hyperparameters)
    return cfg, manifest.metrics["best_epoch"], manifest.metrics.get("average_from", 0)


def refit_examples(
    artifact_dir: Path, manifest: Manifest, split, data: list[Path]
) -> tuple[list[CvssExample], list[str]]:
    """Every CVE the validation run trained or validated on, in file order, and the validation ids; refuses
    an artifact that is not a validation run and data other than the run's (by its hash)."""
    if manifest.task != "cvss" or not isinstance(split, CvssSplit):
        raise RefitError(f"{manifest.name}: not a CVSS artifact with a split.json")
    if not split.validation_ids or split.selection_ids:
        raise RefitError(f"{manifest.name}: holds out no CVEs (already a refit?); refit its validation run")
    if not (artifact_dir / HELDOUT_FILE).is_file():
        raise RefitError(f"{manifest.name}: keeps no validation scores ({HELDOUT_FILE}) to carry its calibration")
    if "best_epoch" not in manifest.metrics:
        raise RefitError(f"{manifest.name}: records no chosen epoch; train it with `training cvss`")
    examples = load_cvss(data)
    if cvss_data_hash(examples) != manifest.training_data.sha256:
        raise RefitError(f"--data is not the data {manifest.name} was trained and validated on (its hash differs)")
    wanted = set(split.train_ids) | set(split.validation_ids)
    return [e for e in examples if e.cve_id in wanted], list(split.validation_ids)


def refit_cvss(artifact: Path, data: list[Path], out: Path, name: str | None = None) -> Manifest:
    started = time.time()
    artifact = Path(artifact)
    validated = load_manifest(artifact)
    split = load_split(artifact)
    examples, selection_ids = refit_examples(artifact, validated, split, data)
    cfg, epochs, average_from = refit_plan(validated)
    log.info("refit: %d CVEs (%d of them validated on), %d epoch(s)", len(examples), len(selection_ids), epochs)

    base_path = base_for(validated)
    tokenizer = load_tokenizer(base_path)
    model = fresh_model(base_path, tokenizer.pad_token_id, cfg)
    rows, n_frozen, _ = cached_rows(model, tokenizer, validated, examples, cfg)
    average = TailAverages([average_from]) if average_from else None
    # the chosen epoch of the same schedule
    callbacks = [EpochEnd(stop_after=epochs), *([average] if average else [])]
    stats = train_adapter(model, tokenizer, validated, rows, n_frozen, cfg, callbacks)
    if not is_main_process():
        return validated
    if average:
        average.apply(model, average_from)
    device = pick_device()
    model.eval().to(device, dtype=pick_dtype(device))

    pc = validated.prior_correction  # the same tau; the shift from the prior of what this model trained on
    prior = fit_prior_correction(validated.labels, [e.values for e in examples], pc.tau) if pc else None
    data_ = validated.training_data
    refit = {
        "validated_version": validated.version,
        "validated_adapter_sha256": validated.files[ADAPTER_FILE],
        "n_train": len(examples),
        "epochs": epochs,
        **({"average_from": average_from} if average_from else {}),
        "train_seconds": round(time.time() - started, 1),
        **{f"train_{k}": v for k, v in stats.items()},
    }
    final = validated.model_copy(
        update={
            "name": name or Path(out).name,
            **new_version(),
            "prior_correction": prior,
            "library_versions": library_versions(),  # what trained this adapter
            "hyperparameters": {**validated.hyperparameters, "refit_on_all": True},
            "training_data": data_.model_copy(
                update={
                    "n_train": len(examples),
                    "n_validation": 0,
                    "split": f"every CVE; the epoch count, temperature and sets were chosen by a run that held out "
                    f"{len(selection_ids)} ({data_.split})",
                }
            ),
            "metrics": {
                **validated.metrics,
                "validation": f"the validation run's ({validated.version}) figures on the {len(selection_ids)} "
                "CVEs it held out; this model trained on them too",
                "refit": refit,
            },
        }
    )
    log.info("refit: %s", refit)

    def write(d: Path) -> None:
        save_adapter_16bit(model, d)
        shutil.copy2(artifact / HELDOUT_FILE, d / HELDOUT_FILE)  # the scores the temperature and sets were fit on
        write_split(
            d,
            CvssSplit(
                train_ids=sorted(e.cve_id for e in examples), validation_ids=[], selection_ids=sorted(selection_ids)
            ),
        )

    return write_artifact(Path(out), final, write)
