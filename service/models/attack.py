"""ATT&CK model: the LM + LoRA + `score` head folded into one sequence-classification checkpoint (the head
divided by the calibration temperature) and served by vLLM's pooling runner, which batches continuously
with no padding. The softmax it returns is the calibrated probability."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import torch

from service.engine import start_engine
from service.models.base import VllmModel
from service.schemas import AttackResult, TechniquePrediction
from service.settings import Settings
from training.artifact.conformal import prediction_set
from training.artifact.folding import folded_model_dir, reading
from training.artifact.manifest import ArtifactError, AttackLabels, ConformalLevel

log = logging.getLogger(__name__)
SET_FIELD = "technique"  # the manifest's conformal field for ATT&CK


class AttackModel(VllmModel[AttackResult]):
    task = "attack"

    def __init__(self, artifact: Path, settings: Settings) -> None:
        super().__init__(artifact, settings)
        if not isinstance(self.manifest.labels, AttackLabels):
            raise ArtifactError(f"{artifact}: labels are not ATT&CK labels")
        self.labels: AttackLabels = self.manifest.labels
        self._params = None

    @property
    def configured_inflight(self) -> int | None:
        return self.settings.max_inflight_attack

    async def start_engine(self):
        from vllm import PoolingParams

        s = self.settings
        folded = await asyncio.to_thread(folded_model_dir, self.base, self.artifact, self.manifest, s.cache_dir)
        self._params = PoolingParams(task="classify")
        engine = await asyncio.to_thread(  # off the loop: the two engines start side by side
            start_engine, str(folded), "attack", s, s.attack_kv_cache_gib, lock=reading(s.cache_dir), runner="pooling"
        )
        log.info(
            "ATT&CK engine ready: base=%s labels=%d T=%.3f folded=%s",
            self.base_name,
            len(self.labels.techniques),
            self.manifest.temperature,
            folded.name,
        )
        return engine

    async def predict(self, prompt_ids: list[int], **_) -> torch.Tensor:
        from vllm.inputs import TokensPrompt

        final = await self.final_output(
            lambda: self.engine.encode(
                TokensPrompt(prompt_token_ids=prompt_ids), self._params, request_id=self.request_id()
            )
        )
        return final.outputs.data  # calibrated probabilities over the manifest's techniques, in its order

    def _prediction(self, index: int, probability: float) -> TechniquePrediction:
        t = self.labels.techniques[index]
        return TechniquePrediction(technique_id=t.id, name=t.name, tactics=t.tactics, probability=probability)

    def postprocess(self, probs: torch.Tensor, truncated: bool, top_k: int = 5) -> AttackResult:
        top = torch.topk(probs.float(), min(top_k, probs.numel()))
        preds = [self._prediction(i, p) for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]
        return AttackResult(predictions=preds, truncated=truncated, model=self.info())

    def add_prediction_set(self, probs: torch.Tensor, result: AttackResult, level: ConformalLevel):
        p = probs.double().tolist()
        result.prediction_set = [self._prediction(i, p[i]) for i in prediction_set(p, level.fields[SET_FIELD])]
        return [(SET_FIELD, len(result.prediction_set))]

    def top_choices(self, result: AttackResult) -> list[tuple[str, str, float]]:
        top = result.predictions[0]
        return [("technique", top.technique_id, top.probability)]

    def abstain(self, result: AttackResult, min_confidence: float) -> AttackResult:
        result.abstained = result.predictions[0].probability < min_confidence
        return result
