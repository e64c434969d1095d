"""End to end: train each task for a handful of steps on a slice of the real data, then `evaluate` it."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from tests.conftest import DEFAULT_ATTACK, DEFAULT_CVSS, run_module
from training.artifact.manifest import load_manifest
from training.attack.cross_validation import pick_candidate
from training.data import load_cvss
from training.evaluation import heldout
from training.evaluation.split import split_cvss

pytestmark = pytest.mark.slow


def _cli(*args: str):
    return run_module("training", *args)


def test_cvss_train_then_evaluate(tmp_path, cti_vsp, base_model):
    out = tmp_path / "cvss"
    data = tmp_path / "slice.tsv"  # a small slice of the real file keeps this test to about a minute
    data.write_text("".join(cti_vsp.read_text().splitlines(keepends=True)[:61]))
    r = _cli(
        "cvss",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--limit-train",
        "24",
        "--n-validation",
        "8",
        "--lora-layers",
        "2",
        "--average-from",
        "2",
        "--seed",
        "14",
        "--split-seed",
        "13",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = load_manifest(out)
    assert m.task == "cvss" and m.training_data.n_validation == 8
    assert {"adapter_model.safetensors", "adapter_config.json", "split.json"} <= set(m.files)
    assert m.metrics["n"] == 8
    assert [(e["epoch"], e.get("average_from", 0)) for e in m.metrics["epochs"]] == [(1, 0), (2, 0), (2, 2)]
    # the artifact is the best validation candidate (an epoch's weights or the average of epoch 2's steps),
    # restored: its metrics are that candidate's, not the last one's
    best = max(m.metrics["epochs"], key=lambda e: e["score"])
    assert (m.metrics["best_epoch"], m.metrics["average_from"]) == (best["epoch"], best.get("average_from", 0))
    for k in ("mean_metric_accuracy", "base_score_mae", "distinct_predicted_vectors"):
        assert m.metrics[k] == pytest.approx(best[k], abs=1e-6), k
    assert m.metrics["ece_uncalibrated"] == pytest.approx(best["ece_metric_probabilities"], abs=1e-6)
    assert m.temperature == m.metrics["temperature"] and m.temperature != 1.0  # fitted on validation
    assert "ece_calibrated_crossfit" in m.metrics
    split = json.loads((out / "split.json").read_text())
    assert not set(split["train_ids"]) & set(split["validation_ids"])  # split by CVE
    # --split-seed, not --seed, drew the validation CVEs (another draw of a recipe, scored on the same split)
    examples = load_cvss([data])
    by_seed = {s: sorted(e.cve_id for e in split_cvss(examples, 8, s)[1]) for s in (13, 14)}
    assert by_seed[13] != by_seed[14]
    assert sorted(split["validation_ids"]) == by_seed[13]

    r = _cli("evaluate", "--task", "cvss", "--artifact", str(out), "--data", str(data), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["excluded_seen_in_training"] == 24  # never scored on its own training CVEs
    assert report["model"]["n"] == 60 - 24
    for k in ("mean_metric_accuracy", "exact_vector_match", "base_score_mae", "severity_accuracy", "accuracy_AV"):
        assert k in report["model"] and k in report["tfidf_logreg"] and k in report["majority_class"], k
    # the 8 validation CVEs fitted the temperature: calibration is scored on the other 28 only, and
    # cross-fitted on those 8
    assert report["model"]["n_calibration_scored"] == 60 - 24 - 8
    assert {"ece_metric_probabilities", "ece_uncalibrated", "ece_calibrated_crossfit"} <= set(report["model"])

    # the prior correction, set on the trained adapter: a new version of the same adapter whose decoder
    # shifts each value by -0.5 ln(its add-one share of the 24 training vectors)
    fixed = tmp_path / "cvss-pc"
    r = _cli(
        "calibrate-cvss", "--artifact", str(out), "--data", str(data), "--out", str(fixed), "--prior-correction", "0.5"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    pc = load_manifest(fixed)
    assert pc.version != m.version and pc.files["adapter_model.safetensors"] == m.files["adapter_model.safetensors"]
    train_vals = [e.values for e in examples if e.cve_id in set(split["train_ids"])]
    assert len(train_vals) == 24
    for metric in m.labels.metrics:
        n = len(metric.values)
        for v in metric.values:
            share = (1 + sum(t[metric.key] == v for t in train_vals)) / (len(train_vals) + n)
            assert pc.prior_correction.log_prior[metric.key][v] == pytest.approx(math.log(share)), (metric.key, v)
    # its kept validation scores were decoded with the shift: AV, the first step, sees the prompt alone in
    # both, so its shifted probabilities are the plain ones times exp(shift), renormalised
    plain, shifted = heldout.load(out), heldout.load(fixed)
    order = [plain.ids.index(i) for i in shifted.ids]
    values = list(m.labels.metrics[0].values)
    w = np.exp(plain.logprobs["AV"][order]) * np.exp(pc.prior_correction.bias("AV", values))
    assert np.exp(shifted.logprobs["AV"]) == pytest.approx(w / w.sum(1, keepdims=True), rel=1e-3, abs=1e-6)
    assert pc.temperature == pc.metrics["temperature"] and pc.conformal is not None
    assert (out / "report" / "reliability_cvss.png").stat().st_size > 1000
    assert len(list((out / "report").glob("confusion_*.png"))) == 8
    load_manifest(out)  # the report folder does not break verification

    _refit_on_every_cve(tmp_path, data, fixed, pc, split)


def _refit_on_every_cve(tmp_path, data, validated, pc, split) -> None:
    """`refit-cvss`: the validation run's recipe trained again on its training and validation CVEs for the
    epoch it chose, carrying its temperature, sets and tau; `evaluate` then scores only other CVEs, and
    prints the validation run's recorded figures where --data holds nothing else."""
    every = sorted(split["train_ids"] + split["validation_ids"])
    refit = tmp_path / "cvss-all"
    r = _cli("refit-cvss", "--artifact", str(validated), "--data", str(data), "--out", str(refit))
    assert r.returncode == 0, r.stderr[-3000:]
    m = load_manifest(refit)
    s = json.loads((refit / "split.json").read_text())
    assert (s["train_ids"], s["validation_ids"], s["selection_ids"]) == (every, [], sorted(split["validation_ids"]))
    assert (m.training_data.n_train, m.training_data.n_validation) == (32, 0)
    assert m.files["adapter_model.safetensors"] != pc.files["adapter_model.safetensors"]  # trained again
    assert m.files["heldout_logits.safetensors"] == pc.files["heldout_logits.safetensors"]  # what T was fitted on
    assert (m.temperature, m.conformal, m.prior_correction.tau) == (pc.temperature, pc.conformal, 0.5)
    vals = [e.values for e in load_cvss([data]) if e.cve_id in set(every)]
    n_network = sum(v["AV"] == "N" for v in vals)
    assert m.prior_correction.log_prior["AV"]["N"] == pytest.approx(math.log((1 + n_network) / (32 + 4)))
    assert m.metrics["mean_metric_accuracy"] == pc.metrics["mean_metric_accuracy"]  # the validation run's
    assert m.metrics["refit"]["validated_version"] == pc.version
    assert m.metrics["refit"]["train_epoch"] == pytest.approx(pc.metrics["best_epoch"])  # stopped where chosen

    r = _cli("evaluate", "--task", "cvss", "--artifact", str(refit), "--data", str(data), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert (report["excluded_seen_in_training"], report["model"]["n"]) == (32, 60 - 32)
    assert report["model"]["n_calibration_scored"] == 60 - 32  # none of these fitted its temperature
    trained_only = tmp_path / "trained.tsv"
    lines = data.read_text().splitlines(keepends=True)
    trained_only.write_text(lines[0] + "".join(ln for ln in lines[1:] if ln.split("\t")[0].rsplit("/", 1)[-1] in every))
    r = _cli("evaluate", "--task", "cvss", "--artifact", str(refit), "--data", str(trained_only), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert "validation run" in report["source"] and report["model"]["n"] == 8
    assert report["model"]["base_score_mae"] == pc.metrics["base_score_mae"]
    # TF-IDF + LR trained on the validation run's 24 training CVEs (not the 8 it is scored on), as that run's was
    from training.evaluation.baseline import cvss_baseline

    by_id = {e.cve_id: e for e in load_cvss([data])}
    keys = [mt.key for mt in m.labels.metrics]
    held = [by_id[i] for i in split["validation_ids"]]
    assert report["tfidf_logreg"] == cvss_baseline([by_id[i] for i in split["train_ids"]], held, keys)

    for args, message in (
        (("refit-cvss", "--artifact", str(refit), "--data", str(data)), "holds out no CVEs"),
        (("refit-cvss", "--artifact", str(validated), "--data", str(trained_only)), "hash differs"),
        (("calibrate-cvss", "--artifact", str(refit), "--data", str(data)), "calibrate its validation run"),
    ):
        r = run_module("training", *args, "--out", str(tmp_path / "refused"), COLUMNS="300")  # unwrapped
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr[-2000:])
        assert not (tmp_path / "refused").exists()


def _train_attack(out, cti_hal, *args: str):
    """A small ATT&CK run: 2 adapted layers, no catalogue descriptions (minutes, not the default's hour)."""
    return _cli(
        "attack", "--data", str(cti_hal), "--out", str(out), "--lora-layers", "2", "--no-catalogue-examples", *args
    )


def _flat(tree, prefix: str = "") -> dict:
    """Nested dicts/lists as one {path: leaf} dict (pytest.approx compares flat ones)."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _flat(sub, f"{prefix}/{i}").items()}
    return {prefix: tree}


def test_attack_cross_validates_then_ships_a_model_of_every_group(tmp_path, cti_hal, base_model):
    out = tmp_path / "attack"
    r = _train_attack(
        out,
        cti_hal,
        *("--epochs", "2", "--batch-size", "8", "--limit-train", "8", "--folds", "2", "--procedures", "1"),
        *("--average-from", "2", "--reimprint", "0.5"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = load_manifest(out)
    assert m.task == "attack" and "head.safetensors" in m.files and len(m.labels.techniques) > 200
    assert m.hyperparameters["procedures"] == 1 and m.training_data.notes["procedure_examples"] > 150
    assert m.training_data.notes["dropped_labels"]  # ICS / malformed ids are counted, not silently used
    split = json.loads((out / "split.json").read_text())
    groups = sorted(m.metrics["per_group"])
    assert len(groups) == 6 and split["train_groups"] == groups  # the shipped model saw every group
    assert sorted(g for f in split["cv_folds"] for g in f) == groups  # each held out exactly once
    assert split["temperature_fit_groups"] == groups and m.temperature == pytest.approx(m.metrics["temperature"])
    assert m.metrics["best_epoch"] in (1, 2) and set(m.metrics["heldout_top1_by_epoch"]) == {"1", "2"}
    # the shipped candidate (an epoch count, or the average of epoch 2's steps) is the best out-of-fold one
    by_average = m.metrics["heldout_top1_by_average"]
    assert set(by_average) == {"2-2"}
    scores = {(0, int(e)): v for e, v in m.metrics["heldout_top1_by_epoch"].items()} | {(2, 2): by_average["2-2"]}
    # a re-imprinted head (blend 0.5 of epoch 2's live weights) ships only if it beats every other candidate
    blended = m.metrics["heldout_top1_by_reimprint"]["0.5"]
    best = pick_candidate(scores)
    wins = blended > scores[best]
    assert m.hyperparameters["reimprint"] == [0.5] and m.metrics["reimprint"] == (0.5 if wins else 0.0)
    assert (m.metrics["average_from"], m.metrics["best_epoch"]) == ((0, 2) if wins else best)
    assert m.metrics["mean"]["top1"] == pytest.approx(blended if wins else scores[best])
    for k in ("top1", "top5", "ece_calibrated", "ece_calibrated_floor"):
        vals = [m.metrics["per_group"][g][k] for g in groups]
        assert m.metrics["mean"][k] == pytest.approx(sum(vals) / 6)
        assert k in m.metrics["tfidf_logreg"]["mean"]

    # Refitting from the kept out-of-fold logits reproduces what training wrote (the baseline with the same
    # procedure rows), from the logits alone
    stripped = tmp_path / "stripped"
    shutil.copytree(out, stripped)
    raw = json.loads((stripped / "manifest.json").read_text())
    for key in ("mean", "std", "per_group", "tfidf_logreg", "conformal"):
        del raw["metrics"][key]
    (stripped / "manifest.json").write_text(json.dumps(raw))
    r = _cli("conformal", "--artifact", str(stripped), "--data", str(cti_hal), "--out", str(tmp_path / "refit"))
    assert r.returncode == 0, r.stderr[-3000:]
    refit = load_manifest(tmp_path / "refit")
    for key in ("mean", "std", "per_group", "tfidf_logreg", "conformal"):
        got, want = _flat(refit.metrics[key]), _flat(m.metrics[key])
        floats = {k for k, v in want.items() if isinstance(v, float)}
        assert {k: got[k] for k in floats} == pytest.approx({k: want[k] for k in floats}, rel=1e-4, nan_ok=True), key
        assert {k: v for k, v in got.items() if k not in floats} == {k: v for k, v in want.items() if k not in floats}
    assert refit.conformal == m.conformal

    # Nothing unseen left in CTI-HAL: evaluate reports the out-of-fold figures and says so
    r = _cli("evaluate", "--task", "attack", "--artifact", str(out), "--data", str(cti_hal), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert "cross-validation" in report["source"] and report["model"]["top1"] == m.metrics["mean"]["top1"]


def test_attack_holdout_evaluate_skips_calibration_on_the_temperature_group(tmp_path, cti_hal, base_model):
    out = tmp_path / "attack"
    r = _train_attack(
        out,
        cti_hal,
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--limit-train",
        "10",
        "--validation-group",
        "wizardspider",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    split = json.loads((out / "split.json").read_text())
    assert "wizardspider" not in split["train_groups"] and split["temperature_fit_groups"] == ["wizardspider"]

    r = _cli("evaluate", "--task", "attack", "--artifact", str(out), "--data", str(cti_hal), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    model = report["model"]
    assert report["excluded_seen_in_training"] > 0 and model["n"] >= 10  # only the unseen group is scored
    assert model["n_calibration_scored"] == 0  # its temperature was fitted on these very items
    assert "ece_calibrated" not in model and "nll_calibrated" not in model
    assert {"top1", "top5", "macro_f1", "ece_uncalibrated", "ece_calibrated_crossfit"} <= set(model)
    assert "tfidf_logreg" in report
    assert (out / "report" / "reliability_attack.png").exists()


def test_evaluate_rejects_a_tampered_artifact(tmp_path, cti_vsp):
    art = tmp_path / "a"
    shutil.copytree(DEFAULT_CVSS, art, ignore=shutil.ignore_patterns("report"))
    (art / "split.json").write_text("{}")
    r = _cli("evaluate", "--task", "cvss", "--artifact", str(art), "--data", str(cti_vsp))
    assert r.returncode == 2 and "sha256 mismatch for split.json" in r.stderr


@pytest.mark.parametrize("artifact", [DEFAULT_CVSS, DEFAULT_ATTACK], ids=["cvss", "attack"])
def test_committed_defaults_verify(artifact, base_model):
    m = load_manifest(artifact)  # every hash
    assert m.base_model.name_or_path == "models/smollm2-135m"
    from training.artifact.base_model import weights_hash

    assert weights_hash(str(base_model)) == m.base_model.weights_sha256  # the set-up step rebuilt the same base
    size = sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file() and "report" not in p.parts)
    assert size < 12_500_000
