"""Fold an artifact into one plain safetensors checkpoint that vLLM loads, cached on disk by its inputs.

- CVSS: the LoRA adapter merged into the causal LM (vLLM's CPU LoRA path costs about 3x the base model's
  own time per token, measured in `bench/cvss_tuning.py`).
- ATT&CK: a `LlamaForSequenceClassification` (any `*ForSequenceClassification` of the base) with the LoRA
  merged and the trained `score` head divided by the calibration temperature, so the softmax vLLM's
  pooling runner returns is the calibrated probability; `id2label` holds the technique ids.

Both share one cache: a folder per (base hash, input hashes), written atomically, its weights hash re-checked
on every reuse, and a lock so no folder is replaced while an engine loads it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from training.artifact.base_model import files_hash, revision_of, weights_hash
from training.artifact.layout import ADAPTER_FILE, FOLD_STAMP, HEAD_FILE, readable_by_all
from training.artifact.manifest import ArtifactError, AttackLabels, Manifest

log = logging.getLogger(__name__)
LOCK = ".lock"


def folded_inputs(base: str, manifest: Manifest) -> dict:
    """What a folded checkpoint is built from: full hashes (and the temperature folded into a head)."""
    base_hash = weights_hash(base) or manifest.base_model.weights_sha256
    inputs = {"task": manifest.task, "base_sha256": base_hash, "adapter_sha256": manifest.files.get(ADAPTER_FILE)}
    if base_files := files_hash(base) or manifest.base_model.files_sha256:  # the fold copies its tokenizer
        inputs["base_files_sha256"] = base_files
    if revision_of(base):
        inputs["base_revision"] = revision_of(base)
    if manifest.task == "attack":
        inputs |= {"head_sha256": manifest.files.get(HEAD_FILE), "temperature": float(manifest.temperature)}
    missing = [k for k, v in inputs.items() if v is None]
    if missing:
        raise ArtifactError(f"{manifest.name}: cannot key a folded model without {missing}")
    return inputs


def folded_model_dir(base: str, artifact: Path, manifest: Manifest, cache_dir: Path) -> Path:
    """The folded checkpoint for this artifact on this base, built once and reused while it is intact."""
    inputs = folded_inputs(base, manifest)
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    safe_name = re.sub(r"[^A-Za-z0-9_-]+", "_", manifest.name)[:64] or "model"  # one plain path component
    out = Path(cache_dir) / f"{safe_name}-{inputs['base_sha256'][:12]}-{key[:12]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time: services starting together must not replace a folder another one is loading
    with (out.parent / LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _cached_or_built(base, Path(artifact), manifest, out, inputs)


@contextlib.contextmanager
def reading(cache_dir: Path) -> Iterator[None]:
    """Hold while an engine loads a cached folder: builders (exclusive lock) wait until it is loaded,
    so no folder is replaced under a reader."""
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with (Path(cache_dir) / LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cached_or_built(base: str, artifact: Path, manifest: Manifest, out: Path, inputs: dict) -> Path:
    stamp = out / FOLD_STAMP
    if stamp.is_file():
        try:
            recorded = json.loads(stamp.read_text())
        except ValueError:
            recorded = {}
        # Reused only if it was built from these very inputs and its weights are intact
        try:
            intact = recorded.get("weights_sha256") == weights_hash(str(out))
        except OSError:  # weights missing or unreadable: rebuild
            intact = False
        if recorded.get("inputs") == inputs and intact:
            log.info("using cached folded model %s", out.name)
            return out
        log.warning("folded model %s does not match its inputs or its stamp; rebuilding", out.name)
    _build(base, artifact, manifest, out, inputs)
    return out


def _fold(base: str, artifact: Path, manifest: Manifest):
    import torch

    if manifest.task == "cvss":
        from training.artifact.loading import load_causal_lm_with_adapter

        return load_causal_lm_with_adapter(artifact, base, torch.device("cpu"), torch.float32)
    from training.artifact.loading import load_attack_classifier, load_tokenizer

    assert isinstance(manifest.labels, AttackLabels)
    model = load_attack_classifier(
        artifact, manifest, base, load_tokenizer(base).pad_token_id, torch.device("cpu"), torch.float32
    )
    with torch.no_grad():  # softmax(W x / T): the calibrated probabilities, straight from the pooler
        model.score.weight.div_(float(manifest.temperature))
        if getattr(model.score, "bias", None) is not None:
            model.score.bias.div_(float(manifest.temperature))
    ids = [t.id for t in manifest.labels.techniques]
    model.config.id2label = dict(enumerate(ids))
    model.config.label2id = {t: i for i, t in enumerate(ids)}
    return model


def _build(base: str, artifact: Path, manifest: Manifest, out: Path, inputs: dict) -> None:
    from transformers import AutoTokenizer

    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=".folding-"))
    try:
        _fold(base, artifact, manifest).save_pretrained(staging, safe_serialization=True)
        AutoTokenizer.from_pretrained(base, revision=revision_of(base), trust_remote_code=False).save_pretrained(
            staging
        )
        stamp = {"inputs": inputs, "weights_sha256": weights_hash(str(staging))}
        (staging / FOLD_STAMP).write_text(json.dumps(stamp, indent=2))
        readable_by_all(staging)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)  # atomic: a crash leaves only a .folding-* folder, never a half model
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("folded %s into %s -> %s", Path(artifact).name, Path(base).name, out.name)
