"""With the real engines: drain on SIGTERM, the in-flight bound under concurrent requests, engine death, and
fuzzing. Auth, limits, backpressure and the deadline are tested without an engine in tests/test_api.py."""

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

from tests.conftest import DEFAULT_CVSS, ServerProcess

pytestmark = pytest.mark.slow
TEXT = "The actor used Mimikatz to dump credentials from LSASS."


def _server(tmp_path_factory, name: str, **env: str) -> ServerProcess:
    s = ServerProcess.service(env, tmp_path_factory.mktemp(name) / "service.log")
    s.wait_ready()
    return s


def _post(server, body, key=None, path="/classify/attack"):
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(server.url + path, json=body, headers=headers, timeout=120)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_signal_drains_in_flight_requests(tmp_path_factory, base_model, sig):
    """Both engines: the in-flight batch is answered, then the process exits cleanly, both engines shut
    down with nothing left for interpreter teardown (after Ctrl-C, a CVSS engine kept alive past close()
    printed an ignored TypeError from vLLM's __del__ there)."""
    s = _server(tmp_path_factory, "drain")
    box = {}
    texts = [f"{TEXT * 10} ({i})" for i in range(64)]  # ~10k tokens: several seconds of work on 2 cores
    worker = threading.Thread(target=lambda: box.setdefault("r", _post(s, {"texts": texts}, key=None)))
    worker.start()
    time.sleep(1.0)
    s.proc.send_signal(sig)
    worker.join(120)
    assert box["r"].status_code == 200 and len(box["r"].json()["results"]) == 64
    assert s.proc.wait(60) in (0, -sig, 128 + sig)  # uvicorn re-raises the signal after draining
    s.log.close()
    log = s.log_path.read_text()
    assert "Application shutdown complete" in log and "Exception ignored" not in log, log[-3000:]


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
    assert len(box) == 4  # every request came back
    codes = sorted(r.status_code for r in box.values())
    assert codes.count(200) >= 2 and codes.count(503) >= 1 and set(codes) <= {200, 503}, codes
    assert all(r.headers["retry-after"] == "1" for r in box.values() if r.status_code == 503)
    assert all(len(r.json()["results"]) == 2 for r in box.values() if r.status_code == 200)  # none half-run
    assert _post(s, body, key=None, path="/classify/cvss").status_code == 200  # capacity came back


def test_engine_killed_mid_request_fails_it_turns_unready_then_exits_4(cvss_small):
    from service.exceptions import EXIT_ENGINE_DEAD

    s = cvss_small
    try:
        box: dict[str, httpx.Response] = {}
        body = {
            "descriptions": [
                f"A heap overflow in the image parser ({i}) allows code execution. " * 12 for i in range(4)
            ]
        }
        worker = threading.Thread(target=lambda: box.setdefault("r", _post(s, body, key=None, path="/classify/cvss")))
        worker.start()
        time.sleep(1.0)  # the request is in the engine
        for child in psutil.Process(s.proc.pid).children(recursive=True):  # the vLLM engine processes
            child.kill()
        worker.join(60)
        assert box["r"].status_code == 503, box["r"].text  # the request in flight fails, it does not hang
        deadline = time.time() + 30
        while time.time() < deadline and httpx.get(s.url + "/readyz").status_code == 200:
            time.sleep(0.2)
        assert httpx.get(s.url + "/readyz").status_code == 503
        t = time.perf_counter()
        r = httpx.post(s.url + "/classify/cvss", json={"description": "buffer overflow"}, timeout=30)
        assert r.status_code == 503 and time.perf_counter() - t < 10
        assert "not ready" in r.json()["detail"] and "vllm" not in r.text.lower()  # no engine internals
        assert s.proc.wait(60) == EXIT_ENGINE_DEAD  # its own exit code, so the supervisor restarts it
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
