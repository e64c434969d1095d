"""The CVSS prior correction: fitted from the training vectors, checked by the manifest, applied the same
way by training's decoder and by the service's vLLM logits processor."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.test_manifest import _manifest
from training.artifact.manifest import PriorCorrection
from training.artifact.prompting import CVSS_TEMPLATE
from training.cvss.prior_correction import fit_prior_correction
from training.cvss.train import cvss_labels

N_H = {"AV": "N", "AC": "L", "PR": "N", "UI": "N", "S": "U", "C": "H", "I": "H", "A": "H"}


def test_log_prior_is_the_add_one_smoothed_training_share():
    labels = cvss_labels()
    train = [N_H, N_H, {**N_H, "AV": "L", "C": "N"}]
    pc = fit_prior_correction(labels, train, tau=0.5)
    # AV: N twice, L once, A and P never; +1 each over 4 values -> 3/7, 1/7, 2/7, 1/7
    assert pc.log_prior["AV"] == pytest.approx(
        {"N": math.log(3 / 7), "A": math.log(1 / 7), "L": math.log(2 / 7), "P": math.log(1 / 7)}
    )
    assert pc.log_prior["C"] == pytest.approx({"H": math.log(3 / 6), "L": math.log(1 / 6), "N": math.log(2 / 6)})
    # the shift favours the rarer value by tau * ln(share ratio), in the order asked for
    assert pc.bias("AV", ["P", "N"]) == pytest.approx([-0.5 * math.log(1 / 7), -0.5 * math.log(3 / 7)])


def test_manifest_checks_the_prior_and_omits_it_when_absent():
    m = _manifest()
    assert "prior_correction" not in m.model_dump()  # manifests without it read as before
    pc = fit_prior_correction(m.labels, [N_H], tau=1.0)
    with_pc = type(m).model_validate({**m.model_dump(), "prior_correction": pc.model_dump()})
    assert with_pc.prior_correction == pc
    partial = {**pc.log_prior, "AV": {"N": -0.1, "L": -2.0}}  # A and P missing
    with pytest.raises(ValueError, match="every value of AV"):
        type(m).model_validate({**m.model_dump(), "prior_correction": {"tau": 1.0, "log_prior": partial}})
    with pytest.raises(ValueError):
        PriorCorrection(tau=-0.5, log_prior=pc.log_prior)


def test_decoder_first_step_is_the_shifted_softmax(base_model):
    """Step 1 (AV) sees only the prompt in both runs, so with the shift its probabilities must be the
    plain ones times exp(shift), renormalised; later steps follow the shifted choices."""
    from transformers import AutoModelForCausalLM

    from training.artifact.loading import load_tokenizer
    from training.cvss.predict import predict_cvss

    tok = load_tokenizer(str(base_model))
    model = AutoModelForCausalLM.from_pretrained(str(base_model), dtype=torch.float32).eval()
    plain = _manifest().model_copy(update={"prompt_template": CVSS_TEMPLATE, "max_input_tokens": 64})
    prior = {**N_H, "AV": "N"}
    pc = fit_prior_correction(plain.labels, [prior] * 30 + [{**prior, "AV": "P", "S": "C"}], tau=1.0)
    shifted = plain.model_copy(update={"prior_correction": pc})
    texts = ["A buffer overflow in the USB driver lets a local user gain root.", "SQL injection in login.php."]
    p0 = predict_cvss(model, tok, plain, texts)
    p1 = predict_cvss(model, tok, shifted, texts)
    for a, b in zip(p0, p1, strict=True):
        values = list(a["AV"])
        w = [a["AV"][v] * math.exp(s) for v, s in zip(values, pc.bias("AV", values), strict=True)]
        assert [b["AV"][v] for v in values] == pytest.approx([x / sum(w) for x in w], rel=1e-4)
        assert b["AV"]["A"] > a["AV"]["A"] and b["AV"]["N"] < a["AV"]["N"]  # the rarest gains, the commonest loses


def test_vllm_processor_adds_each_steps_shift_to_its_tokens_only():
    from vllm import SamplingParams

    from service.models.value_shift import EXTRA_ARG, ValueShift, shift_fn, step_tables

    tables = step_tables([[5, 7], [7, 9]], [[0.5, -1.0], [2.0, 0.25]])
    shift = shift_fn(tables)
    row = torch.zeros(12)
    assert shift([], row) is row  # in place: vLLM keeps the row it passed
    assert row[[5, 7]].tolist() == [0.5, -1.0] and row.abs().sum() == 1.5
    row = torch.full((12,), float("-inf"))
    row[[7, 9]] = torch.tensor([1.0, 1.0])
    shift([5], row)  # step 2: another table; grammar-masked tokens stay masked
    assert row[[7, 9]].tolist() == [3.0, 1.25] and torch.isinf(row).sum() == 10
    row = torch.zeros(12)
    shift([5, 7], row)  # past the last metric: unchanged
    assert row.abs().sum() == 0
    proc = object.__new__(ValueShift)  # vLLM builds it with its config; the request hook needs none
    assert proc.new_req_logits_processor(SamplingParams(max_tokens=8)) is None
    fn = proc.new_req_logits_processor(SamplingParams(max_tokens=8, extra_args={EXTRA_ARG: tables}))
    row = torch.zeros(12)
    fn([], row)
    assert row[5].item() == 0.5
    # as vLLM's OpenAI server passes it (`vllm_xargs` cannot nest lists): the same table as a JSON string
    fn = proc.new_req_logits_processor(SamplingParams(max_tokens=8, extra_args={EXTRA_ARG: json.dumps(tables)}))
    row = torch.zeros(12)
    fn([7], row)
    assert row[[7, 9]].tolist() == [2.0, 0.25]
    assert not proc.is_argmax_invariant()
