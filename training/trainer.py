"""Hugging Face Trainer set-up shared by both tasks (so `accelerate launch`/`torchrun` scale it out)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer, TrainingArguments, set_seed


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 3.0
    learning_rate: float = 1e-3
    batch_size: int = 8
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    weight_decay: float = 0.0
    warmup: float = 0.05
    seed: int = 13
    max_steps: int = -1  # > 0 caps training (smoke tests)
    threads: int = 0  # 0: torch default
    lora_layers: int = 0  # adapt only the top N decoder layers (0: all); backward stops below them


class PadCollator:
    """Pads input_ids/attention_mask with the pad id on `side`; stacks labels (ints or equal-length lists).

    CVSS pads on the left so every row ends with its answer and the vocabulary projection is
    computed for the last positions only; RoPE makes the shifted positions harmless.
    """

    def __init__(self, pad_id: int, side: str = "right") -> None:
        self.pad_id, self.side = pad_id, side

    def __call__(self, feats: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n = max(len(f["input_ids"]) for f in feats)
        ids = torch.full((len(feats), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(feats), n), dtype=torch.long)
        for i, f in enumerate(feats):
            k = len(f["input_ids"])
            sl = slice(n - k, n) if self.side == "left" else slice(0, k)
            ids[i, sl] = torch.tensor(f["input_ids"])
            mask[i, sl] = 1
        labels = torch.tensor([f["labels"] for f in feats], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class AnswerOnlyTrainer(Trainer):
    """Causal-LM loss on the answer tokens only (the last `labels.shape[1]` positions, left-padded
    batches), projecting onto the vocabulary just there instead of at every position."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        k = labels.shape[1]
        out = model(**inputs, logits_to_keep=k + 1)
        logits = out.logits[:, :-1, :].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1))
        return (loss, out) if return_outputs else loss


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def lora_config(cfg: TrainConfig, task_type: str | None, num_layers: int):
    from peft import LoraConfig

    layers = list(range(num_layers - cfg.lora_layers, num_layers)) if 0 < cfg.lora_layers < num_layers else None
    return LoraConfig(
        layers_to_transform=layers,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        task_type=task_type,
    )


def train(
    model,
    rows: list[dict[str, Any]],
    pad_id: int,
    cfg: TrainConfig,
    workdir: str,
    trainer_cls: type[Trainer] = Trainer,
    padding_side: str = "right",
) -> dict[str, float]:
    """Run the Trainer over pre-tokenized rows; returns the final training stats."""
    set_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    use_cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=workdir,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup,
        logging_steps=10,
        logging_first_step=True,
        save_strategy="no",
        report_to=[],
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=not use_cuda,
        bf16=use_cuda and torch.cuda.is_bf16_supported(),
        train_sampling_strategy="group_by_length",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=os.environ.get("SECCLF_NO_PROGRESS") == "1",
    )
    trainer = trainer_cls(
        model=model, args=args, train_dataset=_ListDataset(rows), data_collator=PadCollator(pad_id, padding_side)
    )
    result = trainer.train()
    return {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}


def is_main_process() -> bool:
    """False on the other ranks of an `accelerate launch`/`torchrun` run: only rank 0 evaluates and writes."""
    from accelerate import PartialState

    return PartialState().is_main_process
