"""Train only the top decoder layers on cached inputs: the frozen layers below run once, not every epoch.

With LoRA on the top N of L layers, layers 0..L-N-1 never change during training, so their output
for a given token sequence is a constant. `frozen_prefix_states` computes it once per example
(unpadded, positions 0..len-1); `top_layers` then runs the model from that point. Llama's RoPE makes
attention depend on relative positions only, so batches padded on the left give the same result as
the full model on each example alone (checked in tests/test_layer_cache.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch


def decoder(model) -> torch.nn.Module:
    """The decoder stack (`LlamaModel`) inside a causal-LM / sequence-classification model, PEFT-wrapped or not."""
    m = model
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    return m.model


@contextlib.contextmanager
def _swapped(dec: torch.nn.Module, layers: Sequence[torch.nn.Module], norm: torch.nn.Module) -> Iterator[None]:
    old_layers, old_norm, old_n = dec.layers, dec.norm, dec.config.num_hidden_layers
    dec.layers, dec.norm = torch.nn.ModuleList(layers), norm
    dec.config.num_hidden_layers = len(layers)
    try:
        yield
    finally:
        dec.layers, dec.norm = old_layers, old_norm
        dec.config.num_hidden_layers = old_n


def frozen_layer_count(model, n_trained: int) -> int:
    """How many bottom layers stay frozen when only the top `n_trained` are adapted (0 = all adapted)."""
    total = len(decoder(model).layers)
    return total - n_trained if 0 < n_trained < total else 0


@torch.inference_mode()
def frozen_prefix_states(
    model, rows: Sequence[Sequence[int]], n_frozen: int, batch_size: int = 16
) -> list[torch.Tensor]:
    """Per row of token ids, the hidden states entering layer `n_frozen`: a [len, hidden] fp32 tensor.

    Rows are run in length-sorted batches, padded on the right (pads after a row cannot change its
    states under a causal mask), and cut back to their own length.
    """
    dec = decoder(model)
    device = next(dec.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out: list[torch.Tensor | None] = [None] * len(rows)
    pad = dec.config.pad_token_id or 0
    with _swapped(dec, list(dec.layers)[:n_frozen], torch.nn.Identity()):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            n = max(len(rows[i]) for i in idx)
            ids = torch.full((len(idx), n), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), n), dtype=torch.long)
            for j, i in enumerate(idx):
                ids[j, : len(rows[i])] = torch.tensor(rows[i])
                mask[j, : len(rows[i])] = 1
            if n_frozen == 0:
                states = dec.embed_tokens(ids.to(device))
            else:
                states = dec(
                    input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
                ).last_hidden_state
            for j, i in enumerate(idx):
                out[i] = states[j, : len(rows[i])].float().cpu().clone()
    return out  # type: ignore[return-value]


def pad_states(states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad cached states into a batch: (inputs_embeds [B, T, H], attention_mask [B, T]).

    Left padding puts every row's last token at position -1 (the answer end for CVSS, the pooled
    token for ATT&CK)."""
    n = max(s.shape[0] for s in states)
    h = states[0].shape[1]
    embeds = torch.zeros((len(states), n, h), dtype=states[0].dtype)
    mask = torch.zeros((len(states), n), dtype=torch.long)
    for i, s in enumerate(states):
        embeds[i, n - s.shape[0] :] = s
        mask[i, n - s.shape[0] :] = 1
    return embeds, mask


def top_hidden(model, n_frozen: int, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Final-norm hidden states from cached inputs, running only layers `n_frozen`.. (with their LoRA)."""
    dec = decoder(model)
    with _swapped(dec, list(dec.layers)[n_frozen:], dec.norm):
        return dec(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
