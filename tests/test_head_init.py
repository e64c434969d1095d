"""The imprinted ATT&CK head: each seen label's row points at its examples' centred mean state."""

from __future__ import annotations

import numpy as np
import torch

from training.head_init import SCALES, imprinted_weights, reimprint_head, reimprint_logits


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


TRAIN = [
    ("The actor dumped LSASS memory with Mimikatz.", 0),
    ("Credentials were read from LSASS process memory.", 0),
    ("A spearphishing attachment delivered the first stage.", 1),
    ("Victims opened a malicious Word document sent by email.", 1),
    ("The implant persisted through a Run registry key.", 2),
]
TEST = ["They dumped credentials from memory.", "An email lure carried a macro document."]


def test_reimprinted_head_serves_the_logits_the_folds_scored(base_model):
    """The candidate logits at each blend weight are the plain head's at 0, and the head `reimprint_head`
    ships at a weight gives exactly the logits that weight was scored with."""
    from peft import get_peft_model

    from training.artifact.loading import load_tokenizer, new_sequence_classifier
    from training.layer_cache import frozen_layer_count, frozen_prefix_states
    from training.trainer import TrainConfig, attack_logits_from_states, lora_config, score_head

    tok = load_tokenizer(str(base_model))
    torch.manual_seed(0)
    model = new_sequence_classifier(str(base_model), 4, tok.pad_token_id, torch.float32)  # label 3: no rows
    model = get_peft_model(model, lora_config(TrainConfig(lora_layers=2), None, model.config.num_hidden_layers))
    n_frozen = frozen_layer_count(model, 2)
    train_states = frozen_prefix_states(model, [tok.encode(t) for t, _ in TRAIN], n_frozen, batch_size=2)
    rows = [{"states": s, "labels": y} for s, (_, y) in zip(train_states, TRAIN, strict=True)]
    test_states = frozen_prefix_states(model, [tok.encode(t) for t in TEST], n_frozen, batch_size=2)
    plain = attack_logits_from_states(model, n_frozen, test_states).numpy()

    cands = reimprint_logits(model, n_frozen, rows, test_states, (0.0, 0.25, 1.0))
    np.testing.assert_allclose(cands[0.0], plain, rtol=1e-4, atol=1e-4)
    assert np.abs(cands[1.0] - plain).max() > 0.1  # the prototypes score differently from the head
    np.testing.assert_allclose(cands[0.25], 0.75 * cands[0.0] + 0.25 * cands[1.0], rtol=1e-4, atol=1e-4)

    before = score_head(model).weight.detach().clone()
    reimprint_head(model, rows, n_frozen, 0.25)
    np.testing.assert_allclose(attack_logits_from_states(model, n_frozen, test_states).numpy(), cands[0.25], atol=1e-4)
    assert torch.equal(score_head(model).weight[3], before[3])  # a label without rows keeps its trained row
