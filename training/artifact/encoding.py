"""From text to the token ids a model saw in training, and from value probabilities to calibrated ones:
one code path for training, evaluation and serving."""

from __future__ import annotations

import math

from training.artifact.manifest import ArtifactError, CvssLabels, Manifest
from training.artifact.prompting import PLAIN_TEXT, truncate


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
    """The prompt's token ids as training encodes them: no BOS (no drift on Llama-3) and the user's text as
    plain text (a control token written in it is not one)."""
    prompt, truncated = render(tokenizer, manifest, text)
    return tokenizer.encode(prompt, **PLAIN_TEXT), truncated


def encode_batch(tokenizer, prompts: list[str], padding_side: str):
    """Rendered prompts as one padded batch of tensors, encoded as `encode_prompt` encodes one."""
    tokenizer.padding_side = padding_side
    return tokenizer(prompts, return_tensors="pt", padding=True, **PLAIN_TEXT)


def check_template(tokenizer, manifest: Manifest) -> None:
    """Prompts are encoded with special tokens split (PLAIN_TEXT): a template holding one would lose it."""
    found = [t for t in tokenizer.all_special_tokens if t and t in manifest.prompt_template]
    if found:
        raise ArtifactError(
            f"{manifest.name}: the prompt template holds special tokens {found}; prompts are "
            "encoded as plain text, so it cannot"
        )
