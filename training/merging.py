"""Fold a LoRA adapter into its base weights, cached on disk by (base hash, adapter hash).

vLLM's CPU LoRA path costs about 3x the base model's own time per token (measured in
`bench/cvss_tuning.py`); a merged model serves one adapter at the base model's speed. The merged
folder is written atomically and its weights hash is re-checked on every reuse.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from training.base_model import weights_hash
from training.manifest import ArtifactError, Manifest

log = logging.getLogger(__name__)
STAMP = "secclf-merged.json"


def merged_model_dir(base: str, artifact: Path, manifest: Manifest, cache_dir: Path) -> Path:
    """A safetensors model folder holding base + adapter, built once per (base, adapter) pair."""
    adapter_hash = manifest.files.get("adapter_model.safetensors")
    base_hash = weights_hash(base) or manifest.base_model.weights_sha256
    if not adapter_hash or not base_hash:
        raise ArtifactError(f"{artifact}: cannot key a merged model without base and adapter hashes")
    safe_name = re.sub(r"[^A-Za-z0-9_-]+", "_", manifest.name)[:64] or "model"  # one plain path component
    out = Path(cache_dir) / f"{safe_name}-{base_hash[:12]}-{adapter_hash[:12]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time: services starting together must not replace a folder another one is loading
    with (out.parent / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _cached_or_built(base, artifact, out, base_hash, adapter_hash)


@contextlib.contextmanager
def reading(cache_dir: Path) -> Iterator[None]:
    """Hold while an engine loads a cached folder: builders (exclusive lock) wait until it is loaded,
    so no folder is replaced under a reader."""
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with (Path(cache_dir) / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cached_or_built(base: str, artifact: Path, out: Path, base_hash: str, adapter_hash: str) -> Path:
    stamp = out / STAMP
    if stamp.is_file():
        try:
            recorded = json.loads(stamp.read_text())
        except ValueError:
            recorded = {}
        # Reused only if it was built from these very inputs (full hashes) and its weights are intact
        if (
            recorded.get("base_sha256") == base_hash
            and recorded.get("adapter_sha256") == adapter_hash
            and recorded.get("weights_sha256") == weights_hash(str(out))
        ):
            log.info("using cached merged model %s", out)
            return out
        log.warning("merged model %s does not match its inputs or its stamp; rebuilding", out)
    _build(base, artifact, out, {"base_sha256": base_hash, "adapter_sha256": adapter_hash})
    return out


def _build(base: str, artifact: Path, out: Path, stamp: dict) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=".merging-"))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            base, dtype=torch.float32, use_safetensors=True, trust_remote_code=False
        )
        model = PeftModel.from_pretrained(model, str(artifact)).merge_and_unload()
        model.save_pretrained(staging, safe_serialization=True)
        AutoTokenizer.from_pretrained(base, trust_remote_code=False).save_pretrained(staging)
        stamp["weights_sha256"] = weights_hash(str(staging))
        (staging / STAMP).write_text(json.dumps(stamp, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)  # atomic: a crash leaves only a .merging-* folder, never a half model
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.info("merged %s into %s -> %s", artifact, base, out)
