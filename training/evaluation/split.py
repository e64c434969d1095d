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


class SplitError(ValueError):
    """The requested held-out groups or folds do not fit the threat groups in the data."""


def split_attack(
    examples: Sequence[AttackExample], validation_groups: Sequence[str]
) -> tuple[list[AttackExample], list[AttackExample]]:
    """Hold out every item of the named threat groups (reports of one group are near-duplicates)."""
    val = set(validation_groups)
    known = {e.group for e in examples}
    missing = val - known
    if missing:
        raise SplitError(f"validation group(s) {sorted(missing)} not in the data; groups: {sorted(known)}")
    return [e for e in examples if e.group not in val], [e for e in examples if e.group in val]


def group_k_folds(examples: Sequence[AttackExample], k: int) -> list[tuple[str, ...]]:
    """Partition the threat groups into `k` folds of similar item counts (largest group first, each
    into the fold with fewest items; ties by name), so every group is held out exactly once.
    `k` = 0: one fold per group (leave-one-group-out), whatever the number of groups."""
    sizes: dict[str, int] = {}
    for e in examples:
        sizes[e.group] = sizes.get(e.group, 0) + 1
    k = k or len(sizes)
    if not 2 <= k <= len(sizes):
        raise SplitError(f"need 2 <= folds <= {len(sizes)} groups (or 0: one per group); got {k}")
    folds: list[list[str]] = [[] for _ in range(k)]
    totals = [0] * k
    for g in sorted(sizes, key=lambda g: (-sizes[g], g)):
        i = min(range(k), key=lambda j: (totals[j], j))
        folds[i].append(g)
        totals[i] += sizes[g]
    return [tuple(sorted(f)) for f in folds]


def calibration_halves(ids: Sequence[str]) -> list[int]:
    """0 or 1 per id, by a fixed hash: the two halves a calibration is cross-fitted over (the same
    halves whichever order the rows come in, so training and `evaluate` report the same figure)."""
    return [int(_unit(i, 0) * 2) for i in ids]
