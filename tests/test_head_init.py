"""The imprinted ATT&CK head: each seen label's row points at its examples' centred mean state."""

from __future__ import annotations

import torch

from training.head_init import SCALES, imprinted_weights


def test_imprinted_rows_point_at_their_label_means_and_unseen_labels_keep_theirs():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 4
    labels = torch.tensor([0] * 10 + [1] * 10 + [2] * 10)
    states = centres[labels] + torch.randn(30, 16, generator=g) + 5.0  # an offset every row shares
    before = torch.randn(5, 16, generator=g) * 0.02  # labels 3 and 4 have no example
    w, scale = imprinted_weights(states, labels, before)

    assert torch.equal(w[3:], before[3:])
    for k in range(3):
        direction = states[labels == k].mean(0) - states.mean(0)
        assert torch.nn.functional.cosine_similarity(w[k], direction, dim=0) > 0.999
        assert abs(w[k].norm().item() - scale) < 1e-4
    assert ((states @ w.T)[:, :3].argmax(1) == labels).all()

    def ce(weight):
        return torch.nn.functional.cross_entropy(states @ weight.T, labels).item()

    for s in SCALES:  # the kept scale is the grid's best on the training rows
        other = w.clone()
        other[:3] = w[:3] / scale * float(s)
        assert ce(w) <= ce(other) + 1e-9
