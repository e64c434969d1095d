"""What strangers and clients can read: metrics and docs behind settings, the bearer scheme declared, no
server path in replies or metrics, short echoes of client-supplied names, strict request types, invisible
text refused. Fast tier (fake models: nothing here is about a model's answers)."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import DEFAULT_ATTACK, DEFAULT_CVSS, REPO
from tests.fakes import FAKES

KEY = "k-0123456789abcdef"
AUTH = {"authorization": f"Bearer {KEY}"}
TEXT = "The actor used Mimikatz to dump credentials from LSASS."


def _client(**settings) -> TestClient:
    base = {"cvss_artifact": DEFAULT_CVSS, "attack_artifact": DEFAULT_ATTACK}
    return TestClient(create_app(Settings(**{**base, **settings}), model_classes=FAKES))


@pytest.fixture(scope="module")
def keyed(base_model):
    with _client(api_keys=KEY) as c:
        yield c


def test_metrics_need_a_key_once_keys_are_configured(keyed, base_model):
    assert keyed.get("/metrics").status_code == 401
    assert keyed.get("/metrics", headers=AUTH).status_code == 200
    assert keyed.get("/healthz").status_code == 200 and keyed.get("/readyz").status_code == 200  # probes stay open
    with _client(api_keys=KEY, metrics_require_key=False) as c:
        assert c.get("/metrics").status_code == 200


def test_metrics_on_their_own_port_instead(base_model):
    from bench.harness import free_port

    port = free_port()
    with _client(api_keys=KEY, metrics_port=port, host="127.0.0.1") as c:
        assert c.get("/metrics", headers=AUTH).status_code == 404
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert r.status_code == 200 and "secclf_ready 1.0" in r.text
    with pytest.raises(httpx.ConnectError):  # closed with the app
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_docs_follow_the_setting_and_declare_the_bearer_scheme(keyed, base_model):
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert keyed.get(path, headers=AUTH).status_code == 404, path  # auto: off once keys are configured
    with _client(api_keys=KEY, docs="on") as c:
        spec = c.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "One of the server's SECCLF_API_KEYS",
    }
    assert spec["paths"]["/classify/cvss"]["post"]["security"] == [{"HTTPBearer": []}]


def test_no_server_path_in_replies_or_metrics(keyed):
    replies = [
        keyed.get("/v1/models", headers=AUTH).text,
        keyed.post("/classify/attack", json={"text": TEXT}, headers=AUTH).text,
        keyed.post("/classify/cvss", json={"description": TEXT}, headers=AUTH).text,
        keyed.get("/metrics", headers=AUTH).text,
    ]
    for text in replies:
        assert str(REPO) not in text and "/models/" not in text, text[:300]
    models = keyed.get("/v1/models", headers=AUTH).json()["models"]
    weights = models[0]["base_model"]["weights_sha256"]
    assert models[0]["base_model"]["serving"] == f"smollm2-135m@sha256:{weights[:12]}"
    assert f'base_model="smollm2-135m@sha256:{weights[:12]}"' in replies[-1]


def test_client_supplied_names_are_quoted_short(keyed):
    huge = "f" * 900_000
    r = keyed.post("/classify/attack", content=f'{{"text": "x", "{huge}": 1}}', headers=AUTH)
    assert r.status_code == 422 and len(r.content) < 2_000, len(r.content)
    r = keyed.post("/classify/cvss", json={"description": TEXT, "adapter": "a" * 100_000}, headers=AUTH)
    assert r.status_code == 422 and len(r.content) < 1_000 and "100000 characters" in r.text


@pytest.mark.parametrize(
    ("field", "value"),
    [("top_k", True), ("top_k", "5"), ("top_k", 5.0), ("min_confidence", "0.5"), ("text", 5)],
)
def test_request_fields_are_strictly_typed(keyed, field, value):
    r = keyed.post("/classify/attack", json={"text": TEXT, field: value}, headers=AUTH)
    assert r.status_code == 422, (field, value, r.text)
    assert keyed.post("/classify/attack", json={"text": TEXT, "top_k": 5, "min_confidence": 1}, headers=AUTH).is_success


@pytest.mark.parametrize("text", ["\u200b\u200b\u200b", "\ufeff\u200d", "\u0301\u0302", "\x01\x02"])
def test_text_with_no_visible_character_is_a_422(keyed, text):
    for route, body in (("/classify/attack", {"text": text}), ("/classify/cvss", {"description": text})):
        r = keyed.post(route, json=body, headers=AUTH)
        assert r.status_code == 422 and "no visible characters" in r.text, (route, r.text)
    assert keyed.post("/classify/attack", json={"text": "\u200bT1003\u200b"}, headers=AUTH).status_code == 200
