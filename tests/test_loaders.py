"""Data loaders: well-formed input parses; malformed input stops with a message naming file and row."""

from __future__ import annotations

import json

import pytest

from training.attack.catalogue import catalogue
from training.data import DataError, load_cti_hal, load_cti_vsp, load_cvss, load_nvd

HEADER = "URL\tDescription\tPrompt\tGT\n"
ROW = (
    "https://nvd.nist.gov/vuln/detail/CVE-2024-0001\tSQL injection in login.\tp\t"
    "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H\n"
)


def test_cti_vsp_well_formed(tmp_path):
    f = tmp_path / "a.tsv"
    f.write_text(HEADER + ROW)
    [ex] = load_cti_vsp(f)
    assert ex.cve_id == "CVE-2024-0001"
    assert ex.values == {"AV": "N", "AC": "L", "PR": "N", "UI": "N", "S": "U", "C": "H", "I": "H", "A": "H"}


def test_cti_vsp_missing_column(tmp_path):
    f = tmp_path / "a.tsv"
    f.write_text("URL\tDescription\n" + "x\ty\n")
    with pytest.raises(DataError, match=r"a\.tsv: missing column\(s\) \['GT'\]"):
        load_cti_vsp(f)


@pytest.mark.parametrize(
    "vector, why",
    [("CVSS:3.1/AV:X/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "invalid CVSS vector"), ("AV:N", "not a CVSS v3 vector")],
)
def test_cti_vsp_bad_vector_names_row(tmp_path, vector, why):
    f = tmp_path / "b.tsv"
    f.write_text(
        HEADER + ROW + ROW.replace("0001", "0002").replace("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", vector)
    )
    with pytest.raises(DataError, match=rf"b\.tsv:3: {why}"):
        load_cti_vsp(f)


def test_cti_vsp_empty_description(tmp_path):
    f = tmp_path / "c.tsv"
    f.write_text(HEADER + ROW.replace("SQL injection in login.", " "))
    with pytest.raises(DataError, match=r"c\.tsv:2: empty Description"):
        load_cti_vsp(f)


def _nvd(vector="CVSS:3.1/AV:L/AC:H/PR:L/UI:R/S:C/C:L/I:N/A:N", desc="Heap overflow in foo."):
    return {
        "vulnerabilities": [
            {
                "cve": {
                    "id": "CVE-2023-1234",
                    "descriptions": [{"lang": "en", "value": desc}],
                    "metrics": {"cvssMetricV31": [{"type": "Primary", "cvssData": {"vectorString": vector}}]},
                }
            },
            {"cve": {"id": "CVE-2023-9999", "descriptions": [{"lang": "en", "value": "v2 only"}], "metrics": {}}},
        ]
    }


def test_nvd_well_formed(tmp_path):
    f = tmp_path / "nvd.json"
    f.write_text(json.dumps(_nvd()))
    [ex] = load_nvd(f)  # the CVE without a v3.1 score is skipped, not guessed
    assert (ex.cve_id, ex.values["S"], ex.values["UI"]) == ("CVE-2023-1234", "C", "R")
    assert load_cvss([tmp_path])[0].cve_id == "CVE-2023-1234"


def test_nvd_bad_vector_and_bad_json(tmp_path):
    f = tmp_path / "nvd.json"
    f.write_text(json.dumps(_nvd(vector="CVSS:3.1/AV:N")))
    with pytest.raises(DataError, match=r"nvd\.json: vulnerabilities\[0\] \(CVE-2023-1234\): invalid CVSS vector"):
        load_nvd(f)
    f.write_text("{not json")
    with pytest.raises(DataError, match=r"nvd\.json: not a readable JSON file"):
        load_nvd(f)
    f.write_text(json.dumps({"CVE_Items": []}))
    with pytest.raises(DataError, match="not NVD CVE API 2.0 JSON"):
        load_nvd(f)


def _hal(tmp_path, items, name="REPORT.json"):
    d = tmp_path / "grp"
    d.mkdir(exist_ok=True)
    (d / name).write_text(json.dumps(items))
    return tmp_path


def test_cti_hal_remaps_and_skips_unlabelled(tmp_path):
    root = _hal(
        tmp_path,
        [
            {"context": "used powershell", "technique": "T1059", "metadata": {}},
            {"context": "spearphishing link", "technique": "T1566.002", "metadata": {}},
            {"context": "old id", "technique": "T1086", "metadata": {}},  # revoked -> T1059
            {"context": "", "technique": "T1059", "metadata": {}},
            {"context": "no label", "technique": None, "metadata": {}},
        ],
    )
    examples, dropped = load_cti_hal(root, catalogue().remap)
    assert [e.technique for e in examples] == ["T1059", "T1566", "T1059"]
    assert {e.group for e in examples} == {"grp"} and not dropped


def test_cti_hal_malformed(tmp_path):
    root = _hal(tmp_path, [{"context": "x", "technique": "1036", "metadata": {}}])
    examples, dropped = load_cti_hal(root, catalogue().remap)
    assert examples == [] and dropped == {"malformed:1036": 1}
    with pytest.raises(DataError, match=r"REPORT\.json: item 0: technique '1036'"):
        load_cti_hal(root, catalogue().remap, strict=True)
    (root / "grp" / "BAD.json").write_text("[{")
    with pytest.raises(DataError, match=r"BAD\.json: not a readable JSON file"):
        load_cti_hal(root, catalogue().remap)
    (root / "grp" / "BAD.json").write_text(json.dumps([{"text": "no context key"}]))
    with pytest.raises(DataError, match=r"BAD\.json: item 0: expected an object with 'context'"):
        load_cti_hal(root, catalogue().remap)


def test_real_data_loads(cti_vsp, cti_hal):
    cvss = load_cvss([cti_vsp])
    assert len(cvss) == len({e.cve_id for e in cvss}) >= 700
    attack, dropped = load_cti_hal(cti_hal, catalogue().remap)
    assert len(attack) > 1300 and {e.group for e in attack} >= {"apt29", "carbanak", "fin7"}
    assert all("." not in e.technique for e in attack)
