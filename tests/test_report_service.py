"""Whole reports on the real service (vLLM CPU engine + the committed ATT&CK artifact): the same techniques
and scores from a report's text, its web page and its PDF; report scores that are the served sentence
probabilities; the report command (in process) answering what the route answers."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from service.report.pipeline import segment
from tests.conftest import DEFAULT_ATTACK, run_module
from tests.test_reports import HTML, TEXT, make_pdf
from training.artifact.aggregating import aggregate
from training.artifact.manifest import ReportPipeline, load_manifest

pytestmark = pytest.mark.slow
ROUTE = "/classify/attack/report"
MIN_SCORE = 0.05  # low enough that the small model reports several techniques for the fixture


def _techniques(body: dict) -> dict[str, float]:
    return {t["technique_id"]: t["score"] for t in body["techniques"]}


@pytest.fixture(scope="module")
def as_text(service) -> dict:
    r = httpx.post(service.url + ROUTE, json={"text": TEXT, "min_score": MIN_SCORE, "top_evidence": 3}, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def test_text_web_page_and_pdf_give_the_same_techniques_and_scores(client, as_text):
    expected = _techniques(as_text)
    assert len(expected) >= 2
    page = client.post(ROUTE, files={"file": ("page", HTML)}, data={"min_score": str(MIN_SCORE)})
    pdf = client.post(ROUTE, files={"file": ("doc", make_pdf(TEXT))}, data={"min_score": str(MIN_SCORE)})
    for r, kind in ((page, "html"), (pdf, "pdf")):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["document"]["kind"] == kind and body["segments"] == as_text["segments"]
        got = _techniques(body)
        assert list(got) == list(expected), kind
        for tid, score in got.items():
            assert score == pytest.approx(expected[tid], abs=1e-4), (kind, tid)


def test_report_scores_are_the_served_sentence_probabilities(client, as_text):
    """Each evidence probability is what /classify/attack serves for that unit, and the score is the
    manifest's aggregation over every unit (bounded from the served top 50 of each unit)."""
    manifest = load_manifest(DEFAULT_ATTACK)
    pipeline = manifest.report or ReportPipeline()
    units, _ = segment(TEXT, pipeline, 10**6)
    r = client.post("/classify/attack", json={"texts": [u.text for u in units], "top_k": 50})
    assert r.status_code == 200, r.text
    served = [{p["technique_id"]: p["probability"] for p in res["predictions"]} for res in r.json()["results"]]
    by_span = {(u.start, u.end): i for i, u in enumerate(units)}
    floor = [min(s.values()) for s in served]  # a technique outside a unit's top 50 is at most this
    for t in as_text["techniques"]:
        tid = t["technique_id"]
        low = np.array([[s.get(tid, 0.0)] for s in served])
        high = np.array([[s.get(tid, f)] for s, f in zip(served, floor, strict=True)])
        lo, hi = (float(aggregate(x, pipeline.aggregation)[0]) for x in (low, high))
        assert lo - 1e-4 <= t["score"] <= hi + 1e-4, (tid, lo, t["score"], hi)
        for e in t["evidence"]:
            k = by_span[(e["start"], e["end"])]
            if tid in served[k]:
                assert e["probability"] == pytest.approx(served[k][tid], abs=1e-4)
            else:  # below that unit's 50th technique
                assert e["probability"] <= floor[k] + 1e-4


def test_report_command_writes_what_the_route_answers(tmp_path, client, as_text):
    src = tmp_path / "reports"
    src.mkdir()
    (src / "report.txt").write_text(TEXT)
    (src / "page.html").write_bytes(HTML)
    (src / "broken.pdf").write_bytes(b"%PDF-1.7 truncated")
    out = tmp_path / "out"
    r = run_module("service.report", str(src), "--out", str(out), "--min-score", str(MIN_SCORE), "--format", "json")
    assert r.returncode == 1, r.stderr[-2000:]  # one file failed, the others were written
    assert "broken.pdf" in r.stderr and "2 written" in r.stderr
    for name in ("report.txt", "page.html"):
        body = json.loads((out / f"{name}.json").read_text())
        assert list(_techniques(body)) == list(_techniques(as_text))
        for tid, score in _techniques(body).items():
            assert score == pytest.approx(_techniques(as_text)[tid], abs=1e-4)
    assert not (out / "broken.pdf.json").exists()
    # a second run resumes: nothing left but the failed file, and no engine starts for written ones
    r = run_module("service.report", str(src / "report.txt"), "--out", str(out))
    assert r.returncode == 0 and "0 to run" in r.stderr
