"""Fake models for the fast tier: the real model classes (real manifests, labels, validation and
postprocessing) with the engine replaced by a stub, so HTTP behaviour is tested without vLLM.

Nothing here claims anything about a model's answers: the probabilities are seeded noise."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import torch

from service.exceptions import EngineUnavailable
from service.models.attack import AttackModel
from service.models.cvss import CvssModel
from training.artifact.encoding import cvss_value_token_ids
from training.artifact.loading import load_tokenizer


class FakeEngine:
    """What the service reads of an engine: `errored` (health) and `shutdown`."""

    def __init__(self) -> None:
        self.errored = False

    def shutdown(self) -> None:
        pass


class _Controls:
    delay_s = 0.0  # seconds each predict takes (backpressure and deadline tests)
    fail: str | None = None  # an engine error message to raise from predict
    refuse: str | None = None  # an input-validation error (ValueError) for the engine stream to raise

    async def load(self) -> None:
        self.tokenizer = load_tokenizer(self.base)  # real truncation and encoding
        self.check_model_len()  # the real start-up checks
        self.engine = FakeEngine()
        self.on_load()

    def on_load(self) -> None:
        pass

    async def _work(self, ids: list[int]) -> torch.Generator:
        if self.fail:
            raise EngineUnavailable(self.fail)
        if self.refuse:  # through the real final_output, as vLLM's input validation would surface

            async def stream():
                raise ValueError(self.refuse)
                yield

            await self.final_output(stream)
        await asyncio.sleep(self.delay_s)
        return torch.Generator().manual_seed(sum(ids) % (2**31))


class FakeAttackModel(_Controls, AttackModel):
    async def predict(self, prompt_ids: list[int], **_) -> torch.Tensor:
        gen = await self._work(prompt_ids)
        return torch.softmax(torch.randn(len(self.labels.techniques), generator=gen), 0)


class FakeCvssModel(_Controls, CvssModel):
    def on_load(self) -> None:
        ids = cvss_value_token_ids(self.tokenizer, self.labels)
        self._value_ids = [dict(zip(t, m.values, strict=True)) for t, m in zip(ids, self.labels.metrics, strict=True)]
        self._lora = {name: None for name in self.adapters}

    async def predict(self, prompt_ids: list[int], adapter: str = "default"):
        self.lora_request(adapter)
        gen = await self._work(prompt_ids)
        steps = []
        for allowed in self._value_ids:  # a completion as vLLM returns it: one step per metric
            logp = torch.log_softmax(torch.randn(len(allowed), generator=gen), 0).tolist()
            steps.append({tid: SimpleNamespace(logprob=lp) for tid, lp in zip(allowed, logp, strict=True)})
        chosen = [max(step, key=lambda t, s=step: s[t].logprob) for step in steps]
        return SimpleNamespace(token_ids=chosen, logprobs=steps, text="")


FAKES = {"cvss": FakeCvssModel, "attack": FakeAttackModel}
