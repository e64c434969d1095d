"""Example types shared by the loaders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cvss import CVSS3
from cvss.exceptions import CVSSError

BASE_METRICS = ("AV", "AC", "PR", "UI", "S", "C", "I", "A")


class DataError(ValueError):
    """Malformed input data; the message names the file and the row."""


@dataclass(frozen=True)
class CvssExample:
    cve_id: str
    description: str
    vector: str  # CVSS:3.1/AV:../...
    source: str

    @property
    def values(self) -> dict[str, str]:
        parts = dict(p.split(":", 1) for p in self.vector.split("/")[1:])
        return {m: parts[m] for m in BASE_METRICS}


@dataclass(frozen=True)
class AttackExample:
    text: str
    technique: str  # top-level technique id after remapping
    group: str  # threat group (split unit)
    report: str  # report file (finer split unit)
    source: str
    related_groups: tuple[str, ...] = ()  # other groups it may come from (catalogue procedures): never
    # trained on while one of them is held out
    rationale: str = ""  # the annotator's reason for the label (CTI-HAL `metadata.description`), if any

    def trains_without(self, held: Sequence[str]) -> bool:
        """Whether a model validated on the `held` groups may train on this row."""
        return self.group not in held and not any(g in held for g in self.related_groups)


def parse_cvss31_vector(raw: str, where: str) -> str:
    """Validate with the `cvss` library and return the canonical 8-metric base vector."""
    raw = (raw or "").strip()
    if not raw.startswith("CVSS:3."):
        raise DataError(f"{where}: not a CVSS v3 vector: {raw!r}")
    try:
        c = CVSS3(raw)
    except CVSSError as e:
        raise DataError(f"{where}: invalid CVSS vector {raw!r}: {e}") from e
    return "CVSS:3.1/" + "/".join(f"{m}:{c.metrics[m]}" for m in BASE_METRICS)
