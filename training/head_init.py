"""Imprinted classification head (`--imprint-head`).

Each label's head row starts as the normalised mean of its training rows' last-token states (centred on
the mean of all rows), all rows scaled by the one factor that minimises the training cross-entropy. The
first steps then refine a head that already ranks labels by similarity to their examples, instead of
one drawn at random; labels without a training row keep their random row.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from training.trainer import last_token_states, score_head

log = logging.getLogger(__name__)
SCALES = np.geomspace(1e-3, 10.0, 41)  # candidate norms of a head row


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
