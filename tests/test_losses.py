"""The CVSS training loss is the cross-entropy of what the service returns: the softmax over each
metric's allowed value tokens, renormalised after the grammar mask."""

from __future__ import annotations

import math

import torch

from training.fitting.losses import allowed_value_cross_entropy, allowed_value_logits


def test_allowed_value_loss_equals_hand_computed_renormalised_cross_entropy():
    torch.manual_seed(0)
    vocab, hidden_size = 11, 5
    weight = torch.randn(vocab, hidden_size)
    hidden = torch.randn(2, 2, hidden_size)  # 2 rows, 2 answer positions
    allowed = [[3, 7], [1, 4, 9]]  # metric 0 has 2 values, metric 1 has 3
    targets = torch.tensor([[1, 2], [0, 0]])  # index within each metric's allowed list

    loss = allowed_value_cross_entropy(allowed_value_logits(hidden, weight, allowed), targets)

    full = hidden @ weight.T  # [2, 2, vocab]: every token's logit
    expected = []
    for row in range(2):
        for pos, ids in enumerate(allowed):
            exp = [math.exp(full[row, pos, i].item()) for i in ids]
            p_true = exp[targets[row, pos].item()] / sum(exp)  # renormalised over the allowed values only
            expected.append(-math.log(p_true))
    # mean over metrics of the mean over rows equals the plain mean here (same row count per metric)
    assert abs(loss.item() - sum(expected) / len(expected)) < 1e-5

    vocab_ce = torch.nn.functional.cross_entropy(
        full.reshape(-1, vocab), torch.tensor([allowed[p][targets[r, p]] for r in range(2) for p in range(2)])
    )
    assert loss.item() < vocab_ce.item()  # the full-vocabulary loss also pays for mass on disallowed tokens


def test_allowed_value_loss_gradient_ignores_disallowed_tokens():
    weight = torch.randn(8, 4, requires_grad=True)
    hidden = torch.randn(3, 1, 4)
    loss = allowed_value_cross_entropy(allowed_value_logits(hidden, weight, [[2, 5]]), torch.tensor([[0], [1], [1]]))
    loss.backward()
    touched = {i for i in range(8) if weight.grad[i].abs().sum() > 0}
    assert touched == {2, 5}
