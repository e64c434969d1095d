"""The same training command starts from the same weights in every process.

Torch seeds each new process at random, so an adapter (or head) drawn without seeding first makes
`make train-defaults` train a different model every time it runs."""

from __future__ import annotations

from dataclasses import replace

import torch

from training.attack import _fresh_model as fresh_attack_model
from training.cvss import fresh_model as fresh_cvss_model
from training.trainer import TrainConfig

CFG = TrainConfig(lora_layers=2, seed=5)


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cvss_adapter_is_drawn_from_the_seed(base_model):
    first = _trainable(fresh_cvss_model(str(base_model), 0, CFG))
    torch.rand(1000)  # the process's random state moves on, as it does between two runs
    again = _trainable(fresh_cvss_model(str(base_model), 0, CFG))
    other = _trainable(fresh_cvss_model(str(base_model), 0, replace(CFG, seed=6)))
    assert any("lora_A" in k for k in first)
    assert _same(first, again)
    assert not _same(first, other)


def test_attack_adapter_and_head_are_drawn_from_the_seed(base_model):
    first = _trainable(fresh_attack_model(str(base_model), 7, 0, CFG))
    torch.rand(1000)
    again = _trainable(fresh_attack_model(str(base_model), 7, 0, CFG))
    other = _trainable(fresh_attack_model(str(base_model), 7, 0, replace(CFG, seed=6)))
    assert any(k.endswith("score.weight") for k in first) and any("lora_A" in k for k in first)
    assert _same(first, again)
    assert not _same(first, other)
