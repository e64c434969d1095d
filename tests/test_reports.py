"""Whole reports, fast tier: extraction, segmentation, aggregation, the exports' formats and the report route's
HTTP behaviour with the fake ATT&CK model (tests/fakes.py). What the real model answers is in test_service.py."""

from __future__ import annotations

import asyncio
import io
import json
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from fpdf import FPDF
from stix2validator import ValidationOptions, validate_parsed_json

from service.app import create_app
from service.report.extraction import extract, sniff
from service.settings import Settings
from tests.conftest import DEFAULT_ATTACK, REPO
from tests.fakes import FAKES
from training.artifact.aggregating import aggregate, techniques
from training.artifact.segmenting import is_prose, paragraphs, units

FIXTURES = REPO / "tests" / "fixtures" / "reports"
TEXT = (FIXTURES / "lazarus-style.txt").read_text()
HTML = (FIXTURES / "lazarus-style.html").read_bytes()
ROUTE = "/classify/attack/report"


def make_pdf(text: str, pages: int = 1, encrypt: bool = False) -> bytes:
    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for _ in range(pages):
        pdf.add_page()
        for para in text.strip().split("\n\n"):
            pdf.multi_cell(0, 6, para)
            pdf.ln(4)
    if encrypt:
        pdf.set_encryption(owner_password="owner", user_password="user")
    return bytes(pdf.output())


def bomb_pdf(megabytes: int) -> bytes:
    """A valid one-page PDF whose content stream inflates to `megabytes` MB of spaces (compressed ~1000x)."""
    z = zlib.compressobj(9)
    chunk = b" " * (1 << 20)
    stream = b"".join(z.compress(chunk) for _ in range(megabytes)) + z.flush()
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out, offsets = io.BytesIO(), []
    out.write(b"%PDF-1.4\n")
    for i, body in enumerate(objs, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % i + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % o for o in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref))
    return out.getvalue()


def prose_sentences(text: str) -> list[str]:
    return [text[u.start : u.end] for u in units(text, 0, True)]


# -- extraction and segmentation (no model) ------------------------------------------------------------
def test_a_report_as_text_as_a_web_page_and_as_a_pdf_gives_the_same_sentences():
    s = Settings()
    html = asyncio.run(extract(HTML, s))
    pdf = asyncio.run(extract(make_pdf(TEXT), s))
    assert (html.kind, pdf.kind, pdf.pages) == ("html", "pdf", 1)
    expected = prose_sentences(TEXT)
    assert len(expected) == 12
    assert prose_sentences(html.text) == expected
    assert prose_sentences(pdf.text) == expected
    # and each sentence has the same neighbours (paragraphs too survive extraction), so reads the same context
    with_context = [u.text for u in units(TEXT, 1, True)]
    assert [u.text for u in units(html.text, 1, True)] == with_context
    assert [u.text for u in units(pdf.text, 1, True)] == with_context
    # the page's navigation, cookie banner, scripts, sidebar and footer are not in the text
    for chrome in ("Customer login", "cookies", "dataLayer", "Related posts", "newsletter", "All rights reserved"):
        assert chrome not in html.text


def test_kind_comes_from_the_content_not_a_name():
    assert sniff(make_pdf("One sentence here.")) == "pdf"
    assert sniff(HTML) == "html"
    assert sniff(b"  \n<!-- saved page --><p>hi</p>") == "html"
    assert sniff(TEXT.encode()) == "text"
    assert sniff(b"<b>bold</b> claims in plain text") == "html"
    assert sniff(b"<beware> is not a tag we know") == "text"


def test_sentences_keep_abbreviations_offsets_and_paragraphs():
    text = (
        "Intro heading\n\nThe actor ran cmd.exe via e.g. PowerShell v2.0 on 10.0.0.1 today. It then used U.S. servers."
    )
    sents = units(text, 0, False)
    assert [text[u.start : u.end] for u in sents] == [
        "Intro heading",
        "The actor ran cmd.exe via e.g. PowerShell v2.0 on 10.0.0.1 today.",
        "It then used U.S. servers.",
    ]
    assert [u.paragraph for u in sents] == [0, 1, 1]
    # context reads the neighbours within the paragraph only; the evidence span stays the sentence
    ctx = units(text, 1, False)
    assert ctx[1].text == text[sents[1].start : sents[2].end] and (ctx[1].start, ctx[1].end) == (
        sents[1].start,
        sents[1].end,
    )
    assert ctx[0].text == "Intro heading"
    assert paragraphs("a\n \n\nb") == [(0, 1), (5, 6)]


def test_ioc_lists_urls_and_short_headings_are_not_prose():
    assert is_prose("They dumped credentials from LSASS memory with Mimikatz.")
    for line in (
        "185.220.101.47",
        "winupd.dll 3f2b8c1d9e7a6b5c4d3e2f1a0b9c8d7e",
        "hxxps://evil[.]net/api/v2",
        "Summary",
    ):
        assert not is_prose(line)


# -- aggregation ----------------------------------------------------------------------------------------
def test_aggregation_max_and_noisy_or_with_evidence_best_first():
    probs = np.array([[0.5, 0.1, 0.0], [0.5, 0.3, 0.2], [0.2, 0.0, 0.6]])
    assert aggregate(probs, "max").tolist() == [0.5, 0.3, 0.6]
    assert np.allclose(aggregate(probs, "noisy_or"), [1 - 0.5 * 0.5 * 0.8, 1 - 0.9 * 0.7, 1 - 0.8 * 0.4])
    # scores 0.8, 0.37, 0.68: the 0.5 threshold keeps techniques 0 then 2
    found = techniques(probs, "noisy_or", 0.5, top_evidence=2)
    assert [f.label for f in found] == [0, 2] and found[0].evidence == [(0, 0.5), (1, 0.5)]
    assert found[1].evidence == [(2, 0.6), (1, 0.2)]
    with pytest.raises(ValueError):
        aggregate(probs, "mean")


# -- the route (fake model) -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(base_model):
    settings = Settings(
        cvss_artifact=None, attack_artifact=DEFAULT_ATTACK, report_max_bytes=2_000_000, report_max_pages=20
    )
    with TestClient(create_app(settings, model_classes=FAKES)) as c:
        yield c


def test_report_answer_contract(client):
    r = client.post(ROUTE, json={"text": TEXT, "min_score": 0.02, "top_evidence": 2, "include_text": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["segments"] == 12 and body["truncated"] is False and body["document"]["kind"] == "text"
    assert body["text"] == TEXT and body["min_score"] == 0.02
    found = body["techniques"]
    assert found, "the fake model's noise must clear a 0.02 threshold somewhere"
    scores = [t["score"] for t in found]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.02
    for t in found:
        assert 1 <= len(t["evidence"]) <= 2 and t["tactics"] and t["name"]
        probs = [e["probability"] for e in t["evidence"]]
        assert probs == sorted(probs, reverse=True)
        if body["aggregation"] == "max":
            assert t["score"] == pytest.approx(probs[0])
        for e in t["evidence"]:
            assert TEXT[e["start"] : e["end"]] == e["text"]
    # a lower threshold only adds techniques
    more = client.post(ROUTE, json={"text": TEXT, "min_score": 0.01}).json()["techniques"]
    assert {t["technique_id"] for t in found} < {t["technique_id"] for t in more}


def test_upload_options_come_as_form_fields(client):
    r = client.post(
        ROUTE,
        files={"file": ("report.bin", HTML, "application/octet-stream")},
        data={"min_score": "0.02", "top_evidence": "1"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["document"]["kind"] == "html"
    assert all(len(t["evidence"]) == 1 for t in r.json()["techniques"])
    r = client.post(ROUTE, files={"file": ("r.txt", TEXT.encode())}, data={"colour": "red"})
    assert r.status_code == 422 and "colour" in r.text
    r = client.post(ROUTE, files={"file": ("r.txt", TEXT.encode())}, data={"top_evidence": "many"})
    assert r.status_code == 422 and "top_evidence" in r.text


@pytest.mark.parametrize(
    ("send", "status", "message"),
    [
        ({"json": {"text": "   "}}, 422, "must contain text"),
        ({"json": {"text": TEXT, "html": "<p>x</p>"}}, 422, "exactly one of"),
        ({"json": {"html": "<html><script>alert(1)</script><nav>Home</nav></html>"}}, 422, "no readable main text"),
        ({"files": {"file": ("x.pdf", b"")}}, 422, "empty"),
        ({"files": {"file": ("x.pdf", b"%PDF-1.7\n1 0 obj broken")}}, 422, "PDF"),
        ({"files": {"file": ("x.pdf", make_pdf(TEXT, encrypt=True))}}, 422, "encrypted"),
        ({"files": {"file": ("x.pdf", make_pdf("Page.", pages=21))}}, 413, "21 pages"),
        ({"files": {"file": ("x.pdf", bomb_pdf(1200))}}, 422, "pdf"),
        ({"files": {"file": ("report.pdf", b"\x89PNG\r\n\x1a\n" + bytes(200))}}, 415, "image/png"),
        ({"files": {"file": ("x.zip", b"PK\x03\x04" + bytes(200))}}, 415, "zip"),
        ({"files": {"file": ("x.txt", b"\xff\xfe\xfd not utf-8 \xc3")}}, 415, "UTF-8"),
        ({"files": {"file": ("x.txt", b"a" * 2_000_001)}}, 413, "limit"),
        ({"content": b"plain body", "headers": {"content-type": "text/plain"}}, 415, "multipart/form-data"),
        ({"files": {"other": ("x.txt", b"hello there")}}, 422, "'file' part"),
    ],
    ids=[
        "blank",
        "text-and-html",
        "html-without-text",
        "empty-file",
        "corrupt-pdf",
        "encrypted-pdf",
        "too-many-pages",
        "decompression-bomb",
        "image",
        "zip",
        "not-utf8",
        "over-size",
        "raw-body",
        "no-file-part",
    ],
)
def test_bad_documents_are_4xx_with_a_message_and_the_service_stays_ready(client, send, status, message):
    r = client.post(ROUTE, **send)
    assert r.status_code == status, r.text
    assert message.lower() in json.dumps(r.json()).lower()
    assert client.get("/readyz").status_code == 200
    assert client.post(ROUTE, json={"text": "The actor used PowerShell to run the payload."}).status_code == 200


def test_a_report_past_the_segment_limit_is_cut_and_says_so(base_model):
    settings = Settings(cvss_artifact=None, attack_artifact=DEFAULT_ATTACK, report_max_segments=5)
    with TestClient(create_app(settings, model_classes=FAKES)) as c:
        body = c.post(ROUTE, json={"text": TEXT, "min_score": 0.01}).json()
    assert body["truncated"] is True and body["segments"] == 5
    fifth_end = units(TEXT, 0, True)[4].end
    assert all(e["end"] <= fifth_end for t in body["techniques"] for e in t["evidence"])


def test_extraction_past_its_time_bound_is_a_422(base_model):
    settings = Settings(cvss_artifact=None, attack_artifact=DEFAULT_ATTACK, report_extract_timeout_s=0.001)
    with TestClient(create_app(settings, model_classes=FAKES)) as c:
        r = c.post(ROUTE, files={"file": ("x.html", HTML)})
        assert r.status_code == 422 and "took over" in r.json()["detail"]
        assert c.post(ROUTE, json={"text": TEXT}).status_code == 200  # plain text needs no worker


# -- exports --------------------------------------------------------------------------------------------
# ATT&CK Navigator layer format 4.5 (mitre-attack/attack-navigator layers/spec/v4.5/layerformat.md): the
# required fields and the types of every field we write
LAYER_TYPES = {
    "name": str,
    "versions": dict,
    "domain": str,
    "description": str,
    "sorting": int,
    "layout": dict,
    "hideDisabled": bool,
    "techniques": list,
    "gradient": dict,
    "legendItems": list,
    "showTacticRowBackground": bool,
    "tacticRowBackground": str,
    "selectTechniquesAcrossTactics": bool,
    "selectSubtechniquesWithParent": bool,
    "selectVisibleTechniques": bool,
    "metadata": list,
}
TECHNIQUE_TYPES = {
    "techniqueID": str,
    "score": (int, float),
    "comment": str,
    "enabled": bool,
    "metadata": list,
    "showSubtechniques": bool,
}


def test_navigator_layer_has_the_4_5_format(client):
    body = {"text": TEXT, "min_score": 0.02}
    layer = client.post(ROUTE, json={**body, "format": "navigator"}).json()
    report = client.post(ROUTE, json=body).json()
    assert {"name", "domain", "versions"} <= set(layer)
    for key, kind in LAYER_TYPES.items():
        assert isinstance(layer[key], kind), key
    assert layer["domain"] == "enterprise-attack" and layer["versions"]["layer"] == "4.5"
    assert tuple(map(int, layer["versions"]["navigator"].split("."))) >= (4, 9, 0)
    assert layer["versions"]["attack"] == "18"  # the artifact's catalogue: ATT&CK v18.1
    grad = layer["gradient"]
    assert len(grad["colors"]) >= 2 and grad["minValue"] < grad["maxValue"]
    assert all(c.startswith("#") and len(c) == 7 for c in grad["colors"])
    assert layer["sorting"] in (0, 1, 2, 3)
    for m in layer["metadata"]:
        assert set(m) == {"name", "value"} and all(isinstance(v, str) for v in m.values())
    assert {"name": "report sha256", "value": report["text_sha256"]} in layer["metadata"]
    assert any(report["model"]["version"] in m["value"] for m in layer["metadata"])
    assert [t["techniqueID"] for t in layer["techniques"]] == [t["technique_id"] for t in report["techniques"]]
    for t, r in zip(layer["techniques"], report["techniques"], strict=True):
        for key, kind in TECHNIQUE_TYPES.items():
            assert isinstance(t[key], kind), key
        assert t["score"] == pytest.approx(100 * r["score"], abs=0.05)
        assert r["evidence"][0]["text"][:40] in t["comment"]
        assert grad["minValue"] <= t["score"] <= grad["maxValue"]


def test_stix_bundle_passes_the_validator_and_references_attack(client):
    r = client.post(ROUTE, json={"text": TEXT, "min_score": 0.02, "format": "stix"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/stix+json")
    bundle = r.json()
    result = validate_parsed_json(bundle, ValidationOptions(version="2.1"))
    assert result.is_valid and not result.errors, [str(e) for e in result.errors]
    by_type: dict[str, list] = {}
    for obj in bundle["objects"]:
        by_type.setdefault(obj["type"], []).append(obj)
    (report,) = by_type["report"]
    patterns = {p["id"]: p for p in by_type["attack-pattern"]}
    assert set(report["object_refs"]) == set(patterns)
    expected = client.post(ROUTE, json={"text": TEXT, "min_score": 0.02}).json()["techniques"]
    refs = {p["external_references"][0]["external_id"]: p for p in patterns.values()}
    assert set(refs) == {t["technique_id"] for t in expected}
    manifest = json.loads((DEFAULT_ATTACK / "manifest.json").read_text())
    stix_ids = {t["id"]: t["stix_id"] for t in manifest["labels"]["techniques"]}
    for tid, p in refs.items():
        ref = p["external_references"][0]
        assert ref["source_name"] == "mitre-attack" and ref["url"] == f"https://attack.mitre.org/techniques/{tid}/"
        assert p["id"] == stix_ids[tid]  # MITRE's own object id: platforms merge it with the ATT&CK collection
    notes = by_type["note"]
    assert len(notes) == len(expected)
    for note in notes:
        assert report["id"] in note["object_refs"] and any(ref in patterns for ref in note["object_refs"])


def test_report_command_help_names_its_formats():
    from tests.conftest import run_module

    r = run_module("service.report", "--help")
    assert r.returncode == 0 and "--format" in r.stdout and "navigator" in r.stdout
    r = run_module("service.report", str(FIXTURES / "missing.pdf"), "--out", "/tmp/x")
    assert r.returncode == 2 and "no such file" in r.stderr
