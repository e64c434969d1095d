"""A small run of the benchmark harness, so `make bench` cannot rot (no timing assertions here)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import free_port, run_module

pytestmark = pytest.mark.slow


def test_bench_smoke(tmp_path, cti_vsp, cti_hal):
    r = run_module(
        "bench.run",
        "--n",
        "4",
        "--repeats",
        "1",
        "--port",
        str(free_port()),
        "--out",
        str(tmp_path),
        DATA_DIR=str(cti_vsp.parent.parent),
    )
    assert r.returncode == 0, r.stderr[-4000:]
    [result_file] = tmp_path.glob("*.json")
    result = json.loads(result_file.read_text())
    assert result["service"]["cvss"]["c16"]["errors"] == 0 and result["service"]["attack"]["c32"]["errors"] == 0
    assert result["engine"]["c16"]["items_per_s"] > 0 and result["attack_baselines"]["naive"]["items_per_s"] > 0
    methods = result["cvss_methods"]
    assert methods["ours_accuracy"]["n"] == 4 and methods["ours_accuracy"]["mean_per_metric"] > 0.5  # majority: 0.67
    assert methods["seed_8_prompts_c16"]["errors"] == 0 and methods["seed_8_prompts_c16"]["items_per_s"] > 0
    assert result["cold_start_s"] > 0 and result["peak_rss_mb"] > 100
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
        "--port",
        str(free_port()),
        "--out",
        str(out),
        DATA_DIR=str(cti_vsp.parent.parent),
    )
    assert r.returncode == 0, r.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["lost"] == 0 and result["unexpected"] == {} and result["readiness_checks_failed"] == 0
    assert sum(result["statuses"].values()) == 150 and set(result["statuses"]) <= {"200", "413", "422"}
    assert result["statuses"]["200"] < 150 and result["server_errors_5xx"] == 0  # bad inputs got their 4xx
    assert result["latency"]["p99"] > 0 and result["peak_rss_mb"] > 100
