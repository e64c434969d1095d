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
    assert methods["ours_accuracy"]["n"] == 4 and 0 <= methods["ours_accuracy"]["mean_per_metric"] <= 1
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
        "--port",
        str(free_port()),
        "--out",
        str(out),
        DATA_DIR=str(cti_vsp.parent.parent),
    )
    assert r.returncode == 0, r.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["lost"] == 0 and result["statuses"] == {"200": 150}
    assert result["latency"]["p99"] > 0 and result["peak_rss_mb"] > 100
