"""vLLM logits processor for the CVSS prior correction (`Manifest.prior_correction`).

The grammar fixes which metric each decode step answers, so the shift of step n is a fixed table over
that metric's value tokens. It is added before vLLM's greedy choice, so the returned value, the later
steps' conditioning and the processed logprobs the service reads are all of the corrected logits, as in
`training.cvss.predict.predict_cvss`. Requests carry their table in `SamplingParams.extra_args` (each adapter
has its own; through vLLM's OpenAI server, `vllm_xargs` with the table as a JSON string); requests without
one are untouched. Loaded by vLLM's engine process by its name, so it imports nothing of the service."""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

EXTRA_ARG = "secclf_value_shifts"  # per decode step: [[token_id, logit shift], ...]
QUALNAME = f"{__name__}:ValueShift"


def step_tables(token_ids: Sequence[Sequence[int]], shifts: Sequence[Sequence[float]]) -> list[list[list[float]]]:
    """The `extra_args` value: per step, each allowed token id with its shift (JSON-safe for the engine)."""
    return [[[t, float(b)] for t, b in zip(ids, bs, strict=True)] for ids, bs in zip(token_ids, shifts, strict=True)]


def shift_fn(tables: Sequence[Sequence[Sequence[float]]]):
    """`(output_ids, logits) -> logits`: step len(output_ids)'s shift added in place; past the table, none."""
    steps = [
        (torch.tensor([int(t) for t, _ in table]), torch.tensor([b for _, b in table], dtype=torch.float32))
        for table in tables
    ]

    def shift(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        n = len(output_ids)
        if n < len(steps):
            ids, bias = steps[n]
            logits[ids.to(logits.device)] += bias.to(logits.device, logits.dtype)
        return logits

    return shift


class ValueShift(AdapterLogitsProcessor):
    def is_argmax_invariant(self) -> bool:
        return False  # it moves the greedy choice: that is its purpose

    def new_req_logits_processor(self, params):
        tables = (params.extra_args or {}).get(EXTRA_ARG)
        if isinstance(tables, str):  # through vLLM's OpenAI server: `vllm_xargs` values cannot nest, JSON can
            tables = json.loads(tables)
        return shift_fn(tables) if tables else None
