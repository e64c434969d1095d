"""CTI-VSP (CTIBench): tab-separated URL, Description, Prompt, GT."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from training.data.common import CvssExample, DataError, parse_cvss31_vector

REQUIRED = ("URL", "Description", "GT")
_CVE = re.compile(r"CVE-\d{4}-\d{4,}")


def load_cti_vsp(path: Path) -> list[CvssExample]:
    path = Path(path)
    try:
        fh = path.open(newline="", encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from e
    csv.field_size_limit(10**7)
    with fh:
        reader = csv.DictReader(fh, delimiter="\t")
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
        out = []
        try:
            for row_no, row in enumerate(reader, start=2):
                where = f"{path}:{row_no}"
                m = _CVE.search(row["URL"] or "")
                if not m:
                    raise DataError(f"{where}: no CVE id in URL {row['URL']!r}")
                desc = (row["Description"] or "").strip()
                if not desc:
                    raise DataError(f"{where}: empty Description")
                out.append(CvssExample(m.group(0), desc, parse_cvss31_vector(row["GT"], where), path.name))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text: {e}") from e
    if not out:
        raise DataError(f"{path}: no rows")
    return out
