"""The real service: vLLM CPU engine + SmolLM2 + committed default artifacts, over HTTP."""

from __future__ import annotations

import asyncio
import json
import math
import re

import httpx
import pytest
from cvss import CVSS3

from tests.conftest import DEFAULT_ATTACK, DEFAULT_CVSS, run_module

pytestmark = pytest.mark.slow

CVE = (
    "Improper neutralization of input during web page generation in the Acme forum plugin allows "
    "stored cross-site scripting by authenticated users via the signature field."
)
CVE2 = "A use-after-free in the kernel's USB driver allows a local user to escalate privileges."
REPORTS = [
    "The actor sent spearphishing emails with a malicious Word document that executed a macro.",
    "Mimikatz was used to dump credentials from LSASS memory on the compromised host.",
    "The backdoor communicated with its command-and-control server over HTTPS.",
]
VECTOR = re.compile(r"^CVSS:3\.1/AV:[NALP]/AC:[LH]/PR:[NLH]/UI:[NR]/S:[UC]/C:[NLH]/I:[NLH]/A:[NLH]$")


def _check_cvss(result: dict) -> None:
    assert VECTOR.match(result["vector"]), result["vector"]
    c = CVSS3(result["vector"])
    assert result["base_score"] == float(c.scores()[0])
    assert result["severity"] == c.severities()[0]
    assert list(result["metrics"]) == ["AV", "AC", "PR", "UI", "S", "C", "I", "A"]
    for key, m in result["metrics"].items():
        probs = m["probabilities"]
        assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-6)
        assert m["value"] == max(probs, key=probs.get)
        assert f"/{key}:{m['value']}" in result["vector"]
    assert result["model"]["task"] == "cvss" and result["model"]["name"] == "cvss-default"


def test_cvss_single_and_batch(client):
    r = client.post("/classify/cvss", json={"description": CVE})
    assert r.status_code == 200, r.text
    single = r.json()
    _check_cvss(single)
    assert single["metrics"]["AV"]["label"] in {"Network", "Adjacent", "Local", "Physical"}
    assert set(single["metrics"]["AV"]["probabilities"]) == {"N", "A", "L", "P"}
    r = client.post("/classify/cvss", json={"descriptions": [CVE2, CVE]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2
    for res in results:
        _check_cvss(res)
    assert results[1]["vector"] == single["vector"]  # input order kept; deterministic


def test_cvss_long_input_is_truncated_and_says_so(client):
    r = client.post("/classify/cvss", json={"description": "overflow in parser " * 400})
    assert r.status_code == 200
    assert r.json()["truncated"] is True
    assert client.post("/classify/cvss", json={"description": CVE}).json()["truncated"] is False


def test_attack_single_and_batch(client):
    r = client.post("/classify/attack", json={"text": REPORTS[0], "top_k": 7})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 7
    probs = [p["probability"] for p in preds]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert all(re.match(r"^T\d{4}$", p["technique_id"]) and p["name"] and p["tactics"] for p in preds)
    r = client.post("/classify/attack", json={"texts": REPORTS})
    assert r.status_code == 200
    results = r.json()["results"]
    assert len(results) == 3 and all(len(x["predictions"]) == 5 for x in results)
    assert results[0]["predictions"][0]["technique_id"] == preds[0]["technique_id"]


def _batch_hist(client) -> tuple[float, float]:
    text = client.get("/metrics").text
    count = float(re.search(r"^secclf_attack_batch_size_count (\S+)$", text, re.M).group(1))
    total = float(re.search(r"^secclf_attack_batch_size_sum (\S+)$", text, re.M).group(1))
    return count, total


def test_attack_concurrent_requests_are_batched_and_unchanged(client, service):
    texts = [f"{REPORTS[i % 3]} (sample {i})" for i in range(32)]
    alone = [client.post("/classify/attack", json={"text": t}).json() for t in texts[:4]]
    before_passes, before_items = _batch_hist(client)

    async def burst():
        async with httpx.AsyncClient(base_url=service.url, timeout=300) as c:
            return await asyncio.gather(*(c.post("/classify/attack", json={"text": t}) for t in texts))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    passes, items = _batch_hist(client)
    assert items - before_items == 32
    assert passes - before_passes < 32  # coalesced into fewer forward passes than requests
    for a, r in zip(alone, responses[:4], strict=True):
        pa, pb = a["predictions"], r.json()["predictions"]
        assert [p["technique_id"] for p in pa] == [p["technique_id"] for p in pb]
        for x, y in zip(pa, pb, strict=True):
            assert math.isclose(x["probability"], y["probability"], rel_tol=1e-3, abs_tol=1e-5)


BAD = [
    ("/classify/cvss", {}, 422),
    ("/classify/cvss", {"description": "   "}, 422),
    ("/classify/cvss", {"description": ""}, 422),
    ("/classify/cvss", {"description": "x", "descriptions": ["y"]}, 422),
    ("/classify/cvss", {"descriptions": []}, 422),
    ("/classify/cvss", {"descriptions": ["a"] * 65}, 422),
    ("/classify/cvss", {"descriptions": ["ok", "\t\n"]}, 422),
    ("/classify/cvss", {"description": 42}, 422),
    ("/classify/cvss", {"description": "x", "adapter": "missing"}, 422),
    ("/classify/cvss", {"description": "x" * 20_001}, 422),
    ("/classify/attack", {"text": "x", "top_k": 0}, 422),
    ("/classify/attack", {"text": "x", "top_k": 51}, 422),
    ("/classify/attack", {"texts": ["a"] * 65}, 422),
    ("/classify/attack", {"text": "x", "unknown": 1}, 422),
]


@pytest.mark.parametrize("route, body, status", BAD)
def test_bad_json_inputs(client, route, body, status):
    r = client.post(route, json=body)
    assert r.status_code == status, r.text
    assert r.json()["detail"]


@pytest.mark.parametrize(
    "content, status",
    [(b"{not json", 422), (b"\xff\xfe\x00{", 400), (b'{"text": "\xff\xfe"}', 400), (b"[]", 422)],
)
def test_bad_bodies(client, content, status):
    r = client.post("/classify/attack", content=content, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422), r.text
    assert r.json()["detail"]


def test_oversized_body_is_413_and_service_stays_ready(client):
    r = client.post(
        "/classify/attack",
        content=b'{"text": "' + b"a" * 1_100_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
    assert client.get("/readyz").status_code == 200
    assert client.get("/healthz").json() == {"status": "alive"}


def test_models_and_openapi(client):
    models = {m["task"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["cvss"]["labels"] == 8 and models["attack"]["labels"] > 200
    assert models["attack"]["temperature"] > 0 and "top1" in models["attack"]["validation_metrics"]
    spec = client.get("/openapi.json").json()
    assert "/classify/cvss" in spec["paths"] and "/classify/attack" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_metrics_exposed_after_traffic(client):
    client.post("/classify/cvss", json={"description": CVE})
    client.post("/classify/attack", json={"text": REPORTS[1]})
    client.post("/classify/attack", json={"text": ""})
    text = client.get("/metrics").text
    for series in (
        'secclf_request_duration_seconds_bucket{le="0.005",method="POST",route="/classify/cvss",status="200"}',
        'secclf_requests_total{method="POST",route="/classify/attack",status="422"}',
        'secclf_stage_duration_seconds_count{model="attack",stage="queue_wait"}',
        'secclf_stage_duration_seconds_count{model="attack",stage="model"}',
        "secclf_attack_batch_size_bucket",
        "secclf_requests_in_flight",
        'secclf_errors_total{kind="validation",route="/classify/attack"}',
        'secclf_generated_tokens_total{model="cvss"}',
        'secclf_model_info{artifact="cvss-default"',
        "secclf_ready 1.0",
    ):
        assert series in text, series


def _evaluate(task: str, data) -> list[dict]:
    r = run_module(
        "training",
        "evaluate",
        "--task",
        task,
        "--artifact",
        str(DEFAULT_CVSS if task == "cvss" else DEFAULT_ATTACK),
        "--data",
        str(data),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    path = (DEFAULT_CVSS if task == "cvss" else DEFAULT_ATTACK) / "report" / f"predictions_{task}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_no_drift_cvss(client, cti_vsp):
    """The service (vLLM, bf16, grammar) agrees with `training evaluate` (transformers) on validation CVEs."""
    from training.data import load_cvss

    expected = {p["cve_id"]: p["predicted"] for p in _evaluate("cvss", cti_vsp)}
    desc = {e.cve_id: e.description for e in load_cvss([cti_vsp])}
    ids = sorted(expected)
    got = []
    for i in range(0, len(ids), 16):
        r = client.post("/classify/cvss", json={"descriptions": [desc[c] for c in ids[i : i + 16]]})
        assert r.status_code == 200, r.text
        got += r.json()["results"]
    agree = [res["metrics"][k]["value"] == expected[c][k] for c, res in zip(ids, got, strict=True) for k in expected[c]]
    assert len(agree) == 8 * len(ids) >= 8 * 100
    assert sum(agree) / len(agree) >= 0.98, sum(agree) / len(agree)


def test_no_drift_attack(client, cti_hal):
    expected = _evaluate("attack", cti_hal)
    texts = [p["text"] for p in expected]
    got = []
    for i in range(0, len(texts), 64):
        r = client.post("/classify/attack", json={"texts": texts[i : i + 64], "top_k": 1})
        assert r.status_code == 200, r.text
        got += [x["predictions"][0]["technique_id"] for x in r.json()["results"]]
    agree = [g == p["top5"][0][0] for g, p in zip(got, expected, strict=True)]
    assert len(agree) > 100 and sum(agree) / len(agree) >= 0.98
