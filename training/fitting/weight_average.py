"""Tail averages of the trainable weights (stochastic weight averaging over the last epochs).

Averaging the iterates of the last epochs lands nearer the centre of a flat region of the loss than
the last iterate does, which is what tends to carry over to a shifted distribution (SWA, SWAD). Only
the trainable weights are averaged (LoRA factors and the head: a few MB), every optimizer step from
the start of epoch `start` on, one running mean per start.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from transformers import TrainerCallback

from training.fitting.trainer import load_trainable, trainable_copy


class TailAverages(TrainerCallback):
    """One running mean of the trainable weights per start epoch (1-based): start s averages every
    optimizer step of epochs s, s+1, … At each epoch end, `consider(model, epoch, s)` (an `EpochEnd`'s)
    sees the model with the average from s swapped in; the live weights are put back after."""

    def __init__(self, starts: Sequence[int], consider: Callable[[object, int, int], None] | None = None) -> None:
        if any(s < 1 for s in starts):
            raise ValueError(f"average start epochs are 1-based, got {list(starts)}")
        self.starts = sorted(set(starts))
        self.consider = consider
        self.means: dict[int, dict[str, torch.Tensor]] = {}
        self.counts: dict[int, int] = dict.fromkeys(self.starts, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        epoch = math.ceil(state.epoch - 1e-9)  # the 1-based epoch this step belongs to
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        with torch.no_grad():
            for s in self.starts:
                if epoch < s:
                    continue
                self.counts[s] += 1
                if s not in self.means:
                    self.means[s] = {n: p.detach().float().clone() for n, p in params.items()}
                    continue
                for n, p in params.items():
                    self.means[s][n].add_(p.detach().float() - self.means[s][n], alpha=1.0 / self.counts[s])
        return control

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.consider is not None:
            epoch = max(1, round(state.epoch or 0))
            for s in self.starts:
                if s in self.means:
                    with self.swapped_in(model, s):
                        self.consider(model, epoch, s)
        return control

    @contextmanager
    def swapped_in(self, model, start: int) -> Iterator[None]:
        """The average from `start` in place of the live weights, for the duration of the block."""
        live = trainable_copy(model)
        was_training = model.training
        self.apply(model, start)
        model.eval()
        try:
            yield
        finally:
            load_trainable(model, live)
            model.train(was_training)

    def apply(self, model, start: int) -> None:
        """Load the average from `start` into the model's trainable weights, for good."""
        if start not in self.means:
            raise ValueError(f"no step was averaged from epoch {start} (trained {max(self.counts.values())} steps)")
        load_trainable(model, self.means[start])
