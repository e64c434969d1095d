"""NVD CVE API 2.0 JSON (`{"vulnerabilities": [{"cve": {...}}]}`), as served by the API and its feeds."""

from __future__ import annotations

import json
from pathlib import Path

from training.data.common import CvssExample, DataError, parse_cvss31_vector


def load_nvd(path: Path) -> list[CvssExample]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable JSON file: {e}") from e
    vulns = doc.get("vulnerabilities") if isinstance(doc, dict) else None
    if not isinstance(vulns, list):
        raise DataError(f"{path}: not NVD CVE API 2.0 JSON (no 'vulnerabilities' list)")
    out = []
    for i, item in enumerate(vulns):
        where = f"{path}: vulnerabilities[{i}]"
        cve = item.get("cve") if isinstance(item, dict) else None
        if not isinstance(cve, dict) or not cve.get("id"):
            raise DataError(f"{where}: no 'cve.id'")
        where = f"{where} ({cve['id']})"
        desc = next((d.get("value", "") for d in cve.get("descriptions", []) if d.get("lang") == "en"), "")
        metrics = (cve.get("metrics") or {}).get("cvssMetricV31") or []
        if not metrics:
            continue  # no v3.1 score (rejected, awaiting analysis, v2 only): nothing to learn from
        if not desc.strip():
            raise DataError(f"{where}: no English description")
        primary = next((m for m in metrics if m.get("type") == "Primary"), metrics[0])
        vector = (primary.get("cvssData") or {}).get("vectorString", "")
        out.append(CvssExample(cve["id"], desc.strip(), parse_cvss31_vector(vector, where), path.name))
    return out
