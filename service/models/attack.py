"""ATT&CK model: LM + LoRA + `score` head, one torch forward pass per micro-batch, calibrated softmax."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from service.batching import MicroBatcher
from service.metrics import ITEMS, TRUNCATED
from service.models.cvss import EngineUnavailable
from service.schemas import AttackResult, ModelInfo, TechniquePrediction
from service.settings import Settings
from training.manifest import ArtifactError, AttackLabels, Manifest, load_manifest
from training.modeling import base_for, load_attack_classifier, load_tokenizer, pick_device, pick_dtype
from training.predict import encode_attack

log = logging.getLogger(__name__)
MAX_CONSECUTIVE_FAILURES = 3


class AttackModel:
    def __init__(self, artifact: Path, settings: Settings) -> None:
        self.settings = settings
        self.artifact = Path(artifact).resolve()
        self.manifest: Manifest = load_manifest(self.artifact)  # verifies every hash
        if not isinstance(self.manifest.labels, AttackLabels):
            raise ArtifactError(f"{artifact}: task {self.manifest.task!r}, expected an ATT&CK artifact")
        self.labels: AttackLabels = self.manifest.labels
        self.base = base_for(self.manifest, settings.base_model)
        self.temperature = float(self.manifest.temperature)
        self.model = None
        self.tokenizer = None
        self.batcher: MicroBatcher[str, tuple[torch.Tensor, bool]] | None = None
        self.failed: str | None = None
        self._consecutive_failures = 0

    # -- load ---------------------------------------------------------------------------------
    async def load(self) -> None:
        s = self.settings
        device = pick_device(s.device)
        self.tokenizer = load_tokenizer(self.base)
        self.model = load_attack_classifier(
            self.artifact, self.manifest, self.base, self.tokenizer.pad_token_id, device, pick_dtype(device, s.dtype)
        )
        # A CPU is already busy with one short text; past ~8 texts padded batches get slower per text
        size = s.batch_max_size or (32 if device.type == "cuda" else 8)
        self.batcher = MicroBatcher(self.predict_batch, size, s.batch_max_wait_ms, s.batch_queue_size, "attack")
        self.batcher.start()
        log.info(
            "ATT&CK model ready: base=%s labels=%d T=%.3f", self.base, len(self.labels.techniques), self.temperature
        )

    async def close(self) -> None:
        if self.batcher:
            await self.batcher.stop()

    @property
    def healthy(self) -> bool:
        return self.model is not None and self.failed is None

    def info(self) -> ModelInfo:
        m = self.manifest
        return ModelInfo(name=m.name, version=m.version, task="attack", base_model=self.base)

    # -- predict (runs on the batcher's worker thread) ------------------------------------------
    @torch.inference_mode()
    def predict_batch(self, texts: Sequence[str]) -> list[tuple[torch.Tensor, bool]]:
        """One padded forward pass for the whole batch; returns calibrated probabilities per text."""
        try:
            enc, truncated = encode_attack(self.tokenizer, self.manifest, texts)
            device = next(self.model.parameters()).device
            logits = self.model(**enc.to(device)).logits.float().cpu()
        except Exception as e:
            # One failed batch (say, out of memory on a long one) fails its callers only; the model is
            # declared unhealthy (and the watchdog restarts the process) only when failures repeat.
            self._consecutive_failures += 1
            log.exception("ATT&CK forward pass failed (%d in a row)", self._consecutive_failures)
            if self._consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                self.failed = f"{type(e).__name__}: {e}"
            raise EngineUnavailable("the ATT&CK forward pass failed") from e
        self._consecutive_failures = 0
        probs = torch.softmax(logits / self.temperature, dim=-1)
        return list(zip(probs, truncated, strict=True))

    # -- postprocess ------------------------------------------------------------------------------
    def postprocess(self, probs: torch.Tensor, truncated: bool, top_k: int) -> AttackResult:
        k = min(top_k, probs.numel())
        top = torch.topk(probs, k)
        preds = []
        for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            t = self.labels.techniques[i]
            preds.append(TechniquePrediction(technique_id=t.id, name=t.name, tactics=t.tactics, probability=p))
        ITEMS.labels("attack").inc()
        if truncated:
            TRUNCATED.labels("attack").inc()
        return AttackResult(predictions=preds, truncated=truncated, model=self.info())

    async def classify_many(self, texts: Sequence[str], top_k: int) -> list[AttackResult]:
        assert self.batcher is not None
        outs = await self.batcher.submit_many(list(texts))
        return [self.postprocess(p, tr, top_k) for p, tr in outs]
