"""Quotas per API key: one key at its limit gets 429 with a Retry-After, another key is unaffected
(fast tier: fake models hold each text for a while; nothing here is about a model's answers)."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from service.app import create_app
from service.quota import fingerprint
from service.settings import Settings
from tests.conftest import DEFAULT_ATTACK
from tests.fakes import FAKES

BUSY, CALM = "key-busy-0123456789", "key-calm-0123456789"
TEXT = "The actor used Mimikatz to dump credentials from LSASS."


def _quota_refusals(c: TestClient) -> float:
    metrics = c.get("/metrics", headers={"authorization": f"Bearer {CALM}"}).text
    found = re.search(r'^secclf_errors_total\{kind="quota",route="other"\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_key_at_its_limit_gets_429_and_another_key_is_unaffected(base_model):
    settings = Settings(
        cvss_artifact="",
        attack_artifact=DEFAULT_ATTACK,
        api_keys=f"{BUSY},{CALM}",
        key_max_concurrency=4,
        key_concurrency_overrides={fingerprint(BUSY): 2},
    )
    with TestClient(create_app(settings, model_classes=FAKES)) as c:
        model = c.app.state.models.attack
        model.delay_s = 1.0

        def call(key: str):
            t = time.perf_counter()
            r = c.post("/classify/attack", json={"text": TEXT}, headers={"authorization": f"Bearer {key}"})
            return key, r, time.perf_counter() - t

        before = _quota_refusals(c)
        with ThreadPoolExecutor(7) as pool:
            answers = list(pool.map(call, [BUSY] * 4 + [CALM] * 3))
        model.delay_s = 0.0
        busy = [r.status_code for k, r, _ in answers if k == BUSY]
        calm = [r.status_code for k, r, _ in answers if k == CALM]
        assert sorted(busy) == [200, 200, 429, 429], busy  # its override: 2 in flight
        assert calm == [200, 200, 200]  # under its default of 4, whatever the busy key does
        refused = [(r, dt) for k, r, dt in answers if r.status_code == 429]
        assert all(int(r.headers["retry-after"]) >= 1 and dt < 0.9 for r, dt in refused)  # at once, not queued
        assert all("limit" in r.json()["detail"] for r, _ in refused)
        r = c.post("/classify/attack", json={"text": TEXT}, headers={"authorization": f"Bearer {BUSY}"})
        assert r.status_code == 200  # its slots came back
        assert _quota_refusals(c) == before + 2  # the registry is the process's: other tests count too


def test_a_key_over_its_quota_has_its_whole_body_read_before_the_429():
    """A key holder writing a body larger than 1 MB (here 3 MB, inside the body limit) must have all of it read
    before the 429 and the close, or a client that writes first reads a reset instead of its answer."""
    import asyncio

    from service.quota import KeyQuota

    quota = KeyQuota(app=None, settings=Settings(api_keys=BUSY, key_max_concurrency=1))
    quota.inflight[BUSY] = 1  # at its limit
    chunks = [b"a" * (1 << 16)] * 48
    sent: list[dict] = []

    async def receive():
        body = chunks.pop()
        return {"type": "http.request", "body": body, "more_body": bool(chunks)}

    async def send(msg):
        sent.append(msg)

    scope = {
        "type": "http",
        "path": "/classify/attack",
        "method": "POST",
        "headers": [(b"authorization", f"Bearer {BUSY}".encode())],
    }
    asyncio.run(quota(scope, receive, send))
    assert sent[0]["status"] == 429 and not chunks  # answered only after the last chunk was read
