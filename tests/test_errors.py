"""Error mapping without an engine: engine faults reach clients as a generic 503 with the request id."""

from __future__ import annotations

import logging

from fastapi.testclient import TestClient


def test_engine_failure_text_stays_in_the_log(monkeypatch, caplog):
    monkeypatch.setenv("SECCLF_CVSS_ARTIFACT", "")
    monkeypatch.setenv("SECCLF_ATTACK_ARTIFACT", "")
    from service.app import create_app
    from service.exceptions import EngineUnavailable
    from service.settings import Settings

    app = create_app(Settings())

    @app.get("/boom")
    async def boom():
        raise EngineUnavailable("vLLM generation failed: CUDA error at /secret/path.cu:42")

    with TestClient(app) as client, caplog.at_level(logging.ERROR):
        r = client.get("/boom", headers={"x-request-id": "trace-7"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["request_id"] == "trace-7" and "trace-7" in r.json()["detail"]
    assert "secret" not in r.text and "CUDA" not in r.text
    assert any("secret/path.cu" in rec.getMessage() for rec in caplog.records)  # the operator still sees it
