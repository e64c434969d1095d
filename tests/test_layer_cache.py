"""Training on cached inputs of the lowest adapted layer computes what the full model computes."""

from __future__ import annotations

import pytest
import torch

from training.fitting.layer_cache import frozen_layer_count, frozen_prefix_states, pad_states, top_hidden
from training.fitting.trainer import TrainConfig, lora_config, score_head

TEXTS = [
    "SQL injection in the login form allows remote attackers to run arbitrary SQL commands.",
    "The actor dumped LSASS memory.",
    "A crafted PDF triggers a heap overflow in the parser when a user opens it, leading to code execution.",
]


def _lora(model, n_layers: int):
    from peft import get_peft_model

    cfg = TrainConfig(lora_layers=n_layers)
    model = get_peft_model(model, lora_config(cfg, None, model.config.num_hidden_layers))
    torch.manual_seed(1)
    with torch.no_grad():  # a trained-looking adapter: B is zero at initialisation
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer(base_model):
    from training.artifact.loading import load_tokenizer

    return load_tokenizer(str(base_model))


def test_cached_top_layers_match_full_causal_lm(base_model, tokenizer):
    from transformers import AutoModelForCausalLM

    model = _lora(AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32), 4)
    n_frozen = frozen_layer_count(model, 4)
    assert n_frozen == model.config.num_hidden_layers - 4
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in TEXTS]
    states = frozen_prefix_states(model, ids, n_frozen, batch_size=2)
    assert [s.shape[0] for s in states] == [len(i) for i in ids]
    embeds, mask = pad_states(states)  # left-padded batch of different lengths
    with torch.no_grad():
        cached = top_hidden(model, n_frozen, embeds, mask) @ model.get_output_embeddings().weight.T
        for row, i in enumerate(ids):
            full = model(input_ids=torch.tensor([i])).logits[0]
            got = cached[row, -len(i) :]
            assert torch.allclose(got, full, atol=2e-3, rtol=1e-4), (got - full).abs().max()
    assert len(model.get_base_model().model.layers) == model.config.num_hidden_layers  # swap restored


def test_cached_top_layers_match_full_classifier(base_model, tokenizer):
    from training.artifact.loading import new_sequence_classifier

    model = new_sequence_classifier(str(base_model), 7, tokenizer.pad_token_id, torch.float32)
    model = _lora(model, 3)
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in TEXTS]
    n_frozen = frozen_layer_count(model, 3)
    embeds, mask = pad_states(frozen_prefix_states(model, ids, n_frozen))
    with torch.no_grad():
        cached = score_head(model)(top_hidden(model, n_frozen, embeds, mask)[:, -1])
        for row, i in enumerate(ids):
            full = model(input_ids=torch.tensor([i])).logits[0]
            assert torch.allclose(cached[row], full, atol=1e-3, rtol=1e-4), (cached[row] - full).abs().max()
