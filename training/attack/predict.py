"""ATT&CK inference with transformers (evaluation, training's validation, the folding check): encoding and
raw logits, one code path."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from training.artifact.encoding import encode_batch, render
from training.artifact.manifest import Manifest


def encode_attack(tokenizer, manifest: Manifest, texts: Sequence[str]):
    """Tokenize with right padding (pads after the text, so a text's logits do not depend on its batch)."""
    rendered = [render(tokenizer, manifest, t) for t in texts]
    enc = encode_batch(tokenizer, [r[0] for r in rendered], "right")
    return enc, [r[1] for r in rendered]


@torch.inference_mode()
def attack_logits(model, tokenizer, manifest: Manifest, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """Raw (uncalibrated) logits over the label set, fp32 on CPU, one row per text."""
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(texts), batch_size):
        enc, _ = encode_attack(tokenizer, manifest, texts[start : start + batch_size])
        rows.append(model(**enc.to(device)).logits.float().cpu())
    return torch.cat(rows) if rows else torch.empty(0)
