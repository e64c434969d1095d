"""`python -m service.batch` on the real engine: a SIGKILL half way and a resume give every id exactly once,
in input order, each line equal to what the HTTP service answers for the same request, from the eager
engine before the kill and the compiled one after it."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from service.batch import line_id
from tests.conftest import REPO
from training.data import load_cvss

pytestmark = pytest.mark.slow
N = 160  # several engine batches (max_num_seqs 64), so a kill can land between written lines


def _requests(cti_vsp) -> list[dict]:
    rows = load_cvss([cti_vsp])[:N]
    reqs = [
        {"custom_id": e.cve_id, "method": "POST", "url": "/classify/cvss", "body": {"description": e.description}}
        for e in rows
    ]
    record = json.loads((REPO / "tests" / "fixtures" / "records" / "cve5" / "CVE-2024-90011.json").read_text())
    reqs.insert(N // 2, {"custom_id": "record", "method": "POST", "url": "/classify/cvss", "body": {"record": record}})
    reqs.insert(3, {"custom_id": "empty", "method": "POST", "url": "/classify/cvss", "body": {"description": " "}})
    reqs.insert(5, {"custom_id": "nowhere", "method": "POST", "url": "/classify/nothing", "body": {}})
    return reqs


def _command(src, out) -> list[str]:
    return [sys.executable, "-m", "service.batch", str(src), str(out), "--no-progress"]


def _close(a, b, path="") -> None:
    """Equal JSON, floats to 1e-4 (the engine batches differently from one HTTP request to the next)."""
    if isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, abs_tol=1e-4), (path, a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), (path, a.keys(), b.keys())
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def test_killed_and_resumed_batch_answers_every_id_once_as_the_service_does(tmp_path, cti_vsp, client):
    reqs = _requests(cti_vsp)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in reqs))
    env = {**os.environ, "SECCLF_NO_PROGRESS": "1"}
    proc = subprocess.Popen(_command(src, out), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        written = out.read_bytes().count(b"\n") if out.exists() else 0
        if written >= len(reqs) // 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the batch ended before it could be killed half way"
    engines = psutil.Process(proc.pid).children(recursive=True)
    assert any("VLLM" in " ".join(p.cmdline()) or p.name().startswith("VLLM") for p in engines), engines
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, alive = psutil.wait_procs(engines, timeout=30)  # the reaper takes the engine processes down too
    assert not alive, f"engine processes outlived the killed batch: {alive}"
    killed_at = out.read_bytes().count(b"\n")
    assert 0 < killed_at < len(reqs)
    with out.open("ab") as f:  # what a kill inside a write would leave: a cut-off last line
        f.write(b'{"id":"batch-cut","custom_id":"' + reqs[killed_at]["custom_id"].encode())

    # the resume compiles its engine (what a feed of 400+ texts gets): its answers must be the service's too
    resume = [*_command(src, out), "--compile", "on"]
    done = subprocess.run(resume, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{killed_at} already in" in done.stderr
    assert "engines compiled" in done.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["custom_id"] for x in lines] == [r["custom_id"] for r in reqs]  # each once, in input order
    assert all(x["id"] == line_id(x["custom_id"]) for x in lines)
    assert f"{len(reqs)} lines: error 404 1, error 422 1, ok {len(reqs) - 2}" in done.stdout

    plain = [
        (r, x)
        for r, x in zip(reqs, lines, strict=True)
        if "description" in r["body"] and r["body"]["description"].strip()
    ]
    for start in range(0, len(plain), 64):  # the service's answers, 64 descriptions a request
        chunk = plain[start : start + 64]
        http = client.post("/classify/cvss", json={"descriptions": [r["body"]["description"] for r, _ in chunk]})
        assert http.status_code == 200, http.text
        for (req, line), expected in zip(chunk, http.json()["results"], strict=True):
            assert line["response"]["status_code"] == 200 and line["error"] is None, req["custom_id"]
            _close(line["response"]["body"], expected, req["custom_id"])
    for req, line in zip(reqs, lines, strict=True):
        if req["custom_id"] in {"record", "empty"}:
            http = client.post("/classify/cvss", json=req["body"])
            assert line["response"]["status_code"] == http.status_code
            _close(line["response"]["body"], http.json(), req["custom_id"])
        elif req["custom_id"] == "nowhere":
            assert line["response"]["status_code"] == 404 and line["error"]["code"] == 404
