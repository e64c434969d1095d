"""End to end: train each task for a handful of steps on a slice of the real data, then `evaluate` it."""

from __future__ import annotations

import json

import pytest

from tests.conftest import DEFAULT_ATTACK, DEFAULT_CVSS, run_module
from training.manifest import load_manifest

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
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--limit-train",
        "24",
        "--n-validation",
        "8",
        "--lora-layers",
        "2",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = load_manifest(out)
    assert m.task == "cvss" and m.training_data.n_validation == 8
    assert {"adapter_model.safetensors", "adapter_config.json", "split.json"} <= set(m.files)
    assert 0 <= m.metrics["mean_metric_accuracy"] <= 1 and m.metrics["n"] == 8
    split = json.loads((out / "split.json").read_text())
    assert not set(split["train_ids"]) & set(split["validation_ids"])  # split by CVE

    r = _cli("evaluate", "--task", "cvss", "--artifact", str(out), "--data", str(data), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["excluded_seen_in_training"] == 24  # never scored on its own training CVEs
    assert report["model"]["n"] == 60 - 24
    for k in (
        "mean_metric_accuracy",
        "exact_vector_match",
        "base_score_mae",
        "severity_accuracy",
        "ece_metric_probabilities",
        "accuracy_AV",
    ):
        assert k in report["model"] and k in report["tfidf_logreg"] or k == "ece_metric_probabilities"
    assert (out / "report" / "reliability_cvss.png").stat().st_size > 1000
    assert len(list((out / "report").glob("confusion_*.png"))) == 8
    load_manifest(out)  # the report folder does not break verification


def test_attack_train_then_evaluate(tmp_path, cti_hal, base_model):
    out = tmp_path / "attack"
    r = _cli(
        "attack",
        "--data",
        str(cti_hal),
        "--out",
        str(out),
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--limit-train",
        "40",
        "--validation-group",
        "wizardspider",
        "--lora-layers",
        "2",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = load_manifest(out)
    assert m.task == "attack" and m.temperature > 0 and "head.safetensors" in m.files
    assert m.training_data.notes["dropped_labels"]  # ICS / malformed ids are counted, not silently used
    assert len(m.labels.techniques) > 200

    r = _cli("evaluate", "--task", "attack", "--artifact", str(out), "--data", str(cti_hal), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert {e for e in report["model"]} >= {
        "top1",
        "top5",
        "macro_f1",
        "nll_calibrated",
        "ece_uncalibrated",
        "ece_calibrated",
    }
    # never scored on a group it trained on (with --limit-train only the first group's items were used)
    assert report["excluded_seen_in_training"] > 0 and report["model"]["n"] >= m.training_data.n_validation
    assert "tfidf_logreg" in report
    assert (out / "report" / "reliability_attack.png").exists()


def test_evaluate_rejects_a_tampered_artifact(tmp_path, cti_vsp):
    import shutil

    art = tmp_path / "a"
    shutil.copytree(DEFAULT_CVSS, art, ignore=shutil.ignore_patterns("report"))
    (art / "split.json").write_text("{}")
    r = _cli("evaluate", "--task", "cvss", "--artifact", str(art), "--data", str(cti_vsp))
    assert r.returncode == 2 and "sha256 mismatch for split.json" in r.stderr


@pytest.mark.parametrize("artifact", [DEFAULT_CVSS, DEFAULT_ATTACK], ids=["cvss", "attack"])
def test_committed_defaults_verify(artifact, base_model):
    m = load_manifest(artifact)  # every hash
    assert m.base_model.name_or_path == "models/smollm2-135m"
    from training.base_model import weights_hash

    assert weights_hash(str(base_model)) == m.base_model.weights_sha256  # the set-up step rebuilt the same base
    size = sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file() and "report" not in p.parts)
    assert size < 12_500_000
