"""The one base class of the vLLM-served models: load / healthy / close / info, then per text
preprocess -> predict -> postprocess with stage timing, behind a bounded count of texts in flight."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from service.exceptions import EngineUnavailable, InvalidInput, Overloaded
from service.metrics import (
    ABSTAINED,
    INPUT_TOKENS,
    ITEMS,
    PREDICTED,
    SET_SIZE,
    STAGE_LATENCY,
    TOP1_CONFIDENCE,
    TRUNCATED,
)
from service.schemas import ModelInfo
from service.settings import Settings
from training.artifact.base_model import pin_revision
from training.artifact.encoding import encode_prompt
from training.artifact.loading import base_for, load_tokenizer
from training.artifact.manifest import ArtifactError, ConformalLevel, Manifest, load_manifest

log = logging.getLogger(__name__)
R = TypeVar("R")


class VllmModel(ABC, Generic[R]):
    task: ClassVar[str]  # "cvss" | "attack": the manifest task this class serves

    def __init__(self, artifact: Path, settings: Settings) -> None:
        self.settings = settings
        self.artifact = Path(artifact).resolve()
        self.manifest: Manifest = load_manifest(self.artifact)  # verifies every hash
        if self.manifest.task != self.task:
            raise ArtifactError(f"{artifact}: task {self.manifest.task!r}, expected {self.task!r}")
        self.base = base_for(self.manifest, settings.base_model)
        revision = settings.base_model_revision or self.manifest.base_model.revision
        pin_revision(self.base, revision)
        if not Path(self.base).is_dir() and not revision:
            log.warning("base model %s is a hub id with no pinned revision (SECCLF_BASE_MODEL_REVISION)", self.base)
        self.engine = None
        self.tokenizer = None
        self.inflight = 0  # texts accepted and not yet answered

    # -- subclasses ------------------------------------------------------------------------------
    @property
    @abstractmethod
    def max_inflight(self) -> int: ...

    @abstractmethod
    async def start_engine(self) -> Any:
        """Build (fold) what the engine serves and start it; returns the AsyncLLM."""

    @abstractmethod
    async def predict(self, prompt_ids: list[int], **opts: Any) -> Any:
        """One text through the engine; returns the engine's final output."""

    @abstractmethod
    def postprocess(self, output: Any, truncated: bool, **opts: Any) -> R: ...

    @abstractmethod
    def top_choices(self, result: R) -> list[tuple[str, str, float]]:
        """(field, chosen label, its probability) per decision in a result: drift metrics and abstention."""

    @abstractmethod
    def abstain(self, result: R, min_confidence: float) -> R:
        """Mark the result (and its parts) below `min_confidence`; predictions are kept."""

    @abstractmethod
    def add_prediction_set(self, output: Any, result: R, level: ConformalLevel) -> list[tuple[str, int]]:
        """Attach the level's prediction set(s) to `result`; returns (field, set size) per set."""

    def manifest_for(self, **opts: Any) -> Manifest:
        """The manifest whose calibration answers a request (CVSS: the adapter's)."""
        return self.manifest

    def conformal_level(self, coverage: float, **opts: Any) -> ConformalLevel:
        conformal = self.manifest_for(**opts).conformal
        level = conformal.level(coverage) if conformal else None
        if level is None:
            offered = [lv.coverage for lv in conformal.levels] if conformal else []
            raise InvalidInput(
                f"coverage {coverage:g} is not offered by this model; supported: {offered}"
                if offered
                else "this model's artifact has no prediction-set thresholds; omit coverage"
            )
        return level

    # -- lifecycle -------------------------------------------------------------------------------
    async def load(self) -> None:
        self.tokenizer = load_tokenizer(self.base)
        self.engine = await self.start_engine()

    async def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    @property
    def healthy(self) -> bool:
        return self.engine is not None and not self.engine.errored

    def info(self, adapter: str | None = None) -> ModelInfo:
        manifest = self.manifest
        return ModelInfo(
            name=manifest.name, version=manifest.version, task=self.task, base_model=self.base, adapter=adapter
        )

    # -- per text ----------------------------------------------------------------------------------
    def preprocess(self, text: str) -> tuple[list[int], bool]:
        """Token ids made exactly as training made them: same truncation, template and encoding, and no
        special tokens (a Llama-3 tokenizer would otherwise add a BOS that training never saw)."""
        return encode_prompt(self.tokenizer, self.manifest, text)

    def validate(self, **opts: Any) -> None:
        """Reject options that can never succeed before any text is admitted (subclasses override)."""

    async def final_output(self, stream: Callable[[], AsyncIterator[Any]]) -> Any:
        """The last item of the engine stream `stream()` opens; engine-side failures become EngineUnavailable."""
        if not self.healthy:
            raise EngineUnavailable(f"the {self.task} engine is not running")
        final = None
        try:  # a deadline or a client gone cancels this (CancelledError is not an Exception): vLLM aborts
            async for out in stream():
                final = out
        except Exception as e:
            raise EngineUnavailable(f"{self.task} engine request failed: {type(e).__name__}: {e}") from e
        if final is None:
            raise EngineUnavailable(f"the {self.task} engine returned no output")
        return final

    @staticmethod
    def request_id() -> str:
        return uuid.uuid4().hex

    async def classify(
        self, text: str, min_confidence: float | None = None, level: ConformalLevel | None = None, **opts: Any
    ) -> R:
        t0 = time.perf_counter()
        ids, truncated = self.preprocess(text)
        t1 = time.perf_counter()
        out = await self.predict(ids, **opts)
        t2 = time.perf_counter()
        result = self.postprocess(out, truncated, **opts)
        if min_confidence is not None:
            result = self.abstain(result, min_confidence)
            if getattr(result, "abstained", False):
                ABSTAINED.labels(self.task).inc()
        if level is not None:
            for field, size in self.add_prediction_set(out, result, level):
                SET_SIZE.labels(self.task, field, f"{level.coverage:g}").observe(size)
        t3 = time.perf_counter()
        for stage, seconds in (("preprocess", t1 - t0), ("predict", t2 - t1), ("postprocess", t3 - t2)):
            STAGE_LATENCY.labels(self.task, stage).observe(seconds)
        ITEMS.labels(self.task).inc()
        INPUT_TOKENS.labels(self.task).observe(len(ids))
        if truncated:
            TRUNCATED.labels(self.task).inc()
        for field, label, confidence in self.top_choices(result):
            TOP1_CONFIDENCE.labels(self.task, field).observe(confidence)
            PREDICTED.labels(self.task, label).inc()
        return result

    async def classify_many(
        self,
        texts: Sequence[str],
        min_confidence: float | None = None,
        coverage: float | None = None,
        **opts: Any,
    ) -> list[R]:
        """All texts are admitted or none (a request is never half-accepted); the engine batches them."""
        self.validate(**opts)
        level = None if coverage is None else self.conformal_level(coverage, **opts)
        n = len(texts)
        if n > self.max_inflight:  # could never be accepted: retrying would not help
            raise InvalidInput(f"{n} texts exceed this server's in-flight limit of {self.max_inflight}")
        if self.inflight + n > self.max_inflight:  # answer at once rather than queue without bound
            raise Overloaded(f"{self.inflight} {self.task} texts in flight (limit {self.max_inflight})")
        self.inflight += n
        try:
            return list(await asyncio.gather(*(self.classify(t, min_confidence, level, **opts) for t in texts)))
        finally:
            self.inflight -= n
