"""Pieces of a manifest common to both tasks, and saving adapters as 16-bit safetensors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from training.artifact.base_model import files_hash, resolve_base_model, revision_of, weights_hash
from training.artifact.layout import ADAPTER_FILE
from training.artifact.manifest import BaseModelRef, Manifest, TrainingData, library_versions, now_iso


def base_ref(base: str) -> BaseModelRef:
    """Record the base as given (repo-relative stays relative, so a fresh clone resolves it) plus its hash."""
    path = resolve_base_model(base)
    arch = None
    cfg = Path(path) / "config.json"
    if cfg.is_file():
        arch = (json.loads(cfg.read_text()).get("architectures") or [None])[0]
    return BaseModelRef(
        name_or_path=str(base),
        weights_sha256=weights_hash(path),
        files_sha256=files_hash(path),
        revision=revision_of(path),
        architecture=arch,
    )


def data_hash(rows: list[tuple]) -> str:
    h = hashlib.sha256()
    for r in sorted(rows):
        h.update(json.dumps(r, ensure_ascii=False).encode())
    return h.hexdigest()


def save_adapter_16bit(peft_model, out: Path, dtype: torch.dtype = torch.bfloat16) -> None:
    """PEFT's adapter files, with the weights cast to 16 bits (half the size; the service loads them in the
    engine's dtype)."""
    peft_model.save_pretrained(str(out), safe_serialization=True)
    f = out / ADAPTER_FILE
    tensors = {k: v.to(dtype).contiguous() for k, v in load_file(str(f)).items()}
    save_file(tensors, str(f), metadata={"format": "pt"})
    readme = out / "README.md"
    if readme.exists():
        readme.unlink()  # PEFT's model-card stub; the manifest is the documentation
    # PEFT writes target_modules from a set, in the process's string-hash order: sorted, the same run
    # writes the same bytes (and the same hash in the manifest).
    cfg_path = out / "adapter_config.json"
    config = json.loads(cfg_path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    cfg_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def new_version() -> dict[str, str]:
    """A manifest's `version` and `created_at`, stamped now: every change to what a model serves gets one."""
    stamp = now_iso()
    return {"version": stamp.replace(":", "").replace("-", ""), "created_at": stamp}


def draft_manifest(
    *,
    task: str,
    out: Path,
    name: str | None,
    base_model: str,
    prompt_template: str,
    max_input_tokens: int,
    labels,
    cfg,
    training_data: TrainingData,
    **hyperparameters,
) -> Manifest:
    """The manifest of a run before training (metrics, temperature and file hashes come later)."""
    return Manifest(
        name=name or Path(out).name,
        task=task,
        **new_version(),
        base_model=base_ref(base_model),
        prompt_template=prompt_template,
        max_input_tokens=max_input_tokens,
        labels=labels,
        hyperparameters={**cfg.__dict__, "target_modules": list(cfg.target_modules), **hyperparameters},
        training_data=training_data,
        library_versions=library_versions(),
    )
