"""One loader per data source; each returns validated examples or raises DataError naming file and row."""

from __future__ import annotations

from pathlib import Path

from training.data.common import AttackExample, CvssExample, DataError
from training.data.cti_hal import load_cti_hal
from training.data.cti_vsp import load_cti_vsp
from training.data.nvd import load_nvd

__all__ = ["AttackExample", "CvssExample", "DataError", "load_cti_hal", "load_cvss", "load_cti_vsp", "load_nvd"]


def load_cvss(paths: list[Path]) -> list[CvssExample]:
    """CVSS examples from CTI-VSP `.tsv` files and/or NVD CVE API 2.0 `.json` files (or folders of them)."""
    out: list[CvssExample] = []
    for path in paths:
        path = Path(path)
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        files = [f for f in files if f.suffix.lower() in {".tsv", ".json"}]
        if not files:
            raise DataError(f"{path}: no .tsv (CTI-VSP) or .json (NVD) files found")
        for f in files:
            out.extend(load_cti_vsp(f) if f.suffix.lower() == ".tsv" else load_nvd(f))
    seen: dict[str, CvssExample] = {}
    for ex in out:  # one row per CVE: later sources override earlier ones
        seen[ex.cve_id] = ex
    return list(seen.values())
