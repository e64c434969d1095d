"""Hugging Face Trainer set-up shared by both tasks (so `accelerate launch`/`torchrun` scale it out).

Both tasks train on cached inputs to the lowest adapted layer (`training/fitting/layer_cache.py`): the
frozen layers below run once per example instead of once per example per epoch. Batches are
length-grouped and left-padded, so every row's last position is its prediction point.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from training.fitting.layer_cache import pad_states, top_hidden
from training.fitting.lora_forward import use_rank_scaled_lora
from training.fitting.losses import allowed_value_cross_entropy, allowed_value_logits

log = logging.getLogger(__name__)


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
    lora_layers: int = 0  # adapt only the top N decoder layers (0: all); the frozen ones below run once
    loss: str = "allowed"  # CVSS: "allowed" (softmax over the allowed values) or "vocab" (full vocabulary)
    label_smoothing: float = 0.0  # ATT&CK head loss
    select_best_epoch: bool = True  # keep the epoch that scores best on validation (when there is one)
    # candidate start epochs of a tail average of the weights (`training/fitting/weight_average.py`), chosen with the
    # epoch count on validation (ATT&CK: the out-of-fold logits); (): the live weights only
    average_from: tuple[int, ...] = ()

    @classmethod
    def from_hyperparameters(cls, hp: dict[str, Any]) -> TrainConfig:
        """The settings a manifest's `hyperparameters` recorded (its JSON lists back to tuples; other keys,
        such as the answer format, are not training settings)."""
        kw = {f.name: hp[f.name] for f in fields(cls) if f.name in hp}
        for k in ("target_modules", "average_from"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)


class StatesCollator:
    """Cached states -> left-padded `inputs_embeds` + `attention_mask`; labels stacked."""

    def __call__(self, feats: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        embeds, mask = pad_states([f["states"] for f in feats])
        labels = torch.tensor([f["labels"] for f in feats], dtype=torch.long)
        return {"inputs_embeds": embeds, "attention_mask": mask, "labels": labels}


class _StatesTrainer(Trainer):
    """Runs only the layers above `n_frozen` on cached states; subclasses turn the states into a loss."""

    def __init__(self, *args, n_frozen: int, **kw) -> None:
        super().__init__(*args, **kw)
        self.n_frozen = n_frozen

    def _hidden(self, model, inputs) -> torch.Tensor:
        return top_hidden(model, self.n_frozen, inputs["inputs_embeds"], inputs["attention_mask"])


class CvssTrainer(_StatesTrainer):
    """Loss on the 8 answer positions only. `allowed`: cross-entropy over each metric's allowed value
    tokens, the distribution the grammar-masked service reads; `vocab`: over the whole vocabulary."""

    def __init__(self, *args, allowed: Sequence[Sequence[int]], loss: str, **kw) -> None:
        super().__init__(*args, **kw)
        self.allowed, self.loss_kind = allowed, loss
        self.allowed_t = [torch.tensor(ids) for ids in allowed]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        targets = inputs["labels"]  # [B, 8] value index within each metric's allowed list
        k = targets.shape[1]
        hidden = self._hidden(model, inputs)[:, -(k + 1) : -1]  # the states that predict answer tokens 1..8
        weight = model.get_output_embeddings().weight
        if self.loss_kind == "allowed":
            loss = allowed_value_cross_entropy(allowed_value_logits(hidden, weight, self.allowed), targets)
        else:
            token_ids = torch.stack([self.allowed_t[j][targets[:, j]] for j in range(k)], dim=1)
            logits = (hidden @ weight.T).float()
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), token_ids.reshape(-1))
        return (loss, hidden) if return_outputs else loss


class AttackTrainer(_StatesTrainer):
    """Cross-entropy (optionally label-smoothed) of the `score` head on the last token's state."""

    def __init__(self, *args, label_smoothing: float = 0.0, **kw) -> None:
        super().__init__(*args, **kw)
        self.label_smoothing = label_smoothing

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = score_head(model)(self._hidden(model, inputs)[:, -1]).float()
        loss = torch.nn.functional.cross_entropy(logits, inputs["labels"], label_smoothing=self.label_smoothing)
        return (loss, logits) if return_outputs else loss


def score_head(model) -> torch.nn.Module:
    m = model.get_base_model() if hasattr(model, "get_base_model") else model
    return m.score


@torch.inference_mode()
def last_token_states(model, n_frozen: int, states: Sequence[torch.Tensor], batch_size: int = 16) -> torch.Tensor:
    """The final-norm state of each row's last token (what the `score` head reads; fp32, CPU), in order."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(states)), key=lambda i: states[i].shape[0])
    device = next(model.parameters()).device
    out = [None] * len(states)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        embeds, mask = pad_states([states[i] for i in idx])
        h = top_hidden(model, n_frozen, embeds.to(device), mask.to(device))[:, -1].float().cpu()
        for j, i in enumerate(idx):
            out[i] = h[j]
    model.train(was_training)
    return torch.stack(out) if out else torch.empty(0)


@torch.inference_mode()
def attack_logits_from_states(model, n_frozen: int, states: Sequence[torch.Tensor], batch_size: int = 16):
    """Raw head logits for cached states (fp32, CPU), in the order given."""
    head = score_head(model)
    h = last_token_states(model, n_frozen, states, batch_size)
    return head(h.to(head.weight.device, head.weight.dtype)).float().cpu() if len(h) else h


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def trainable_copy(model) -> dict[str, torch.Tensor]:
    """A detached copy of the weights training changes (LoRA factors, a trained head), by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model, weights: dict[str, torch.Tensor]) -> None:
    """Copy `weights` (a `trainable_copy`, or an average of them) into the model's parameters."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in weights.items():
            params[n].copy_(v.to(params[n].dtype))


class EpochEnd(TrainerCallback):
    """At each epoch end: call `evaluate(model, epoch, average_from)` (a dict with a 'score', higher is
    better; `average_from` 0: the live weights) and keep a copy of the trainable weights that scored best;
    stop after `stop_after` epochs. A `TailAverages` callback offers its averages through `consider`.

    The best weights are restored when training ends, so the artifact is the best candidate, not the last.
    Ties go to the candidate scored first: the earlier epoch, and at one epoch the live weights.
    """

    def __init__(
        self,
        evaluate: Callable[[Any, int, int], dict[str, Any]] | None = None,
        keep_best: bool = True,
        stop_after: int = 0,
    ) -> None:
        self.evaluate, self.keep_best, self.stop_after = evaluate, keep_best, stop_after
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, torch.Tensor] | None = None
        self.best_epoch = 0
        self.best_average_from = 0

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = max(1, round(state.epoch or 0))
        self.consider(model, epoch)
        if self.stop_after and epoch >= self.stop_after:
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        # A run capped by max_steps can end inside an epoch: score where it stopped, as a partial epoch.
        epoch = max(1, round(state.epoch or 0))
        if self.evaluate is not None and not any(h["epoch"] == epoch for h in self.history):
            self.consider(model, epoch)

    def consider(self, model, epoch: int, average_from: int = 0) -> None:
        """Score the model's current trainable weights as the candidate (`average_from`, `epoch`)."""
        if self.evaluate is None:
            return
        was_training = model.training
        model.eval()
        result = {"epoch": epoch, **self.evaluate(model, epoch, average_from)}
        if average_from:
            result["average_from"] = average_from
        model.train(was_training)
        self.history.append(result)
        log.info("epoch %d: %s", epoch, {k: v for k, v in result.items() if isinstance(v, (int, float))})
        if self.keep_best and (self.best is None or result["score"] > max(h["score"] for h in self.history[:-1])):
            self.best = trainable_copy(model)
            self.best_epoch, self.best_average_from = epoch, average_from

    def restore_best(self, model) -> int:
        """Load the best candidate's trainable weights into `model`; returns its epoch (0: nothing kept)."""
        if self.best is not None:
            load_trainable(model, self.best)
        return self.best_epoch


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


def with_lora(model, cfg: TrainConfig, task_type: str | None):
    """`model` wrapped with the LoRA adapters `cfg` describes, drawn from torch's current random state, each
    running the rank-scaled forward where it is exact (`training/fitting/lora_forward.py`)."""
    from peft import get_peft_model

    model = get_peft_model(model, lora_config(cfg, task_type, model.config.num_hidden_layers))
    use_rank_scaled_lora(model)
    return model


def train(
    model,
    rows: list[dict[str, Any]],
    cfg: TrainConfig,
    workdir: str,
    trainer_cls: type[Trainer],
    callbacks: Sequence[TrainerCallback] = (),
    collator=None,
    **trainer_kw,
) -> dict[str, float]:
    """Run the Trainer over rows of cached states (`states`, `labels`, `input_ids` for length grouping);
    another `collator` and `trainer_cls` pair trains on other rows (the benchmark's seed-method baseline)."""
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
        model=model,
        args=args,
        train_dataset=_ListDataset(rows),
        data_collator=collator or StatesCollator(),
        callbacks=list(callbacks),
        **trainer_kw,
    )
    result = trainer.train()
    return {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}


def is_main_process() -> bool:
    """False on the other ranks of an `accelerate launch`/`torchrun` run: only rank 0 evaluates and writes."""
    from accelerate import PartialState

    return PartialState().is_main_process
