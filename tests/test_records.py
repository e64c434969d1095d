"""CVE records (NVD API 2.0 items, CVE JSON 5 records) on /classify/cvss and in the batch command's reader:
fast tier, fake models (the comparison arithmetic is checked against the served probabilities)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from cvss import CVSS3
from fastapi.testclient import TestClient

from service.app import create_app
from service.batch import format_summary, read_items, summarize
from service.exceptions import InvalidInput
from service.records import parse_record
from service.settings import Settings
from tests.conftest import DEFAULT_CVSS, REPO
from tests.fakes import FAKES

FIXTURES = REPO / "tests" / "fixtures" / "records"
NVD = json.loads((FIXTURES / "nvd-2.0.json").read_text())["vulnerabilities"]


def _cve5(cve_id: str) -> dict:
    return json.loads((FIXTURES / "cve5" / f"{cve_id}.json").read_text())


@pytest.fixture(scope="module")
def client(base_model):
    settings = Settings(cvss_artifact=DEFAULT_CVSS, attack_artifact=None)
    with TestClient(create_app(settings, model_classes=FAKES)) as c:
        yield c


def test_nvd_item_description_and_every_vector_with_its_source():
    record = parse_record(NVD[0])
    assert record.cve_id == "CVE-2024-90001"
    assert record.description.startswith("A SQL injection vulnerability")  # the English one, not the Spanish
    got = [(r.source, r.organization, r.version, r.vector, r.base_score) for r in record.references]
    assert got == [
        ("NVD Primary", "nvd@nist.gov", "3.1", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8),
        ("NVD Secondary", "security@acme.example", "3.1", "CVSS:3.1/AV:N/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:N", 8.1),
        ("NVD Primary", "nvd@nist.gov", "2.0", "AV:N/AC:L/Au:N/C:P/I:P/A:P", 7.5),
    ]
    assert parse_record(NVD[4]).description.startswith("A use-after-free")  # lang "en-US"


def test_cve5_record_cna_and_adp_vectors_and_the_adp_description_as_fallback():
    record = parse_record(_cve5("CVE-2024-90011"))
    assert [(r.source, r.organization, r.vector) for r in record.references] == [
        ("CNA", "acme", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"),
        ("ADP", "CISA-ADP", "CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:H/A:H"),
    ]
    fallback = parse_record(_cve5("CVE-2024-90015"))  # the CNA wrote French only; CISA-ADP added English
    assert fallback.description.startswith("A use-after-free") and fallback.references[0].source == "ADP"


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (NVD[1], "record 3 (CVE-2024-90002): the NVD marks this CVE Rejected"),
        (NVD[2], "record 3 (CVE-2024-90003): no English description"),
        (_cve5("CVE-2024-90012"), "record 3 (CVE-2024-90012): the CVE record's state is REJECTED"),
        (_cve5("CVE-2024-90013"), "record 3 (CVE-2024-90013): no English description"),
        ({"id": "CVE-2024-1"}, "record 3: neither an NVD API 2.0 vulnerability item"),
    ],
)
def test_records_that_cannot_be_classified_name_their_index_and_reason(record, reason):
    with pytest.raises(InvalidInput) as e:
        parse_record(record, 3)
    assert str(e.value).startswith(reason)


def test_route_compares_the_model_with_each_v3_vector_from_the_served_probabilities(client):
    r = client.post("/classify/cvss", json={"record": _cve5("CVE-2024-90011")})
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["cve_id"] == "CVE-2024-90011"
    plain = client.post("/classify/cvss", json={"description": parse_record(_cve5("CVE-2024-90011")).description})
    assert plain.json()["vector"] == result["vector"]  # the record's English description is what is classified
    refs = result["reference_vectors"]
    assert [ref["source"] for ref in refs] == ["CNA", "ADP"]
    for ref in refs:
        ref_values = dict(p.split(":") for p in ref["vector"].split("/")[1:])
        agreement = ref["agreement"]
        for key, m in agreement["metrics"].items():
            served = result["metrics"][key]
            assert m["predicted"] == served["value"] and m["reference"] == ref_values[key]
            assert m["match"] == (served["value"] == ref_values[key])
            assert m["probability"] == served["probabilities"][ref_values[key]]
        assert agreement["matches"] == sum(m["match"] for m in agreement["metrics"].values())
        assert math.isclose(agreement["base_score_difference"], result["base_score"] - ref["base_score"], abs_tol=0.05)
    # the ADP's AC:H differs from the CNA's AC:L: exactly one of the two can match the model's AC
    assert refs[0]["agreement"]["metrics"]["AC"]["match"] != refs[1]["agreement"]["metrics"]["AC"]["match"]


def test_v2_and_v4_vectors_are_listed_but_not_compared(client):
    r = client.post("/classify/cvss", json={"records": [NVD[0], NVD[3]]})
    assert r.status_code == 200, r.text
    first, v4_only = r.json()["results"]
    assert [ref["version"] for ref in first["reference_vectors"]] == ["3.1", "3.1", "2.0"]
    assert "agreement" in first["reference_vectors"][0] and "agreement" not in first["reference_vectors"][2]
    assert [ref["version"] for ref in v4_only["reference_vectors"]] == ["4.0"]
    assert "agreement" not in v4_only["reference_vectors"][0]
    assert CVSS3(v4_only["vector"]).scores()[0] == v4_only["base_score"]  # still classified


def test_a_bad_record_in_a_batch_is_a_422_naming_its_index(client):
    r = client.post("/classify/cvss", json={"records": [NVD[0], NVD[1]]})
    assert r.status_code == 422
    assert r.json()["detail"] == "record 1 (CVE-2024-90002): the NVD marks this CVE Rejected"
    r = client.post("/classify/cvss", json={"record": NVD[0], "description": "also a description"})
    assert r.status_code == 422 and "give exactly one of" in r.text


def test_batch_reader_understands_nvd_files_cve5_folders_and_zips(tmp_path):
    nvd = read_items(FIXTURES / "nvd-2.0.json")
    assert [i.custom_id for i in nvd] == [f"CVE-2024-9000{n}" for n in range(1, 6)]
    assert all(i.url == "/classify/cvss" and "record" in i.body for i in nvd)
    folder = read_items(FIXTURES / "cve5")
    assert [i.custom_id for i in folder] == [f"CVE-2024-9001{n}" for n in range(1, 6)]
    zipped = read_items(Path(shutil.make_archive(str(tmp_path / "cvelist"), "zip", FIXTURES, "cve5")))
    assert [i.custom_id for i in zipped] == [i.custom_id for i in folder]
    assert [i.body for i in zipped] == [i.body for i in folder]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"custom_id": "a", "method": "POST", "url": "/classify/cvss", "body": {}}\nnot json\n')
    items = read_items(jsonl)
    assert items[0].custom_id == "a" and items[1].error[0] == 400 and "line 2" in items[1].error[1]["detail"]


def test_summary_counts_disagreement_per_source(tmp_path):
    def line(cid, refs, status=200):
        body = {"reference_vectors": refs} if status == 200 else {"detail": "x"}
        return json.dumps({"custom_id": cid, "response": {"status_code": status, "body": body}}) + "\n"

    def ref(source, org, matches: dict[str, bool], diff):
        metrics = {k: {"match": m} for k, m in matches.items()}
        agreement = {"metrics": metrics, "matches": sum(matches.values()), "base_score_difference": diff}
        return {"source": source, "organization": org, "agreement": agreement}

    out = tmp_path / "out.jsonl"
    out.write_text(
        line("1", [ref("CNA", "acme", {"AV": True, "AC": False}, 1.0), ref("ADP", "CISA-ADP", {"AV": True}, 0.0)])
        + line("2", [ref("CNA", "acme", {"AV": True, "AC": True}, -2.0)])
        + line("3", [], status=422)
    )
    summary = summarize(out)
    assert summary["outcomes"] == {"ok": 2, "error 422": 1}
    cna = summary["reference_sources"]["CNA"]
    assert cna["compared"] == 2 and cna["disagreement"] == {"AV": 0.0, "AC": 0.5, "vectors": 0.5}
    assert cna["mean_abs_base_score_difference"] == 1.5
    assert summary["reference_sources"]["ADP CISA-ADP"]["disagreement"]["vectors"] == 0.0
    assert "CNA" in format_summary(summary)
