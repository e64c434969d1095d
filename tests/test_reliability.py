"""Auth, limits, backpressure, deadlines, drain on SIGTERM, engine failure, and fuzzing: the service keeps
answering, loses nothing and lets no one in without the key."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import DEFAULT_ATTACK, DEFAULT_CVSS, Server

pytestmark = pytest.mark.slow
TEXT = "The actor used Mimikatz to dump credentials from LSASS."


def _server(tmp_path_factory, name: str, **env: str) -> Server:
    s = Server(env, tmp_path_factory.mktemp(name) / "service.log")
    s.wait_ready()
    return s


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, base_model):
    """ATT&CK only (fast to start), two API keys, tight limits and a tiny queue."""
    s = _server(
        tmp_path_factory,
        "guarded",
        SECCLF_CVSS_ARTIFACT="",
        SECCLF_ATTACK_ARTIFACT=str(DEFAULT_ATTACK),
        SECCLF_API_KEYS="key-old, key-new",
        SECCLF_MAX_TEXT_CHARS="500",
        SECCLF_MAX_BODY_BYTES="20000",
        SECCLF_MAX_INFLIGHT_ATTACK="8",
    )
    yield s
    s.stop()


def _post(server, body, key="key-new", path="/classify/attack"):
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.url + path, json=body, headers=headers, timeout=120)


def test_auth(guarded):
    assert _post(guarded, {"text": TEXT}, key=None).status_code == 401
    assert _post(guarded, {"text": TEXT}, key="key-ne").status_code == 401
    r = httpx.post(guarded.url + "/classify/attack", json={"text": TEXT}, headers={"authorization": "Basic key-new"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert _post(guarded, {"text": TEXT}, key="key-old").status_code == 200  # rotation: both keys work
    assert _post(guarded, {"text": TEXT}, key="key-new").status_code == 200
    assert httpx.get(guarded.url + "/v1/models").status_code == 401
    r = httpx.get(guarded.url + "/v1/models", headers={"authorization": "Bearer key-old"})
    assert r.status_code == 200 and r.json()["auth_enabled"] is True
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(guarded.url + path).status_code == 200
    assert "auth enabled: 2 API key(s)" in guarded.log_path.read_text()


def test_configured_limits_and_request_id(guarded):
    r = _post(guarded, {"text": "a" * 501})
    assert r.status_code == 422 and "limit is 500" in r.json()["detail"]
    r = httpx.post(
        guarded.url + "/classify/attack",
        content=b'{"text": "' + b"a" * 30000 + b'"}',
        headers={"authorization": "Bearer key-new", "content-type": "application/json"},
    )
    assert r.status_code == 413
    r = httpx.post(
        guarded.url + "/classify/attack",
        json={"text": TEXT},
        headers={"authorization": "Bearer key-new", "x-request-id": "trace-42"},
    )
    assert r.headers["x-request-id"] == "trace-42"
    assert len(_post(guarded, {"text": TEXT}).headers["x-request-id"]) == 32
    log = guarded.log_path.read_text()
    assert '"request_id": "trace-42"' in log and "Mimikatz" not in log  # no request text in logs


def test_backpressure_rejects_at_once_and_loses_nothing(guarded):
    r = _post(guarded, {"texts": [TEXT] * 16})  # more than the in-flight limit: could never fit, so not "retry"
    assert r.status_code == 422 and "limit of 8" in r.json()["detail"] and "retry-after" not in r.headers
    box: dict[int, tuple[httpx.Response, float]] = {}

    def one(i: int) -> None:
        t = time.perf_counter()
        box[i] = (_post(guarded, {"texts": [f"{TEXT} ({i})"] * 8}), time.perf_counter() - t)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    refused = [(r, dt) for r, dt in box.values() if r.status_code == 503]
    served = [r for r, _ in box.values() if r.status_code == 200]
    assert refused and served and len(refused) + len(served) == 4
    assert all(r.headers["retry-after"] == "1" and dt < 5 for r, dt in refused)  # at once, not after queueing
    assert all(len(r.json()["results"]) == 8 for r in served)  # accepted whole: nothing half-run or lost
    r = _post(guarded, {"texts": [TEXT] * 8})
    assert r.status_code == 200 and len(r.json()["results"]) == 8
    assert httpx.get(guarded.url + "/readyz").status_code == 200


def test_deadline_gives_504(tmp_path_factory, base_model):
    s = _server(
        tmp_path_factory, "deadline", SECCLF_CVSS_ARTIFACT="", SECCLF_REQUEST_TIMEOUT_S="0.001", SECCLF_LOG_TEXT="true"
    )
    try:
        r = _post(s, {"texts": [TEXT] * 32}, key=None)
        assert r.status_code == 504 and "deadline" in r.json()["detail"]
        assert httpx.get(s.url + "/readyz").status_code == 200
        assert "Mimikatz" in s.log_path.read_text()  # SECCLF_LOG_TEXT=true logs texts (off by default)
    finally:
        s.stop()


def test_sigterm_drains_in_flight_requests(tmp_path_factory, base_model):
    s = _server(tmp_path_factory, "drain", SECCLF_CVSS_ARTIFACT="")
    box = {}
    texts = [f"{TEXT} ({i})" for i in range(256)]  # several seconds of work on 2 cores
    worker = threading.Thread(target=lambda: box.setdefault("r", _post(s, {"texts": texts}, key=None)))
    worker.start()
    time.sleep(1.0)
    s.proc.send_signal(signal.SIGTERM)
    worker.join(120)
    assert box["r"].status_code == 200 and len(box["r"].json()["results"]) == 256
    assert s.proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after draining


@pytest.fixture(scope="module")
def cvss_small(tmp_path_factory, base_model):
    """CVSS only, at most 4 descriptions in flight; the engine-failure test kills it last."""
    s = _server(
        tmp_path_factory,
        "engine",
        SECCLF_ATTACK_ARTIFACT="",
        SECCLF_CVSS_ARTIFACT=str(DEFAULT_CVSS),
        SECCLF_UNHEALTHY_EXIT_S="3",
        SECCLF_MAX_INFLIGHT_CVSS="4",
    )
    yield s
    s.stop()


def test_cvss_inflight_limit_with_concurrent_requests(cvss_small):
    s = cvss_small
    r = _post(s, {"descriptions": ["heap overflow"] * 5}, key=None, path="/classify/cvss")
    assert r.status_code == 422 and "limit of 4" in r.json()["detail"]  # could never fit: no Retry-After
    box: dict[int, httpx.Response] = {}
    body = {"descriptions": ["A heap overflow in the parser allows remote code execution."] * 2}
    threads = [
        threading.Thread(target=lambda i=i: box.setdefault(i, _post(s, body, key=None, path="/classify/cvss")))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    codes = sorted(r.status_code for r in box.values())
    assert codes.count(200) >= 2 and codes.count(503) >= 1 and set(codes) <= {200, 503}, codes
    assert all(r.headers["retry-after"] == "1" for r in box.values() if r.status_code == 503)
    assert all(len(r.json()["results"]) == 2 for r in box.values() if r.status_code == 200)  # none half-run
    assert _post(s, body, key=None, path="/classify/cvss").status_code == 200  # capacity came back


def test_engine_failure_turns_unready_then_exits_nonzero(cvss_small):
    s = cvss_small
    try:
        for child in psutil.Process(s.proc.pid).children(recursive=True):  # the vLLM engine core
            child.kill()
        deadline = time.time() + 30
        while time.time() < deadline and httpx.get(s.url + "/readyz").status_code == 200:
            time.sleep(0.2)
        assert httpx.get(s.url + "/readyz").status_code == 503
        t = time.perf_counter()
        r = httpx.post(s.url + "/classify/cvss", json={"description": "buffer overflow"}, timeout=30)
        assert r.status_code == 503 and time.perf_counter() - t < 10
        assert "not ready" in r.json()["detail"] and "vllm" not in r.text.lower()  # no engine internals
        assert s.proc.wait(60) == 3  # exits non-zero so the container restarts it
    finally:
        s.stop()


def test_fuzz_no_server_errors(service):
    """schemathesis against the live OpenAPI schema, a bounded number of cases per operation: no 5xx."""
    st = Path(sys.executable).parent / "schemathesis"
    r = subprocess.run(
        [
            str(st),
            "run",
            service.url + "/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            os.environ.get("SECCLF_FUZZ_EXAMPLES", "15"),  # `make fuzz` runs 200 per operation
            "--generation-allow-x00",
            "true",
            "--request-timeout",
            "300",
            "--workers",
            "1",
            "--seed",
            "7",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
