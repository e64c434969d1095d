"""The out-of-sample scores an artifact keeps (`HELDOUT_FILE`): what its temperature and conformal
thresholds were fitted on, so both can be refitted and audited without re-running the model.

ATT&CK: raw out-of-fold logits [n, techniques], targets and each row's held-out group.
CVSS: raw (T = 1) log-probabilities over each metric's allowed values on the validation CVEs, and targets.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from training.artifact.layout import HELDOUT_FILE


@dataclass(frozen=True)
class AttackHeldout:
    logits: np.ndarray
    targets: np.ndarray
    groups: np.ndarray  # group name per row


@dataclass(frozen=True)
class CvssHeldout:
    logprobs: dict[str, np.ndarray]  # metric key -> [n, allowed values], manifest order
    targets: dict[str, np.ndarray]  # metric key -> value index per row
    ids: list[str]  # CVE ids


def cvss_heldout(
    probs: Sequence[dict[str, dict[str, float]]],
    truth: Sequence[dict[str, str]],
    ids: Sequence[str],
    values: dict[str, list[str]],
) -> CvssHeldout:
    """From per-row metric -> value -> probability (uncalibrated, T = 1) and the true values."""
    logprobs, targets = {}, {}
    for k, vals in values.items():
        p = np.array([[row[k][v] for v in vals] for row in probs], dtype=np.float64)
        logprobs[k] = np.log(np.maximum(p, 1e-12))
        targets[k] = np.array([vals.index(t[k]) for t in truth], dtype=np.int64)
    return CvssHeldout(logprobs=logprobs, targets=targets, ids=list(ids))


def save(folder: Path, held: AttackHeldout | CvssHeldout) -> None:
    path = str(Path(folder) / HELDOUT_FILE)
    if isinstance(held, CvssHeldout):
        tensors = {f"logprobs.{k}": lp.astype(np.float32) for k, lp in held.logprobs.items()}
        tensors.update({f"targets.{k}": t.astype(np.int64) for k, t in held.targets.items()})
        save_file(tensors, path, metadata={"task": "cvss", "ids": json.dumps(held.ids)})
        return
    names = sorted(set(held.groups.tolist()))
    save_file(
        {
            "logits": np.ascontiguousarray(held.logits, dtype=np.float32),
            "targets": held.targets.astype(np.int64),
            "groups": np.array([names.index(g) for g in held.groups.tolist()], dtype=np.int64),
        },
        path,
        metadata={"task": "attack", "groups": json.dumps(names)},
    )


def load(artifact: Path) -> AttackHeldout | CvssHeldout | None:
    path = Path(artifact) / HELDOUT_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), "np") as fh:
        meta = fh.metadata() or {}
    t = load_file(str(path))
    if meta.get("task") == "cvss":
        keys = [k.split(".", 1)[1] for k in t if k.startswith("logprobs.")]
        return CvssHeldout(
            logprobs={k: t[f"logprobs.{k}"].astype(np.float64) for k in keys},
            targets={k: t[f"targets.{k}"] for k in keys},
            ids=json.loads(meta["ids"]),
        )
    names = np.array(json.loads(meta["groups"]))
    return AttackHeldout(logits=t["logits"].astype(np.float64), targets=t["targets"], groups=names[t["groups"]])
