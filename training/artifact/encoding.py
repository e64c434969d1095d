"""From text to the token ids a model saw in training, and from value probabilities to calibrated ones:
one code path for training, evaluation and serving."""

from __future__ import annotations

import math

from training.artifact.manifest import CvssLabels, Manifest
from training.artifact.prompting import truncate


def cvss_value_token_ids(tokenizer, labels: CvssLabels) -> list[list[int]]:
    """Per metric, the token id of `separator + answer` for each allowed value (each must be one token)."""
    out = []
    for m in labels.metrics:
        ids = []
        for v in m.values:
            text = labels.separator + m.answer(v)
            toks = tokenizer.encode(text, add_special_tokens=False)
            if len(toks) != 1:
                raise ValueError(f"tokenizer splits {text!r} into {toks}; answer format needs 1 token")
            ids.append(toks[0])
        if len(set(ids)) != len(ids):
            raise ValueError(f"{m.key}: two values share one answer token")
        out.append(ids)
    return out


def sharpen(probs: dict[str, float], temperature: float) -> dict[str, float]:
    """softmax(log p / T) over one metric's allowed values: temperature scaling applied to probabilities
    (the service reads probabilities from vLLM, evaluation computes them from logits; both go through this)."""
    if temperature == 1.0:
        return dict(probs)
    logs = {v: math.log(p) / temperature for v, p in probs.items() if p > 0}
    top = max(logs.values())
    exp = {v: math.exp(lg - top) for v, lg in logs.items()}
    total = sum(exp.values())
    return {v: exp.get(v, 0.0) / total for v in probs}


def render(tokenizer, manifest: Manifest, text: str) -> tuple[str, bool]:
    cut, truncated = truncate(tokenizer, text, manifest.max_input_tokens)
    return manifest.render_prompt(cut), truncated


def encode_prompt(tokenizer, manifest: Manifest, text: str) -> tuple[list[int], bool]:
    """The prompt's token ids as training encodes them (no special tokens: no BOS drift on Llama-3)."""
    prompt, truncated = render(tokenizer, manifest, text)
    return tokenizer.encode(prompt, add_special_tokens=False), truncated
