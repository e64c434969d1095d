"""Training losses that match what the service reads."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def allowed_value_logits(
    hidden: torch.Tensor, out_weight: torch.Tensor, allowed: Sequence[Sequence[int]]
) -> list[torch.Tensor]:
    """Per answer position j, the logits of metric j's allowed value tokens only: [B, n_values_j].

    `hidden` is [B, n_positions, H], the states that predict each answer token; `out_weight` is the
    LM head ([vocab, H]). Projecting onto the few allowed rows skips the 49k-way vocabulary product.
    """
    return [hidden[:, j] @ out_weight[list(ids)].T for j, ids in enumerate(allowed)]


def allowed_value_cross_entropy(logits: Sequence[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Mean over metrics and rows of -log softmax(allowed logits)[true value].

    This is the loss of the distribution the service returns: vLLM's grammar masks every token but
    the allowed values, and the service reads the softmax over what is left. `targets` is [B, n_metrics]
    holding each true value's index within its metric's allowed list.
    """
    losses = [torch.nn.functional.cross_entropy(lg.float(), targets[:, j]) for j, lg in enumerate(logits)]
    return torch.stack(losses).mean()
