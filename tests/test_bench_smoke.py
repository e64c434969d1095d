"""A small run of the benchmark harness, so `make bench` cannot rot (no timing assertions here)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, free_port, run_module

pytestmark = pytest.mark.slow


def test_bench_smoke(tmp_path, cti_vsp, cti_hal):
    r = run_module(
        "bench.run",
        "--n",
        "4",
        "--repeats",
        "1",
        "--reports",
        "2",
        "--batch-n",
        "12",
        "--port",
        str(free_port()),
        "--out",
        str(tmp_path),
        DATA_DIR=str(cti_vsp.parent.parent),
    )
    assert r.returncode == 0, r.stderr[-4000:]
    [result_file] = tmp_path.glob("*.json")
    result = json.loads(result_file.read_text())
    assert result["service"]["cvss"]["c8"]["errors"] == 0 and result["service"]["attack"]["c32"]["errors"] == 0
    assert result["service_paired"]["cvss"]["c16"]["errors"] == 0
    # every baseline answered every request (a broken request format would count as errors)
    for side, key in (("microbatcher_service", "c32"), ("vllm_classify", "c32"), ("vllm_completions", "c16")):
        assert result[side][key]["errors"] == 0 and result[side][key]["n"] > 0, side
    assert result["attack_offline_torch"]["batch_size"] in (4, 8, 16, 32)
    assert set(result["ratios"]) == {
        "attack_c32_vs_microbatcher_service",
        "attack_p50_c1_microbatcher_over_ours",
        "attack_c32_vs_offline_torch_batch",
        "attack_c32_vs_vllm_classify",
        "attack_p50_c1_vllm_classify_over_ours",
        "cvss_c16_vs_vllm_completions",
        "cvss_p50_c1_vllm_completions_over_ours",
        "cvss_batch_command_vs_http_c16",
        "report_route_vs_attack_batches_64",
    }
    assert result["reports"]["reports"] == 2 and result["reports"]["segments"] > 0
    assert result["batch_vs_http"]["n"] == 12 and result["batch_vs_http"]["vectors_identical"] == 12
    assert result["cold_start_s"] > 0 and result["peak_rss_mb"] > 300  # two engines: two model copies
    assert result_file.with_suffix(".md").read_text().count("|") > 20
    assert result_file.with_suffix(".png").stat().st_size > 1000


def test_soak_smoke(tmp_path, cti_vsp, cti_hal):
    out = tmp_path / "soak.json"
    r = run_module(
        "bench.soak",
        "--requests",
        "150",
        "--concurrency",
        "16",
        "--bad-share",
        "0.1",
        "--steady-senders",
        "4",
        "--greedy-limit",
        "2",
        "--port",
        str(free_port()),
        "--out",
        str(out),
        DATA_DIR=str(cti_vsp.parent.parent),
    )
    assert r.returncode == 0, r.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["lost"] == 0 and result["unexpected"] == {} and result["readiness_checks_failed"] == 0
    assert sum(result["statuses"].values()) == 150 and set(result["statuses"]) <= {"200", "413", "422", "429"}
    assert result["statuses"]["200"] < 150 and result["server_errors_5xx"] == 0  # bad inputs got their 4xx
    # 12 greedy senders over a quota of 2: refused at once; the steady key, at its quota, never
    assert result["quota_429"]["greedy"] > 0 and result["quota_429"]["steady"] == 0
    assert result["latency"]["p99"] > 0 and result["peak_rss_mb"] > 100


def test_train_speed_smoke(tmp_path, cti_vsp, base_model):
    """`before` really runs every layer per step with dropout and PEFT's LoRA forward; the recipe runs only its
    adapted layers, with the rank-scaled forward."""
    r = run_module(
        "bench.train_speed",
        *("--n", "8", "--steps", "3", "--warmup", "1", "--rounds", "1", "--only", "before,recipe"),
        *("--out", str(tmp_path)),
        DATA_DIR=str(cti_vsp.parent.parent),
    )
    assert r.returncode == 0, r.stderr[-4000:]
    [result_file] = tmp_path.glob("train-speed-*.json")
    result = json.loads(result_file.read_text())
    layers = json.loads((base_model / "config.json").read_text())["num_hidden_layers"]
    recipe = json.loads((REPO / "artifacts" / "cvss-default" / "manifest.json").read_text())["hyperparameters"]
    before, ours = result["summary"]["before"], result["summary"]["recipe"]
    assert (before["n_frozen"], before["lora_dropout"]) == (0, 0.05)
    assert (ours["n_frozen"], ours["lora_dropout"]) == (layers - recipe["lora_layers"], recipe["lora_dropout"])
    # before runs PEFT's own LoRA forward; the recipe the rank-scaled one on every adapted linear layer
    assert before["rank_scaled_lora_layers"] == 0
    assert ours["rank_scaled_lora_layers"] == recipe["lora_layers"] * len(recipe["target_modules"])
    assert [len(run["step_seconds"]) for run in result["runs"]["recipe"]] == [3] and ours["timed_steps"] == 2
    # the ratio is the same round's before over the recipe (medians rounded to 3 places, the ratio to 2)
    assert abs(ours["speedup_by_round"][0] - before["round_medians_s"][0] / ours["round_medians_s"][0]) <= 0.006
