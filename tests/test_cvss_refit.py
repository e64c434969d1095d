"""`refit-cvss` plans the refit from the validation run's manifest alone (the run itself is in
`test_training_e2e.py`)."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from tests.conftest import DEFAULT_CVSS
from training.artifact.manifest import Manifest, load_manifest
from training.cvss.refit import refit_plan
from training.fitting.trainer import TrainConfig


def test_refit_plan_reads_the_recipe_and_the_chosen_candidate():
    """The manifest's hyper-parameters (JSON: tuples as lists, extra keys beside them) give back the same
    TrainConfig; the epoch and the average the validation run chose are the ones refitted."""
    cfg = TrainConfig(epochs=5, learning_rate=3e-3, lora_r=8, lora_layers=6, seed=21, average_from=(2, 3))
    base = load_manifest(DEFAULT_CVSS, verify=False)
    written = base.model_copy(
        update={
            "hyperparameters": {**asdict(cfg), "target_modules": list(cfg.target_modules), "answer_format": "x"},
            "metrics": {"best_epoch": 4, "average_from": 3},
        }
    )
    manifest = Manifest.model_validate_json(written.model_dump_json())
    assert refit_plan(manifest) == (cfg, 4, 3)
    live = manifest.model_copy(update={"metrics": {"best_epoch": 2}})
    assert refit_plan(live) == (cfg, 2, 0)


def test_refit_trains_every_cve_and_stops_at_the_chosen_epoch_of_the_same_schedule(tmp_path, cti_vsp, base_model):
    """A validation run (here a manifest that chose epoch 1 of a 3-epoch recipe on 4 of 16 CVEs) refits on
    all 16 for that one epoch, on the 3-epoch schedule: the refit reads only the run's manifest, split and
    kept scores, not its adapter, so no run needs training first."""
    import shutil

    from training.artifact.layout import HELDOUT_FILE
    from training.artifact.manifest import CvssSplit, load_split, write_artifact, write_split
    from training.cvss.refit import refit_cvss
    from training.cvss.train import cvss_data_hash
    from training.data import load_cvss
    from training.evaluation import heldout

    data = tmp_path / "slice.tsv"
    data.write_text("".join(cti_vsp.read_text().splitlines(keepends=True)[:17]))
    examples = load_cvss([data])
    ids = [e.cve_id for e in examples]
    cfg = TrainConfig(epochs=3, batch_size=8, lora_layers=1, lora_dropout=0.0, seed=5)
    default = load_manifest(DEFAULT_CVSS)
    run = default.model_copy(
        update={
            "name": "run",
            "hyperparameters": {**asdict(cfg), "target_modules": list(cfg.target_modules)},
            "training_data": default.training_data.model_copy(update={"sha256": cvss_data_hash(examples)}),
            "metrics": {"best_epoch": 1, "mean_metric_accuracy": 0.5},
        }
    )

    def files(d):  # a run's files; its adapter is the default's, which the refit must not start from
        for f in (HELDOUT_FILE, "adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(DEFAULT_CVSS / f, d / f)
        write_split(d, CvssSplit(train_ids=ids[:12], validation_ids=ids[12:]))

    write_artifact(tmp_path / "run", run, files)
    refit = refit_cvss(tmp_path / "run", [data], tmp_path / "all")
    assert refit.metrics["refit"]["train_epoch"] == pytest.approx(1.0)  # stopped where the run chose
    assert refit.metrics["refit"]["train_train_loss"] > 0 and refit.metrics["mean_metric_accuracy"] == 0.5
    split = load_split(tmp_path / "all")
    assert (split.train_ids, split.validation_ids, split.selection_ids) == (sorted(ids), [], sorted(ids[12:]))
    assert heldout.load(tmp_path / "all").ids == heldout.load(DEFAULT_CVSS).ids
    assert refit.metrics["refit"]["validated_adapter_sha256"] == default.files["adapter_model.safetensors"]
    assert refit.files["adapter_model.safetensors"] != default.files["adapter_model.safetensors"]
