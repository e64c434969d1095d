"""The fast tier: HTTP behaviour with fake models (tests/fakes.py) in FastAPI's TestClient, no engine.

Routing, limits, auth, error mapping, metrics, backpressure and the deadline. What only the real engines
can show (drift, concurrency equivalence, engine death, drain) stays in the slow tier."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import DEFAULT_ATTACK, DEFAULT_CVSS
from tests.fakes import FAKES

TEXT = "The actor used Mimikatz to dump credentials from LSASS."
CVE = "A heap overflow in the parser allows remote attackers to execute code."


def _client(**settings) -> TestClient:
    base = {"cvss_artifact": DEFAULT_CVSS, "attack_artifact": DEFAULT_ATTACK, "warmup": True}
    return TestClient(create_app(Settings(**{**base, **settings}), model_classes=FAKES))


@pytest.fixture(scope="module")
def client(base_model):
    with _client() as c:
        yield c


def test_routes_answer_their_contract(client):
    r = client.post("/classify/attack", json={"text": TEXT, "top_k": 7})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    probs = [p["probability"] for p in preds]
    assert len(preds) == 7 and probs == sorted(probs, reverse=True)
    r = client.post("/classify/cvss", json={"descriptions": [CVE, CVE + " Again."]})
    assert r.status_code == 200, r.text
    first = r.json()["results"][0]
    assert first["vector"].startswith("CVSS:3.1/AV:") and set(first["metrics"]) == {
        "AV",
        "AC",
        "PR",
        "UI",
        "S",
        "C",
        "I",
        "A",
    }
    for metric in first["metrics"].values():
        assert abs(sum(metric["probabilities"].values()) - 1) < 1e-6
        assert metric["value"] == max(metric["probabilities"], key=metric["probabilities"].get)
    assert client.get("/readyz").json() == {"ready": True, "unhealthy": [], "problems": []}
    assert {m["task"] for m in client.get("/v1/models").json()["models"]} == {"cvss", "attack"}


def test_disabled_route_is_404_and_unknown_adapter_422(base_model):
    with _client(cvss_artifact="") as c:
        r = c.post("/classify/cvss", json={"description": CVE})
        assert r.status_code == 404 and "not enabled" in r.json()["detail"]
        assert c.post("/classify/attack", json={"text": TEXT}).status_code == 200
    with _client(attack_artifact="") as c:
        r = c.post("/classify/cvss", json={"description": CVE, "adapter": "nope"})
        assert r.status_code == 422 and "'nope'" in r.json()["detail"] and "default" in r.json()["detail"]


def test_auth_with_key_rotation_and_protected_ops(base_model):
    with _client(api_keys="key-old, key-new", protect_ops_endpoints=True) as c:
        assert c.post("/classify/attack", json={"text": TEXT}).status_code == 401
        r = c.post("/classify/attack", json={"text": TEXT}, headers={"authorization": "Basic key-new"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert (
            c.post("/classify/attack", json={"text": TEXT}, headers={"authorization": "Bearer key-ne"}).status_code
            == 401
        )
        for key in ("key-old", "key-new"):  # rotation: both work
            r = c.post("/classify/attack", json={"text": TEXT}, headers={"authorization": f"Bearer {key}"})
            assert r.status_code == 200
        assert c.get("/metrics").status_code == 401 and c.get("/readyz").status_code == 401
        r = c.get("/v1/models", headers={"authorization": "Bearer key-old"})
        assert r.status_code == 200 and r.json()["auth_enabled"] is True


def test_configured_limits_request_id_and_no_text_in_logs(base_model, caplog):
    with _client(max_text_chars=500, max_body_bytes=20_000) as c, caplog.at_level(logging.INFO):
        r = c.post("/classify/attack", json={"text": "a" * 501})
        assert r.status_code == 422 and "limit is 500" in r.json()["detail"]
        r = c.post(
            "/classify/attack",
            content=b'{"text": "' + b"a" * 30_000 + b'"}',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413 and len(r.headers["x-request-id"]) == 32  # tracked like every answer
        r = c.post("/classify/attack", json={"texts": ["x"] * 65})
        assert r.status_code == 422
        r = c.post("/classify/attack", json={"text": TEXT}, headers={"x-request-id": "trace-42"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "trace-42"
        assert len(c.post("/classify/attack", json={"text": TEXT}).headers["x-request-id"]) == 32
    # request texts are not logged by default: in no message and in no record's extra fields (the JSON
    # formatter prints extras, which caplog's text never shows)
    assert not [rec for rec in caplog.records if "Mimikatz" in rec.getMessage() or "Mimikatz" in str(vars(rec))]
    with _client(log_text=True, cvss_artifact="") as c, caplog.at_level(logging.INFO):
        c.post("/classify/attack", json={"text": TEXT})
    assert any(TEXT in str(getattr(rec, "texts", "")) for rec in caplog.records)


def test_engine_failure_is_a_generic_503_with_the_request_id(client, caplog):
    model = client.app.state.models.attack
    model.fail = "CUDA error at /secret/path.cu:42"
    try:
        with caplog.at_level(logging.ERROR):
            r = client.post("/classify/attack", json={"text": TEXT}, headers={"x-request-id": "trace-7"})
    finally:
        model.fail = None
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["request_id"] == "trace-7" and "secret" not in r.text and "CUDA" not in r.text
    assert any("secret/path.cu" in rec.getMessage() for rec in caplog.records)  # the operator sees it
    assert client.post("/classify/attack", json={"text": TEXT}).status_code == 200


def test_an_input_the_engine_refuses_is_a_422_not_a_503(client):
    model = client.app.state.models.attack
    model.refuse = "The decoder prompt (length 2000) is longer than the maximum model length of 1024"
    try:
        r = client.post("/classify/attack", json={"text": TEXT})
    finally:
        model.refuse = None
    assert r.status_code == 422 and "retry-after" not in r.headers
    assert "cannot take this text" in r.json()["detail"] and "maximum model length" in r.json()["detail"]
    assert client.post("/classify/attack", json={"text": TEXT}).status_code == 200


def test_unhealthy_engine_turns_readyz_and_requests_to_503_and_the_watchdog_recovers(client):
    engine = client.app.state.models.cvss.engine
    engine.errored = True
    try:
        assert client.get("/readyz").status_code == 503
        r = client.post("/classify/cvss", json={"description": CVE})
        assert r.status_code == 503 and "not ready" in r.json()["detail"] and r.headers["retry-after"] == "1"
        assert client.post("/classify/attack", json={"text": TEXT}).status_code == 200  # the other route lives
        time.sleep(2.5)  # the watchdog looks every second
        assert client.get("/readyz").json()["problems"] == ["FakeCvssModel unhealthy"]
        assert "secclf_ready 0.0" in client.get("/metrics").text
    finally:
        engine.errored = False
    time.sleep(2.5)  # a transient problem: the watchdog sees the recovery
    assert client.get("/readyz").json() == {"ready": True, "unhealthy": [], "problems": []}
    assert "secclf_ready 1.0" in client.get("/metrics").text


def test_backpressure_rejects_at_once_and_loses_nothing(base_model):
    with _client(max_inflight_attack=8, cvss_artifact="") as c:
        model = c.app.state.models.attack
        r = c.post("/classify/attack", json={"texts": [TEXT] * 16})  # could never fit: 422, not "retry"
        assert r.status_code == 422 and "limit of 8" in r.json()["detail"] and "retry-after" not in r.headers
        model.delay_s = 0.5

        def one(i: int):
            t = time.perf_counter()
            return c.post("/classify/attack", json={"texts": [f"{TEXT} ({i})"] * 8}), time.perf_counter() - t

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(one, range(4)))
        model.delay_s = 0.0
        refused = [(r, dt) for r, dt in answers if r.status_code == 503]
        served = [r for r, _ in answers if r.status_code == 200]
        assert refused and served and len(refused) + len(served) == 4
        assert all(r.headers["retry-after"] == "1" and dt < 0.4 for r, dt in refused)  # at once, not queued
        assert all(len(r.json()["results"]) == 8 for r in served)  # accepted whole: nothing half-run
        assert model.inflight == 0
        assert c.post("/classify/attack", json={"texts": [TEXT] * 8}).status_code == 200  # capacity came back


def test_deadline_gives_504_and_releases_capacity(base_model):
    with _client(request_timeout_s=0.2, attack_artifact="", warmup=False) as c:
        model = c.app.state.models.cvss
        model.delay_s = 5.0
        t = time.perf_counter()
        r = c.post("/classify/cvss", json={"descriptions": [CVE] * 4})
        assert r.status_code == 504 and "deadline" in r.json()["detail"] and time.perf_counter() - t < 3
        assert model.inflight == 0  # the cancelled texts no longer count
        model.delay_s = 0.0
        assert c.post("/classify/cvss", json={"description": CVE}).status_code == 200


def test_metrics_after_traffic(client):
    client.post("/classify/cvss", json={"description": CVE})
    client.post("/classify/attack", json={"text": TEXT})
    client.post("/classify/attack", json={"text": ""})
    client.post("/classify/nope", json={"text": TEXT})
    text = client.get("/metrics").text
    for series in (
        'secclf_request_duration_seconds_bucket{le="0.005",method="POST",route="/classify/cvss",status="200"}',
        'secclf_requests_total{method="POST",route="/classify/attack",status="422"}',
        'secclf_stage_duration_seconds_count{model="attack",stage="predict"}',
        'secclf_stage_duration_seconds_count{model="cvss",stage="postprocess"}',
        'secclf_errors_total{kind="validation",route="/classify/attack"}',
        'secclf_items_total{model="cvss"}',
        'secclf_requests_in_flight{route="other"}',
    ):
        assert series in text, series
    assert "/classify/nope" not in text  # unknown paths share one label value


def test_min_confidence_abstains_and_responses_without_it_are_unchanged(client):
    plain = client.post("/classify/attack", json={"text": TEXT}).json()
    assert "abstained" not in plain and "abstained" not in plain["predictions"][0]
    top = plain["predictions"][0]["probability"]
    above = client.post("/classify/attack", json={"text": TEXT, "min_confidence": top / 2}).json()
    below = client.post("/classify/attack", json={"text": TEXT, "min_confidence": min(1.0, top * 1.01)}).json()
    assert above["abstained"] is False and below["abstained"] is True
    assert below["predictions"] == plain["predictions"]  # abstaining keeps the predictions

    plain = client.post("/classify/cvss", json={"description": CVE}).json()
    assert "abstained" not in plain and all("abstained" not in m for m in plain["metrics"].values())
    tops = {k: m["probabilities"][m["value"]] for k, m in plain["metrics"].items()}
    cut = sorted(tops.values())[3]  # between the 4th and 5th most confident metrics
    r = client.post("/classify/cvss", json={"description": CVE, "min_confidence": cut}).json()
    assert r["abstained"] is True and r["vector"] == plain["vector"]
    assert {k for k, m in r["metrics"].items() if m["abstained"]} == {k for k, p in tops.items() if p < cut}
    for bad in (0, 1.5, "high"):
        assert client.post("/classify/attack", json={"text": TEXT, "min_confidence": bad}).status_code == 422


def _sample_count(text: str, name: str, **labels: str) -> float:
    import re

    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    m = re.search(rf"^{name}{{{want}}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_drift_metrics_follow_the_answers(client):
    before = client.get("/metrics").text
    r = client.post("/classify/attack", json={"texts": [TEXT, TEXT + " Twice."]}).json()
    cvss = client.post("/classify/cvss", json={"description": CVE}).json()
    after = client.get("/metrics").text
    top = r["results"][0]["predictions"][0]["technique_id"]
    grew = lambda name, **kw: _sample_count(after, name, **kw) - _sample_count(before, name, **kw)  # noqa: E731
    assert grew("secclf_top1_confidence_count", field="technique", model="attack") == 2
    assert grew("secclf_input_tokens_count", model="attack") == 2
    assert grew("secclf_predicted_labels_total", label=top, model="attack") >= 1
    av = cvss["metrics"]["AV"]["value"]
    assert grew("secclf_predicted_labels_total", label=f"AV:{av}", model="cvss") == 1
    assert grew("secclf_top1_confidence_count", field="AV", model="cvss") == 1


def test_coverage_returns_prediction_sets_and_unsupported_coverage_is_a_422(client):
    from training.artifact.conformal import VectorSet, prediction_set
    from training.artifact.manifest import load_manifest

    attack_levels = {lv.coverage: lv for lv in load_manifest(DEFAULT_ATTACK).conformal.levels}
    cvss_levels = {lv.coverage: lv for lv in load_manifest(DEFAULT_CVSS).conformal.levels}
    plain = client.post("/classify/attack", json={"text": TEXT}).json()
    assert "prediction_set" not in plain

    r = client.post("/classify/attack", json={"text": TEXT, "coverage": 0.8, "top_k": 3}).json()
    assert r["predictions"] == plain["predictions"][:3]
    model = client.app.state.models.attack
    probs = asyncio.run(model.predict(model.preprocess(TEXT)[0])).double().tolist()  # the fake's seeded output
    expected = prediction_set(probs, attack_levels[0.8].fields["technique"])
    assert [p["technique_id"] for p in r["prediction_set"]] == [model.labels.techniques[i].id for i in expected]
    assert [p["probability"] for p in r["prediction_set"]] == pytest.approx([probs[i] for i in expected])

    plain = client.post("/classify/cvss", json={"description": CVE}).json()
    assert "base_score_range" not in plain and all("prediction_set" not in m for m in plain["metrics"].values())
    labels = client.app.state.models.cvss.labels
    # The fake's seeded probabilities depend on the text; take the first whose set holds several vectors
    # under the committed threshold, so the comparison below is never the trivial one-vector set.
    for n in range(20):
        r = client.post("/classify/cvss", json={"description": f"{CVE} ({n})", "coverage": 0.9}).json()
        probs = {key: metric["probabilities"] for key, metric in r["metrics"].items()}
        expected = VectorSet(labels, probs, cvss_levels[0.9].vector_nll)
        if expected.size > 1:
            break
    else:
        pytest.fail("no text gave the fake a set of several vectors")
    for key, metric in r["metrics"].items():
        assert metric["prediction_set"] == expected.sets[key]
        assert metric["prediction_set"][0] == metric["value"]
    assert tuple(r["base_score_range"]) == expected.base_score_range
    assert r["base_score_range"][0] <= r["base_score"] <= r["base_score_range"][1]

    for route, body in (("/classify/attack", {"text": TEXT}), ("/classify/cvss", {"description": CVE})):
        bad = client.post(route, json={**body, "coverage": 0.95})
        assert bad.status_code == 422 and "0.9" in bad.text and "0.8" in bad.text, bad.text
        assert client.post(route, json={**body, "coverage": 1.5}).status_code == 422
    listed = {m["task"]: m["coverages"] for m in client.get("/v1/models").json()["models"]}
    assert listed == {"cvss": sorted(cvss_levels, reverse=True), "attack": sorted(attack_levels, reverse=True)}
    metrics = client.get("/metrics").text
    assert 'secclf_prediction_set_size_count{coverage="0.8",field="technique",model="attack"}' in metrics
    assert 'secclf_prediction_set_size_count{coverage="0.9",field="AV",model="cvss"}' in metrics
    assert 'secclf_prediction_set_size_count{coverage="0.9",field="vector",model="cvss"}' in metrics


def test_a_model_window_too_small_for_the_manifest_fails_start_up_with_exit_3(base_model):
    """Checked before any engine starts: the process exits with the start-up code, not the engine-death one."""
    from service.exceptions import EXIT_STARTUP_FAILED
    from tests.conftest import REPO

    env = {**os.environ, "SECCLF_MAX_MODEL_LEN": "200", "PORT": "0"}
    r = subprocess.run(
        [sys.executable, "-m", "service"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == EXIT_STARTUP_FAILED, r.stderr[-2000:]
    assert "SECCLF_MAX_MODEL_LEN=200 cannot hold a cvss prompt" in r.stderr + r.stdout


def test_request_path_dependencies_are_async_so_no_thread_pool_hop():
    """FastAPI runs a plain `def` dependency (or endpoint) on its thread pool: a thread hop per request each,
    which on 2 cores takes CPU from the engine. Every route's dependencies and handler are coroutines."""
    import inspect

    from fastapi.routing import APIRoute

    app = create_app(Settings(cvss_artifact=DEFAULT_CVSS, attack_artifact=DEFAULT_ATTACK), model_classes=FAKES)

    def sync_calls(dependant) -> list[str]:
        call = dependant.call  # a function, or an instance with an async __call__ (fastapi.security's)
        is_async = inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(type(call).__call__)
        found = [] if is_async else [getattr(call, "__qualname__", type(call).__name__)]
        return found + [name for d in dependant.dependencies for name in sync_calls(d)]

    routes = [r for r in app.routes if isinstance(r, APIRoute)]
    assert {"/classify/cvss", "/classify/attack", "/healthz"} <= {r.path for r in routes}
    offenders = {r.path: sync_calls(r.dependant) for r in routes if sync_calls(r.dependant)}
    assert not offenders, offenders
