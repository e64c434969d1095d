"""The real service: vLLM CPU engine + SmolLM2 + committed default artifacts, over HTTP."""

from __future__ import annotations

import asyncio
import math
import re
import time

import httpx
import pytest
from cvss import CVSS3

from tests.conftest import DEFAULT_ATTACK, DEFAULT_CVSS

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
        assert all(p > 0 for p in probs.values()), (key, probs)  # every allowed value got its logprob
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


def test_cvss_long_input_is_truncated_as_in_training_and_says_so(client):
    from training.artifact.loading import base_for, load_tokenizer
    from training.artifact.manifest import load_manifest
    from training.artifact.prompting import truncate

    long_text = "A heap overflow in the image parser allows remote attackers to execute code. " * 60
    r = client.post("/classify/cvss", json={"description": long_text})
    assert r.status_code == 200 and r.json()["truncated"] is True
    manifest = load_manifest(DEFAULT_CVSS)
    cut, was_cut = truncate(load_tokenizer(base_for(manifest)), long_text, manifest.max_input_tokens)
    assert was_cut and len(cut) < len(long_text)
    same = client.post("/classify/cvss", json={"description": cut}).json()  # what training would have seen
    assert same["truncated"] is False and same["vector"] == r.json()["vector"]
    for k, m in same["metrics"].items():
        for v, p in m["probabilities"].items():
            assert math.isclose(p, r.json()["metrics"][k]["probabilities"][v], abs_tol=1e-4), (k, v)


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


def _engine_requests(client) -> float:
    """Requests the ATT&CK engine has finished, from its scheduler's queue-time histogram."""
    text = client.get("/metrics").text
    return float(re.search(r'^secclf_engine_queue_seconds_count{model="attack"} (\S+)$', text, re.M).group(1))


def test_attack_prediction_set_is_the_head_of_the_served_ranking(client):
    """With a real engine: the set is a prefix of the ranked predictions, with the same probabilities, and
    the lower coverage gives a set no larger than the higher one."""
    sizes = {}
    for coverage in (0.8, 0.9):
        r = client.post("/classify/attack", json={"text": REPORTS[1], "top_k": 50, "coverage": coverage})
        assert r.status_code == 200, r.text
        body = r.json()
        sizes[coverage] = len(body["prediction_set"])
        assert 1 <= sizes[coverage] <= 50
        assert body["prediction_set"] == body["predictions"][: sizes[coverage]]
    assert sizes[0.8] <= sizes[0.9]


def test_attack_32_concurrent_clients_get_what_one_client_alone_gets(client, service):
    """vLLM batches the 32 requests continuously; each text's probabilities must not depend on its company."""
    texts = [f"{REPORTS[i % 3]} (sample {i})" for i in range(32)]
    alone = [client.post("/classify/attack", json={"text": t, "top_k": 10}).json() for t in texts]
    before = _engine_requests(client)

    async def burst():
        async with httpx.AsyncClient(base_url=service.url, timeout=300) as c:
            return await asyncio.gather(*(c.post("/classify/attack", json={"text": t, "top_k": 10}) for t in texts))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    assert _engine_requests(client) - before == 32  # every text went through the engine
    for a, r in zip(alone, responses, strict=True):
        pa, pb = a["predictions"], r.json()["predictions"]
        assert [p["technique_id"] for p in pa[:3]] == [p["technique_id"] for p in pb[:3]]
        for x, y in zip(pa, pb, strict=True):
            if x["technique_id"] == y["technique_id"]:
                assert math.isclose(x["probability"], y["probability"], abs_tol=1e-3)


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
    [
        (b"{not json", 422),
        (b"\xff\xfe\x00{", 422),  # a UTF-16 byte-order mark: not JSON text
        (b'{"text": "\xff\xfe"}', 400),  # invalid UTF-8 inside a string
        (b"[]", 422),
        (b'{"text": "a\\u0000b"}', 422),
    ],
)
def test_bad_bodies(client, content, status):
    r = client.post("/classify/attack", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["detail"]


@pytest.mark.parametrize("route, field", [("/classify/attack", "text"), ("/classify/cvss", "description")])
def test_lone_surrogate_is_422_and_the_model_stays_ready(client, route, field):
    """Valid JSON, invalid text: once a 500 (CVSS) or a model marked dead for good (ATT&CK)."""
    body = b'{"%s": "buffer overflow \\ud800 in the parser"}' % field.encode()
    r = client.post(route, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "surrogate" in r.text, r.text
    assert client.get("/readyz").status_code == 200
    ok = {"text": REPORTS[0]} if field == "text" else {"description": CVE}
    assert client.post(route, json=ok).status_code == 200


def test_a_body_over_the_limit_reaches_a_plain_client_as_413(service):
    """urllib sends the whole body before reading: the server must read it before answering 413."""
    import urllib.error
    import urllib.request

    from service.settings import Settings

    req = urllib.request.Request(
        service.url + "/classify/attack",
        data=b'{"text": "' + b"a" * (Settings().body_limit_bytes + 100_000) + b'"}',
        headers={"content-type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=120)
    assert err.value.code == 413 and b"larger than" in err.value.read()


def test_unknown_paths_do_not_grow_metric_series(client):
    for i in range(25):
        assert client.post(f"/classify/made-up-{i}", json={"text": "x"}).status_code == 404
    text = client.get("/metrics").text
    assert "made-up" not in text
    series = [ln for ln in text.splitlines() if ln.startswith("secclf_requests_in_flight{")]
    assert {re.search(r'route="([^"]*)"', ln).group(1) for ln in series} <= {
        "/classify/cvss",
        "/classify/attack",
        "/classify/attack/report",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/models",
        "/docs",
        "/openapi.json",
        "other",
    }


def test_oversized_body_is_413_and_service_stays_ready(client):
    from service.settings import Settings

    r = client.post(
        "/classify/attack",
        content=b'{"text": "' + b"a" * (Settings().body_limit_bytes + 1) + b'"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
    assert client.get("/readyz").status_code == 200
    assert client.get("/healthz").json() == {"status": "alive"}


def test_models_and_openapi(client):
    from training.artifact.manifest import load_manifest

    listing = client.get("/v1/models").json()
    assert listing["auth_enabled"] is False  # the shared test service runs without keys
    models = {m["task"]: m for m in listing["models"]}
    assert models["cvss"]["labels"] == 8 and models["attack"]["labels"] > 200
    assert models["attack"]["temperature"] > 0 and "top1" in models["attack"]["validation_metrics"]["mean"]
    # the decoder users get: the default's prior correction, none for ATT&CK
    assert models["cvss"]["prior_correction"] == load_manifest(DEFAULT_CVSS).prior_correction.tau
    assert models["attack"]["prior_correction"] is None
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
        'secclf_stage_duration_seconds_count{model="attack",stage="predict"}',
        'secclf_stage_duration_seconds_count{model="cvss",stage="preprocess"}',
        'secclf_engine_queue_seconds_bucket{le="0.005",model="attack"}',
        'secclf_engine_running_requests{model="cvss"}',
        'secclf_engine_waiting_requests{model="attack"}',
        'secclf_requests_in_flight{route="/metrics"} 1.0',  # this very scrape: a sample, not the HELP line
        'secclf_errors_total{kind="validation",route="/classify/attack"}',
        'secclf_generated_tokens_total{model="cvss"}',
        'secclf_model_info{artifact="cvss-default"',
        "secclf_ready 1.0",
    ):
        assert series in text, series


def _check_served_sets(results: list[dict]) -> None:
    """The served sets and base-score ranges are the manifest's vector threshold applied to the served
    probabilities (their coverage of the truth is measured out of sample in test_conformal.py: the default
    trained on these CVEs)."""
    from training.artifact.conformal import VectorSet
    from training.artifact.manifest import load_manifest

    manifest = load_manifest(DEFAULT_CVSS)
    [level] = [lv for lv in manifest.conformal.levels if lv.coverage == 0.9]
    for res in results:
        expected = VectorSet(
            manifest.labels, {k: m["probabilities"] for k, m in res["metrics"].items()}, level.vector_nll
        )
        assert {k: m["prediction_set"] for k, m in res["metrics"].items()} == expected.sets
        assert tuple(res["base_score_range"]) == expected.base_score_range
    assert all(r["base_score_range"][0] <= r["base_score"] <= r["base_score_range"][1] for r in results)
    assert len({tuple(r["base_score_range"]) for r in results}) > 5  # the sets differ with the input


def _transformers_cvss(examples) -> list[dict]:
    """What `training evaluate` computes (transformers, the adapter unfolded): per CVE, the chosen values and
    the calibrated probabilities of each metric."""
    import torch

    from training.artifact.loading import base_for, load_causal_lm_with_adapter, load_tokenizer
    from training.artifact.manifest import load_manifest
    from training.cvss.train import evaluate_cvss_model

    manifest = load_manifest(DEFAULT_CVSS)
    base = base_for(manifest)
    model = load_causal_lm_with_adapter(DEFAULT_CVSS, base, torch.device("cpu"), torch.float32)
    _, probs = evaluate_cvss_model(model, load_tokenizer(base), manifest, examples)
    return [{"predicted": {k: max(p[k], key=p[k].get) for k in p}, "probabilities": p} for p in probs]


def test_no_drift_cvss(client, cti_vsp):
    """The service (vLLM, grammar, folded adapter) agrees with `training evaluate` (transformers) on the
    validation run's 120 CVEs: the same values, and the same probabilities where the vectors agree."""
    from training.artifact.manifest import load_split
    from training.data import load_cvss

    scored = set(load_split(DEFAULT_CVSS).scored_ids)
    examples = sorted((e for e in load_cvss([cti_vsp]) if e.cve_id in scored), key=lambda e: e.cve_id)
    evaluated = {e.cve_id: p for e, p in zip(examples, _transformers_cvss(examples), strict=True)}
    desc = {e.cve_id: e.description for e in examples}
    ids = sorted(evaluated)
    got = []
    for i in range(0, len(ids), 16):
        r = client.post("/classify/cvss", json={"descriptions": [desc[c] for c in ids[i : i + 16]], "coverage": 0.9})
        assert r.status_code == 200, r.text
        got += r.json()["results"]
    expected = {c: evaluated[c]["predicted"] for c in ids}
    _check_served_sets(got)
    agree = [res["metrics"][k]["value"] == expected[c][k] for c, res in zip(ids, got, strict=True) for k in expected[c]]
    assert len(agree) == 8 * len(ids) >= 8 * 100
    assert sum(agree) / len(agree) >= 0.98, sum(agree) / len(agree)
    diffs = [
        abs(res["metrics"][k]["probabilities"][v] - evaluated[c]["probabilities"][k][v])
        for c, res in zip(ids, got, strict=True)
        if all(res["metrics"][k]["value"] == expected[c][k] for k in expected[c])  # same conditioning
        for k in expected[c]
        for v in evaluated[c]["probabilities"][k]
    ]
    assert len(diffs) > 500 and max(diffs) < 0.02 and sum(diffs) / len(diffs) < 0.002, (max(diffs), len(diffs))


def test_no_drift_attack(client, cti_hal):
    """Served probabilities equal the transformers forward pass `evaluate` runs, scaled by the manifest's
    temperature (dropping the temperature, or any prompt or truncation drift, fails this)."""
    import torch
    from scipy.special import softmax

    from training.artifact.loading import base_for, load_attack_classifier, load_tokenizer
    from training.artifact.manifest import load_manifest
    from training.attack.catalogue import catalogue
    from training.attack.train import evaluate_attack_model
    from training.data import load_cti_hal

    manifest = load_manifest(DEFAULT_ATTACK)
    known = {t.id for t in manifest.labels.techniques}
    examples = [e for e in load_cti_hal(cti_hal, catalogue().remap)[0] if e.technique in known][::8]
    base = base_for(manifest)
    tok = load_tokenizer(base)
    model = load_attack_classifier(DEFAULT_ATTACK, manifest, base, tok.pad_token_id, torch.device("cpu"), torch.float32)
    logits, _ = evaluate_attack_model(model, tok, manifest, examples)
    expected = softmax(logits / manifest.temperature, axis=1)
    assert abs(manifest.temperature - 1.0) > 0.01  # otherwise this test could not see a dropped temperature
    ids = [t.id for t in manifest.labels.techniques]
    texts = [e.text for e in examples]
    got = []
    for i in range(0, len(texts), 64):
        r = client.post("/classify/attack", json={"texts": texts[i : i + 64], "top_k": 5})
        assert r.status_code == 200, r.text
        got += [x["predictions"] for x in r.json()["results"]]
    assert len(got) > 150
    top1_agree = [g[0]["technique_id"] == ids[int(row.argmax())] for g, row in zip(got, expected, strict=True)]
    assert sum(top1_agree) / len(top1_agree) >= 0.99
    diffs = [
        abs(p["probability"] - row[ids.index(p["technique_id"])])
        for g, row in zip(got, expected, strict=True)
        for p in g
    ]
    assert max(diffs) < 1e-3, max(diffs)


# Strings a JSON client can send that stress text handling (raw JSON escapes, so surrogates survive), each
# with the one status it must get: invalid text or no visible character is a 422, the rest is classified.
NASTY = [
    (r"\ud800", 422),
    (r"trailing \udfff", 422),
    (r"\udbff\udfff paired", 200),
    (r"\u0000", 422),
    (r"\u0001\u0002\u001f control", 200),
    (r"\u202e RTL override \u200b zero width \ufeff BOM", 200),
    (r"\ud83d\ude00 emoji", 200),
    (r"\u00a0\u3000", 422),
    (r"A" + r"\u0301" * 300, 200),
    (r"<script>alert(1)</script> ' OR 1=1 --", 200),
    (r"\\ backslash \" quote", 200),
    (r"\n\t\r", 422),
    (r"\u200b\u200b\u200b", 422),
]


@pytest.mark.parametrize("route, field", [("/classify/attack", "text"), ("/classify/cvss", "description")])
def test_nasty_strings_get_their_status(client, route, field):
    for s, status in NASTY:
        body = ('{"' + field + '": "' + s + '"}').encode()
        r = client.post(route, content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, (s, r.status_code, r.text)
        assert r.json()  # always a JSON answer
    assert client.get("/readyz").status_code == 200


def _metric(client, name: str, model: str) -> float:
    m = re.search(rf'^{name}{{model="{model}"}} (\S+)$', client.get("/metrics").text, re.M)
    return float(m.group(1)) if m else 0.0


def test_the_largest_request_the_limits_document_is_accepted(client):
    """64 texts of the maximum length: within every per-item limit, so within the body limit too."""
    from service.settings import MAX_ITEMS, Settings

    chars = Settings().max_text_chars
    texts = [(f"{i} " + REPORTS[i % 3] + " ") * (chars // 80) for i in range(MAX_ITEMS)]
    texts = [t[:chars] for t in texts]
    r = client.post("/classify/attack", json={"texts": texts, "top_k": 1})
    assert r.status_code == 200, r.text[:500]
    assert len(r.json()["results"]) == MAX_ITEMS and all(x["truncated"] for x in r.json()["results"])


def test_a_client_that_disconnects_has_its_work_aborted_in_the_engine(client, service):
    """A 64-text CVSS request is abandoned mid-flight: the engine lets go of it and the slots come back."""
    import json
    import socket

    items_before = _metric(client, "secclf_items_total", "cvss")
    body = json.dumps({"descriptions": [f"({i}) {CVE} {CVE2}" * 8 for i in range(64)]}).encode()
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=30)
    sock.sendall(
        b"POST /classify/cvss HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    for _ in range(600):  # until the engine holds the texts
        if _metric(client, "secclf_engine_unfinished_requests", "cvss") >= 32:
            break
        time.sleep(0.05)
    assert _metric(client, "secclf_engine_unfinished_requests", "cvss") >= 32
    sock.close()
    for _ in range(200):
        if _metric(client, "secclf_engine_unfinished_requests", "cvss") == 0:
            break
        time.sleep(0.05)
    assert _metric(client, "secclf_engine_unfinished_requests", "cvss") == 0
    assert _metric(client, "secclf_items_total", "cvss") - items_before < 64  # aborted, not run to the end
    assert 'secclf_errors_total{kind="client_gone",route="/classify/cvss"}' in client.get("/metrics").text
    r = client.post("/classify/cvss", json={"descriptions": [CVE] * 64})  # every slot is free again
    assert r.status_code == 200, r.text


def test_no_server_path_of_a_model_artifact_or_cache_in_replies_metrics_or_logs(client, service):
    from tests.conftest import REPO

    paths = [str(REPO / "models"), str(REPO / "artifacts"), str(REPO / "models" / "cache")]
    replies = [
        client.get("/v1/models").text,
        client.post("/classify/cvss", json={"description": CVE}).text,
        client.post("/classify/attack", json={"text": REPORTS[0]}).text,
        client.get("/metrics").text,
        service.log_path.read_text(),
    ]
    for text in replies:
        for path in paths:
            assert path not in text, [ln for ln in text.splitlines() if path in ln][:3]
