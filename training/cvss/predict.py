"""CVSS inference with transformers, for evaluation and training's validation: the decoder the service runs
in vLLM (grammar, prior correction, temperature), step by step."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from training.artifact.encoding import cvss_value_token_ids, encode_batch, render, sharpen
from training.artifact.manifest import CvssLabels, Manifest


@torch.inference_mode()
def predict_cvss(
    model, tokenizer, manifest: Manifest, texts: Sequence[str], batch_size: int = 16
) -> list[dict[str, dict[str, float]]]:
    """Greedy decoding restricted at each step to the metric's allowed values (as vLLM's grammar does).

    Returns, per text, metric -> value -> probability (softmax over the allowed values only, shifted by
    the manifest's prior correction as the service's logits processor shifts them, conditioned on the
    greedy choices before it, scaled by the manifest's temperature).
    """
    labels = manifest.labels
    assert isinstance(labels, CvssLabels)
    allowed = cvss_value_token_ids(tokenizer, labels)
    device = next(model.parameters()).device
    shifts = [
        torch.tensor(
            manifest.prior_correction.bias(m.key, list(m.values))
            if manifest.prior_correction
            else [0.0] * len(m.values),
            device=device,
        )
        for m in labels.metrics
    ]
    results: list[dict[str, dict[str, float]]] = []
    for start in range(0, len(texts), batch_size):
        prompts = [render(tokenizer, manifest, t)[0] for t in texts[start : start + batch_size]]
        enc = encode_batch(tokenizer, prompts, "left").to(device)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        # the LM head at the last position only: over every prompt position it was ~1/5 of the pass
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        past, logits = out.past_key_values, out.logits[:, -1, :]
        probs_per_metric = []
        for step, metric_ids in enumerate(allowed):
            sub = torch.log_softmax(logits[:, metric_ids].float() + shifts[step], dim=-1).exp()
            probs_per_metric.append(sub.cpu())
            if step == len(allowed) - 1:
                break
            chosen = torch.tensor(metric_ids, device=device)[sub.argmax(-1).to(device)].unsqueeze(1)
            mask = torch.cat([mask, torch.ones_like(chosen)], dim=1)
            pos = pos[:, -1:] + 1
            out = model(input_ids=chosen, attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[:, -1, :]
        for i in range(len(prompts)):
            results.append(
                {
                    m.key: sharpen(
                        {v: float(p) for v, p in zip(m.values, probs_per_metric[k][i].tolist(), strict=True)},
                        manifest.temperature,
                    )
                    for k, m in enumerate(labels.metrics)
                }
            )
    return results
