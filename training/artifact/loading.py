"""Loading base models and artifacts with transformers/peft; shared by training, evaluation and the service.

Only safetensors are read (`use_safetensors=True`) and remote code is never trusted.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from training.artifact.base_model import files_hash, resolve_base_model, revision_of, weights_hash
from training.artifact.layout import HEAD_FILE
from training.artifact.manifest import ArtifactError, AttackLabels, Manifest


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_dtype(on_gpu: bool) -> str:
    """The one rule, for training, evaluation and both engines: bf16 on a GPU; fp32 on a CPU, where chips
    without bf16 units (AVX2) run bf16 about 2.9x slower (docs/benchmarks.md)."""
    return "bfloat16" if on_gpu else "float32"


def pick_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    return getattr(torch, default_dtype(device.type == "cuda") if dtype == "auto" else dtype)


def load_tokenizer(base: str):
    from transformers import AutoTokenizer

    base = resolve_base_model(base)
    tok = AutoTokenizer.from_pretrained(base, revision=revision_of(base), trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def base_for(manifest: Manifest, override: str | None = None, check_hash: bool = True) -> str:
    """The base model folder/id for an artifact; a local default is checked against its recorded hash."""
    base = resolve_base_model(override or manifest.base_model.name_or_path)
    if check_hash and override is None and Path(base).is_dir():
        recorded = manifest.base_model
        for what, want, got in (
            ("weights", recorded.weights_sha256, weights_hash),
            ("config and tokenizer files", recorded.files_sha256, files_hash),
        ):
            if want and (have := got(base)) != want:
                raise ArtifactError(
                    f"base model {base} does not match the artifact's hash of its {what} "
                    f"({have} != {want}); was it trained on another base?"
                )
    return base


def load_causal_lm_with_adapter(artifact: Path, base: str, device: torch.device, dtype: torch.dtype):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        base, revision=revision_of(base), dtype=dtype, use_safetensors=True, trust_remote_code=False
    )
    model = PeftModel.from_pretrained(model, str(artifact)).merge_and_unload()
    return model.to(device).eval()


def new_sequence_classifier(base: str, num_labels: int, pad_token_id: int, dtype: torch.dtype):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        revision=revision_of(base),
        num_labels=num_labels,
        dtype=dtype,
        use_safetensors=True,
        trust_remote_code=False,
    )
    model.config.pad_token_id = pad_token_id
    return model


def load_attack_classifier(
    artifact: Path, manifest: Manifest, base: str, pad_token_id: int, device: torch.device, dtype: torch.dtype
):
    """Base LM + merged LoRA + the trained `score` head from head.safetensors."""
    from peft import PeftModel

    assert isinstance(manifest.labels, AttackLabels)
    n = len(manifest.labels.techniques)
    model = new_sequence_classifier(base, n, pad_token_id, dtype)
    model = PeftModel.from_pretrained(model, str(artifact)).merge_and_unload()
    head = load_file(str(Path(artifact) / HEAD_FILE))
    if head["weight"].shape != model.score.weight.shape:
        raise ArtifactError(f"{artifact}: head shape {tuple(head['weight'].shape)} does not fit {n} labels")
    with torch.no_grad():
        model.score.weight.copy_(head["weight"].to(dtype))
    return model.to(device).eval()
