"""The rank-scaled LoRA forward computes PEFT's outputs and gradients to the last bit, so training with it
follows the same trajectory; it leaves PEFT's forward wherever that would not hold."""

from __future__ import annotations

import pytest
import torch

from training.fitting.lora_forward import use_rank_scaled_lora
from training.fitting.trainer import TrainConfig, lora_config

TARGETS = TrainConfig().target_modules  # every linear layer of a decoder block


def _model(base_model, alpha: int = 32, r: int = 16, layers: int = 2):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    cfg = TrainConfig(lora_layers=layers, lora_r=r, lora_alpha=alpha, lora_dropout=0.0)
    model = get_peft_model(model, lora_config(cfg, "CAUSAL_LM", model.config.num_hidden_layers))
    with torch.no_grad():  # a trained-looking adapter: B is zero at initialisation
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    return model


def _forward_backward(model, ids: torch.Tensor, mask: torch.Tensor):
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids, attention_mask=mask).logits
    logits[:, -9:].float().logsumexp(-1).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return logits.detach(), grads


def test_same_outputs_and_gradients_as_peft(base_model):
    model = _model(base_model).train()
    torch.manual_seed(1)
    ids = torch.randint(10, 5000, (3, 40))
    mask = torch.ones_like(ids)
    mask[0, :12] = 0  # a left-padded row
    assert use_rank_scaled_lora(model, enable=False) == 0
    peft_logits, peft_grads = _forward_backward(model, ids, mask)
    assert use_rank_scaled_lora(model) == 2 * len(TARGETS)  # every adapted linear layer of the top 2
    ours_logits, ours_grads = _forward_backward(model, ids, mask)
    assert torch.equal(ours_logits, peft_logits)
    assert peft_grads.keys() == ours_grads.keys() and len(ours_grads) == 2 * len(TARGETS) * 2
    for n, g in peft_grads.items():
        assert g.abs().sum() > 0, n  # the adapter is on the loss's path
        assert torch.equal(ours_grads[n], g), n


@pytest.mark.parametrize(("alpha", "r", "eligible"), [(32, 16, True), (8, 16, True), (24, 16, False), (16, 12, False)])
def test_only_exact_scalings_take_the_rank_scaled_forward(base_model, alpha, r, eligible):
    # alpha / r = 2 and 0.5 are powers of two (exact to move); 1.5 and 4/3 would round differently
    model = _model(base_model, alpha=alpha, r=r, layers=1)
    assert use_rank_scaled_lora(model) == (len(TARGETS) if eligible else 0)


def test_merged_adapter_falls_back_to_peft(base_model):
    """Merged into the base weights, the adapter must not be added a second time."""
    model = _model(base_model).eval()
    ids = torch.randint(10, 5000, (2, 16))
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        assert (unmerged - base).abs().max() > 1e-2  # the adapter moves the logits: adding it twice would show
        use_rank_scaled_lora(model)
        model.merge_adapter()
        merged = model(input_ids=ids).logits
    assert torch.allclose(merged, unmerged, atol=1e-4), (merged - unmerged).abs().max()
