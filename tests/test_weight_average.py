"""Tail weight averages (ATT&CK): the running means, the swap for evaluation, and which one ships."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from training.attack.cross_validation import pick_candidate
from training.fitting.trainer import EpochEnd
from training.fitting.weight_average import TailAverages

STEPS_PER_EPOCH = 4


def _model() -> torch.nn.Module:
    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    m[1].weight.requires_grad_(False)  # frozen weights are not averaged
    return m


def _run(model, averages: TailAverages, epochs: int) -> list[dict[str, torch.Tensor]]:
    """Set the weights to a new value before every 'optimizer step' and return what they were."""
    seen = []
    g = torch.Generator().manual_seed(0)
    for step in range(1, epochs * STEPS_PER_EPOCH + 1):
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=g))
        seen.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        state = SimpleNamespace(epoch=step / STEPS_PER_EPOCH)
        averages.on_step_end(None, state, None, model=model)
        if step % STEPS_PER_EPOCH == 0:
            averages.on_epoch_end(None, state, None, model=model)
    return seen


def test_each_start_averages_the_steps_of_its_epochs_and_evaluation_sees_the_average():
    model = _model()
    frozen = model[1].weight.detach().clone()
    evaluated = []

    def evaluate(m, epoch, start):
        evaluated.append((epoch, start, m[0].weight.detach().clone(), m.training))

    averages = TailAverages([3, 2], evaluate)
    seen = _run(model, averages, epochs=3)
    last = seen[-1]

    for start in (2, 3):
        steps = seen[(start - 1) * STEPS_PER_EPOCH :]  # every step of epochs start..3
        assert averages.counts[start] == len(steps)
        for name in last:
            want = torch.stack([s[name] for s in steps]).mean(0)
            torch.testing.assert_close(averages.means[start][name], want)
    assert set(averages.means[2]) == {"0.weight", "0.bias", "1.bias"}

    # Epoch 2 ends with start 2 averaged over epoch 2 only; epoch 3 with both; evaluated in eval mode
    assert [(e, s) for e, s, _, _ in evaluated] == [(2, 2), (3, 2), (3, 3)]
    assert not any(training for *_, training in evaluated)
    torch.testing.assert_close(evaluated[0][2], torch.stack([s["0.weight"] for s in seen[4:8]]).mean(0))
    torch.testing.assert_close(evaluated[2][2], averages.means[3]["0.weight"])
    # ... and the live weights come back after each evaluation
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), last.get(name, frozen))
    assert model.training

    averages.apply(model, 2)
    torch.testing.assert_close(model[0].weight.detach(), averages.means[2]["0.weight"])
    torch.testing.assert_close(model[1].weight.detach(), frozen)


def test_an_average_that_never_started_cannot_be_applied():
    model = _model()
    averages = TailAverages([4])
    _run(model, averages, epochs=2)
    assert averages.counts[4] == 0
    with pytest.raises(ValueError, match="no step was averaged from epoch 4"):
        averages.apply(model, 4)
    with pytest.raises(ValueError, match="1-based"):
        TailAverages([0])


def test_epoch_end_keeps_the_best_candidate_an_earlier_average_included():
    model = _model()
    scores = {(1, 0): 0.1, (2, 0): 0.3, (2, 2): 0.5, (3, 0): 0.4, (3, 2): 0.45, (3, 3): 0.5}
    snapshots = {}

    def evaluate(m, epoch, start):
        snapshots[(epoch, start)] = m[0].weight.detach().clone()
        return {"score": scores[(epoch, start)]}

    epoch_end = EpochEnd(evaluate)
    averages = TailAverages([2, 3], epoch_end.consider)
    g = torch.Generator().manual_seed(1)
    for step in range(1, 3 * STEPS_PER_EPOCH + 1):
        with torch.no_grad():
            model[0].weight.copy_(torch.randn(2, 3, generator=g))
        state = SimpleNamespace(epoch=step / STEPS_PER_EPOCH)
        averages.on_step_end(None, state, None, model=model)
        if step % STEPS_PER_EPOCH == 0:  # the Trainer calls callbacks in the order given: live weights first
            epoch_end.on_epoch_end(None, state, SimpleNamespace(should_training_stop=False), model=model)
            averages.on_epoch_end(None, state, None, model=model)

    assert [(h["epoch"], h.get("average_from", 0)) for h in epoch_end.history] == sorted(scores)
    # (2, 2) and (3, 3) tie: the first scored is kept, the average of epoch 2 as it stood then
    assert epoch_end.restore_best(model) == 2 and epoch_end.best_average_from == 2
    torch.testing.assert_close(model[0].weight.detach(), snapshots[(2, 2)])
    assert not torch.equal(snapshots[(2, 2)], averages.means[2]["0.weight"])  # the average moved on after


def test_the_shipped_candidate_is_the_best_held_out_score_ties_as_epoch_end_breaks_them():
    scores = {(0, 1): 0.40, (0, 2): 0.45, (0, 3): 0.44, (2, 2): 0.43, (2, 3): 0.47, (3, 3): 0.45}
    assert pick_candidate(scores) == (2, 3)
    assert pick_candidate({**scores, (2, 3): 0.45}) == (0, 2)  # a tie: the earlier epoch
    assert pick_candidate({**scores, (2, 3): 0.44, (2, 2): 0.45}) == (0, 2)  # a tie at one epoch: live weights
    assert pick_candidate({**scores, (0, 3): 0.47}) == (0, 3)
    assert pick_candidate({**scores, (3, 3): 0.47}) == (2, 3)  # the earlier start
    # an average scored at an earlier epoch comes before a later epoch's live weights
    assert pick_candidate({(0, 1): 0.1, (0, 2): 0.2, (2, 2): 0.5, (0, 3): 0.5}) == (2, 2)
    assert pick_candidate(scores, select_best=False) == (0, 3)
