"""The same training command starts from the same weights in every process.

Torch seeds each new process at random, so an adapter (or head) drawn without seeding first makes
`make train-defaults` train a different model every time it runs."""

from __future__ import annotations

import json
from dataclasses import replace

import torch

from training.artifact_writer import save_adapter_16bit
from training.attack.train import fresh_model as fresh_attack_model
from training.cvss.train import fresh_model as fresh_cvss_model
from training.fitting.trainer import TrainConfig

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


def test_saved_adapter_config_lists_its_modules_in_one_order(base_model, tmp_path):
    # PEFT keeps target_modules as a set, iterated in the process's string-hash order
    save_adapter_16bit(fresh_cvss_model(str(base_model), 0, CFG), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(CFG.target_modules)
    assert config["task_type"] == "CAUSAL_LM"
