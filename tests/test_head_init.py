"""How the ATT&CK head starts: imprinted (each seen label's row points at its examples' centred mean state)
or a linear probe (an L2 logistic regression whose weight is chosen holding out each threat group)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from training.attack.head_init import (
    PROBE_L2,
    SCALES,
    choose_probe_l2,
    group_folds,
    imprinted_weights,
    probe_weights,
    reimprint_head,
    reimprint_logits,
)
from training.data import AttackExample
from training.evaluation.split import SplitError


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


def _clusters(n_per: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 8, generator=g) * 2
    labels = torch.arange(3).repeat_interleave(n_per)
    return centres[labels] + noise * torch.randn(len(labels), 8, generator=g), labels


def test_probe_is_the_l2_logistic_regression_scikit_learn_fits():
    """mean cross-entropy + l2 * ||W||^2 is scikit-learn's ||W||^2 / 2 + C * sum of cross-entropies at
    C = 1 / (2 n l2): the same model, so the same probabilities."""
    states, labels = _clusters(20, 1.5)
    l2 = 3e-3
    w = probe_weights(states, labels, 3, l2)
    ref = LogisticRegression(C=1 / (2 * len(labels) * l2), fit_intercept=False, tol=1e-10, max_iter=10_000)
    ref.fit(states.double().numpy(), labels.numpy())
    ours = torch.softmax(states @ w.T, 1).numpy()
    np.testing.assert_allclose(ours, ref.predict_proba(states.double().numpy()), atol=2e-4)
    # a label with no training row is pushed below every seen one
    w4 = probe_weights(states, labels, 4, l2)
    p = torch.softmax(states @ w4.T, 1)
    assert (p[:, 3] < p[torch.arange(len(labels)), labels]).all() and p[:, 3].max() < 0.25


def test_probe_folds_hold_out_each_group_and_what_may_come_from_it():
    rows = [
        AttackExample("a1", "T1003", "apt29", "r1", "s"),
        AttackExample("a2", "T1059", "apt29", "r1", "s"),
        AttackExample("f1", "T1003", "fin6", "r2", "s"),
        AttackExample("desc", "T1003", "catalogue", "catalogue", "c"),
        AttackExample("proc", "T1059", "procedure", "ref", "c", ("apt29",)),  # may come from apt29
    ]
    folds = group_folds(rows, ["apt29", "fin6"])
    assert [(tr.tolist(), te.tolist()) for tr, te in folds] == [
        ([False, False, True, True, False], [True, True, False, False, False]),
        ([True, True, False, True, True], [False, False, True, False, False]),
    ]


def test_probe_l2_is_chosen_on_the_held_out_groups():
    """Noise labels: the strongest L2 predicts held-out rows best; clean clusters: the weakest."""
    states, labels = _clusters(30, 0.3)
    half = torch.arange(len(labels)) % 2 == 0
    folds = [(half, ~half), (~half, half)]
    clean, nll_clean = choose_probe_l2(states, labels, 3, folds)
    noisy_labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    noisy, nll_noisy = choose_probe_l2(states, noisy_labels, 3, folds)
    assert clean == min(PROBE_L2) and noisy == max(PROBE_L2)
    assert nll_clean[clean] < 0.1 < np.log(3) - 0.1 < nll_noisy[noisy]


TRAIN = [
    ("The actor dumped LSASS memory with Mimikatz.", 0),
    ("Credentials were read from LSASS process memory.", 0),
    ("A spearphishing attachment delivered the first stage.", 1),
    ("Victims opened a malicious Word document sent by email.", 1),
    ("The implant persisted through a Run registry key.", 2),
]
TEST = ["They dumped credentials from memory.", "An email lure carried a macro document."]


def _tiny_classifier(base_model):
    """The small model as a 4-label classifier (label 3 has no rows) with LoRA on its top 2 layers; its
    frozen-layer count and the cached states of TRAIN and TEST."""
    from peft import get_peft_model

    from training.artifact.loading import load_tokenizer, new_sequence_classifier
    from training.fitting.layer_cache import frozen_layer_count, frozen_prefix_states
    from training.fitting.trainer import TrainConfig, lora_config

    tok = load_tokenizer(str(base_model))
    torch.manual_seed(0)
    model = new_sequence_classifier(str(base_model), 4, tok.pad_token_id, torch.float32)
    model = get_peft_model(model, lora_config(TrainConfig(lora_layers=2), None, model.config.num_hidden_layers))
    n_frozen = frozen_layer_count(model, 2)
    train = frozen_prefix_states(model, [tok.encode(t) for t, _ in TRAIN], n_frozen, batch_size=2)
    test = frozen_prefix_states(model, [tok.encode(t) for t in TEST], n_frozen, batch_size=2)
    return model, n_frozen, train, test


def test_reimprinted_head_serves_the_logits_the_folds_scored(base_model):
    """The candidate logits at each blend weight are the plain head's at 0, and the head `reimprint_head`
    ships at a weight gives exactly the logits that weight was scored with."""
    from training.fitting.trainer import attack_logits_from_states, score_head

    model, n_frozen, train_states, test_states = _tiny_classifier(base_model)
    rows = [{"states": s, "labels": y} for s, (_, y) in zip(train_states, TRAIN, strict=True)]
    plain = attack_logits_from_states(model, n_frozen, test_states).numpy()

    cands = reimprint_logits(model, n_frozen, rows, test_states, (0.0, 0.25, 1.0))
    np.testing.assert_allclose(cands[0.0], plain, rtol=1e-4, atol=1e-4)
    assert np.abs(cands[1.0] - plain).max() > 0.1  # the prototypes score differently from the head
    np.testing.assert_allclose(cands[0.25], 0.75 * cands[0.0] + 0.25 * cands[1.0], rtol=1e-4, atol=1e-4)

    before = score_head(model).weight.detach().clone()
    reimprint_head(model, rows, n_frozen, 0.25)
    np.testing.assert_allclose(attack_logits_from_states(model, n_frozen, test_states).numpy(), cands[0.25], atol=1e-4)
    assert torch.equal(score_head(model).weight[3], before[3])  # a label without rows keeps its trained row


def test_probe_start_fits_the_training_rows_through_the_model(base_model):
    """`--head-init probe` sets the head to the probe of the model's own final states of its training rows:
    it ranks each row's label first, where the seeded random head (what "random" keeps) does not."""
    from training.attack.train import start_head
    from training.fitting.trainer import attack_logits_from_states, score_head

    model, n_frozen, states, _ = _tiny_classifier(base_model)
    rows = [{"states": s, "labels": y} for s, (_, y) in zip(states, TRAIN, strict=True)]
    examples = [AttackExample(t, f"T{y}", f"g{i % 2}", "r", "s") for i, (t, y) in enumerate(TRAIN)]
    labels = torch.tensor([y for _, y in TRAIN])

    random_head = score_head(model).weight.detach().clone()
    start_head(model, "random", rows, examples, ["g0", "g1"], n_frozen)
    assert torch.equal(score_head(model).weight, random_head)
    assert not (attack_logits_from_states(model, n_frozen, states).argmax(1) == labels).all()

    start_head(model, "probe", rows, examples, ["g0", "g1"], n_frozen)
    probs = torch.softmax(attack_logits_from_states(model, n_frozen, states), 1)
    assert (probs.argmax(1) == labels).all()
    assert (probs[:, 3] < 0.25).all()  # the label with no row is pushed down, not left at its random row
    with pytest.raises(SplitError, match="too few"):  # its L2 weight is chosen holding out a group at a time
        start_head(model, "probe", rows, examples, ["g0"], n_frozen)
