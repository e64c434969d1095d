"""How the ATT&CK head starts (`--head-init`), and heads re-imprinted after training.

- `imprint`: each label's head row starts as the normalised mean of its training rows' last-token states
  (centred on the mean of all rows), all rows scaled by the one factor that minimises the training
  cross-entropy; labels without a training row keep their random row.
- `probe`: the head starts as an L2-regularised multinomial logistic regression on the frozen model's
  final states (linear probing, then fine-tuning: a head that already fits leaves the pretrained features
  less distorted by the first steps). The L2 weight is chosen by leave-one-group-out over the training
  groups, on those frozen states only. On SmolLM2-135M it ends below `imprint` (README): its frozen
  features are too weak to keep.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from training.evaluation.split import SplitError
from training.fitting.trainer import last_token_states, score_head

log = logging.getLogger(__name__)
SCALES = np.geomspace(1e-3, 10.0, 41)  # candidate norms of a head row
HEAD_INITS = ("random", "imprint", "probe")
PROBE_L2 = (1e-2, 3e-3, 1e-3, 3e-4)  # candidate L2 weights of the probe (sum of squared head weights)


def imprinted_weights(states: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(new head weight, the scale kept) from final states [n, d] and their labels; `weight` [L, d] gives
    the rows of labels with no example."""
    h = states.double()
    centred = h - h.mean(0)
    sums = torch.zeros(weight.shape[0], h.shape[1], dtype=h.dtype).index_add_(0, labels, centred)
    has = torch.bincount(labels, minlength=weight.shape[0]) > 0
    proto = torch.nn.functional.normalize(sums, dim=1)
    base = weight.detach().double().clone()
    best: tuple[float, float, torch.Tensor] | None = None
    for s in SCALES:
        w = base.clone()
        w[has] = proto[has] * float(s)
        loss = torch.nn.functional.cross_entropy(h @ w.T, labels).item()
        if best is None or loss < best[0]:
            best = (loss, float(s), w)
    assert best is not None
    return best[2].to(weight.dtype), best[1]


def probe_weights(states: torch.Tensor, labels: torch.Tensor, n_labels: int, l2: float) -> torch.Tensor:
    """Multinomial logistic regression without a bias (the `score` head has none) on states [n, d]:
    mean cross-entropy + l2 * ||W||^2, minimised by L-BFGS from zero (convex: the start does not matter)."""
    h, labels = states.float().clone(), labels.clone()  # normal tensors: `last_token_states` gives inference-mode ones
    w = torch.zeros(n_labels, h.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=300, line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(h @ w.T, labels) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach()


def choose_probe_l2(
    states: torch.Tensor, labels: torch.Tensor, n_labels: int, folds: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[float, dict[float, float]]:
    """The L2 weight with the lowest held-out NLL averaged over `folds` ((train mask, test mask) pairs,
    one per held-out group, each group weighing the same); and every candidate's NLL."""
    nll = {}
    for l2 in PROBE_L2:
        per_fold = []
        for tr, te in folds:
            w = probe_weights(states[tr], labels[tr], n_labels, l2)
            per_fold.append(torch.nn.functional.cross_entropy(states[te].float() @ w.T, labels[te]).item())
        nll[l2] = float(np.mean(per_fold))
    return min(PROBE_L2, key=lambda c: nll[c]), nll


def group_folds(examples: list, groups: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(train mask, test mask) over `examples` holding out each of `groups` in turn: a row tied to the held
    group (a procedure that may come from it) trains in none of its folds."""
    return [
        (torch.tensor([e.trains_without((g,)) for e in examples]), torch.tensor([e.group == g for e in examples]))
        for g in groups
    ]


@torch.no_grad()
def probe_head(model, rows: list[dict], n_frozen: int, examples: list, groups: list[str]) -> float:
    """Start the `score` head of `model` as a linear probe of its frozen final states of training `rows`
    (`examples[i]` is row i's `AttackExample`); its L2 weight is chosen holding out each of the threat
    `groups` in turn. Returns the L2 weight kept."""
    if len(groups) < 2:
        raise SplitError(f"--head-init probe chooses its L2 weight across training groups: {len(groups)} is too few")
    states = last_token_states(model, n_frozen, [r["states"] for r in rows])
    labels = torch.tensor([r["labels"] for r in rows])
    head = score_head(model)
    l2, nll = choose_probe_l2(states, labels, head.weight.shape[0], group_folds(examples, groups))
    head.weight.copy_(probe_weights(states, labels, head.weight.shape[0], l2).to(head.weight.device, head.weight.dtype))
    log.info("probe head from %d rows; L2 %.0e kept (held-out NLL by L2 %s)", len(rows), l2, nll)
    return l2


@torch.no_grad()
def imprint_head(model, rows: list[dict], n_frozen: int) -> float:
    """Imprint the `score` head of `model` from training `rows` (cached `states`, `labels`); the scale kept."""
    states = last_token_states(model, n_frozen, [r["states"] for r in rows])
    labels = torch.tensor([r["labels"] for r in rows])
    head = score_head(model)
    weight, scale = imprinted_weights(states, labels, head.weight.detach().cpu())
    head.weight.copy_(weight.to(head.weight.device))
    log.info("imprinted the head from %d rows over %d labels (row norm %.3g)", len(rows), len(labels.unique()), scale)
    return scale


@torch.no_grad()
def reimprint_logits(
    model, n_frozen: int, train_rows: list[dict], test_states: list[torch.Tensor], weights: tuple[float, ...]
) -> dict[float, np.ndarray]:
    """Held-out logits of the trained head blended with prototypes re-imprinted from the *trained* model's
    states of its training rows, `(1 - w) * head + w * prototypes`, for each blend weight `w`: candidates
    the folds choose among, one forward pass over the rows for all of them (the head is linear)."""
    head = score_head(model).weight.detach().cpu().double()
    proto = _prototypes(model, n_frozen, train_rows, head)
    h = last_token_states(model, n_frozen, test_states).double()
    return {w: (h @ _blend(head, proto, w).T).float().numpy() for w in weights}


@torch.no_grad()
def reimprint_head(model, rows: list[dict], n_frozen: int, weight: float) -> None:
    """Blend the trained `score` head with prototypes from the trained model's states of `rows`, by `weight`."""
    head = score_head(model)
    trained = head.weight.detach().cpu().double()
    proto = _prototypes(model, n_frozen, rows, trained)
    head.weight.copy_(_blend(trained, proto, weight).to(head.weight.device, head.weight.dtype))
    log.info("re-imprinted the trained head from %d rows (blend weight %.2f)", len(rows), weight)


def _prototypes(model, n_frozen: int, rows: list[dict], head: torch.Tensor) -> torch.Tensor:
    states = last_token_states(model, n_frozen, [r["states"] for r in rows])
    labels = torch.tensor([r["labels"] for r in rows])
    return imprinted_weights(states, labels, head)[0].double()


def _blend(head: torch.Tensor, proto: torch.Tensor, w: float) -> torch.Tensor:
    return (1 - w) * head + w * proto
