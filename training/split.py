"""Deterministic, leak-free validation splits: by CVE for CVSS, by threat group for ATT&CK."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from training.data import AttackExample, CvssExample


def _unit(key: str, seed: int) -> float:
    return int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16) / 16**12


def split_cvss(
    examples: Sequence[CvssExample], n_validation: int, seed: int
) -> tuple[list[CvssExample], list[CvssExample]]:
    """Hold out `n_validation` whole CVEs (one row per CVE after loading), chosen by a seeded hash."""
    ranked = sorted(examples, key=lambda e: _unit(e.cve_id, seed))
    return ranked[n_validation:], ranked[:n_validation]


def split_attack(
    examples: Sequence[AttackExample], validation_groups: Sequence[str]
) -> tuple[list[AttackExample], list[AttackExample]]:
    """Hold out every item of the named threat groups (reports of one group are near-duplicates)."""
    val = set(validation_groups)
    known = {e.group for e in examples}
    missing = val - known
    if missing:
        raise ValueError(f"validation group(s) {sorted(missing)} not in the data; groups: {sorted(known)}")
    return [e for e in examples if e.group not in val], [e for e in examples if e.group in val]
