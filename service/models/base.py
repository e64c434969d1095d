"""The one base class of the vLLM-served models: load / healthy / close / info, then per text
preprocess -> predict -> postprocess with stage timing, behind a bounded count of texts in flight."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from service import capacity_cache
from service.admission import WorkBudget
from service.engine import engine_dtype
from service.exceptions import EngineUnavailable, InvalidInput, Overloaded, quoted
from service.metrics import (
    ABSTAINED,
    ENGINE_UNFINISHED,
    INPUT_TOKENS,
    ITEMS,
    PREDICTED,
    SET_SIZE,
    STAGE_LATENCY,
    TOP1_CONFIDENCE,
    TRUNCATED,
)
from service.schemas import ModelInfo
from service.settings import MAX_ITEMS, Settings
from training.artifact.base_model import pin_revision
from training.artifact.encoding import check_template, encode_prompt
from training.artifact.loading import base_for, load_tokenizer
from training.artifact.manifest import ArtifactError, ConformalLevel, Manifest, load_manifest

log = logging.getLogger(__name__)
R = TypeVar("R")
# the settings that change an engine's work per text (with the dtype it resolves to)
ENGINE_SETTINGS = {
    "max_text_chars",
    "max_model_len",
    "max_num_seqs",
    "enforce_eager",
    "tensor_parallel_size",
    "cvss_merge_adapter",
    "cvss_extra_adapters",
    "cvss_kv_cache_gib",
    "attack_kv_cache_gib",
    "cpu_threads_bind",
}


def public_name(name_or_path: str) -> str:
    """A base model as clients and metrics may see it: a hub id as is, a local folder by its name only."""
    return Path(name_or_path).name if Path(name_or_path).is_absolute() else name_or_path


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
        # never the server's path: the folder's name with its verified weights hash, or the hub id@revision
        weights = self.manifest.base_model.weights_sha256 if settings.base_model is None else None
        self.base_name = public_name(self.base) + (
            f"@sha256:{weights[:12]}" if weights and Path(self.base).is_dir() else f"@{revision}" if revision else ""
        )
        pin_revision(self.base, revision)
        if not Path(self.base).is_dir() and not revision:
            log.warning("base model %s is a hub id with no pinned revision (SECCLF_BASE_MODEL_REVISION)", self.base)
        self.engine = None
        self.tokenizer = None
        self.inflight = 0  # texts accepted and not yet answered
        # one thread per model: a fast tokenizer is not safe to share between threads
        self.tokenizer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tokenize-{self.task}")
        self.seconds_per_text = 0.0  # engine work per longest admissible text, alone (0: not measured)
        self.capacity = MAX_ITEMS  # texts this model alone finishes within the deadline share (measured)
        self.budget: WorkBudget | None = None  # the process's shared seconds of work in flight (app sets it)

    # -- subclasses ------------------------------------------------------------------------------
    @property
    @abstractmethod
    def configured_inflight(self) -> int | None:
        """The operator's in-flight limit (texts), or None to use the measured capacity."""

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

    @property
    def max_inflight(self) -> int:
        """Texts one request may bring, and the limit on texts in flight when the operator set one."""
        return self.configured_inflight or self.capacity

    def capacity_identity(self, probes: int) -> dict[str, Any]:
        """Everything the measured seconds per text depend on: the cache key of a measurement."""
        import vllm

        s = self.settings
        return {
            "task": self.task,
            "server": type(self).__qualname__,  # another implementation does other work per text
            "base": self.base_name,
            "files": self.manifest.files,  # adapter, head, prompt: their hashes
            "engine": s.model_dump(mode="json", include=ENGINE_SETTINGS) | {"dtype": engine_dtype(s)},
            "probes": probes,
            "vllm": vllm.__version__,
            "machine": capacity_cache.machine(),
        }

    async def measure_capacity(self, probes: list[str]) -> bool:
        """The engine work per text that admission counts (service/admission.py): an earlier start's
        measurement when one matches, else the longest admissible texts timed together, this model alone on
        the machine. Returns whether it was measured now."""
        s = self.settings
        identity = self.capacity_identity(len(probes))
        cached = capacity_cache.load(s.cache_dir, identity) if s.capacity_cache else None
        if cached is None:
            t0 = time.perf_counter()
            await self.classify_many(probes)
            self.seconds_per_text = (time.perf_counter() - t0) / len(probes)
            if s.capacity_cache:
                await asyncio.to_thread(capacity_cache.store, s.cache_dir, identity, self.seconds_per_text)
        else:
            self.seconds_per_text = cached
        self.capacity = max(MAX_ITEMS, int(s.request_timeout_s * s.admission_share / self.seconds_per_text))
        log.info(
            "%s: %.3f s of engine work per longest text (%s); alone, %d texts fit in %.0f%% of the deadline",
            self.task,
            self.seconds_per_text,
            "measured" if cached is None else "cached",
            self.capacity,
            100 * s.admission_share,
        )
        return cached is None

    def _admit(self, n: int) -> float:
        """Admit `n` texts or raise Overloaded at once; returns the work (seconds) to release afterwards."""
        if self.configured_inflight is not None and self.inflight + n > self.configured_inflight:
            raise Overloaded(f"{self.inflight} {self.task} texts in flight (limit {self.configured_inflight})")
        cost = n * self.seconds_per_text
        if self.budget is not None and cost > 0 and not self.budget.admit(cost):
            raise Overloaded(
                f"{self.budget.used_s:.0f} s of engine work in flight (limit {self.budget.limit_s:.0f} s)",
                self.budget.retry_after_s(),
            )
        return cost if self.budget is not None else 0.0

    # -- lifecycle -------------------------------------------------------------------------------
    async def load(self) -> None:
        self.tokenizer = load_tokenizer(self.base)
        check_template(self.tokenizer, self.manifest)
        self.check_model_len()
        self.engine = await self.start_engine()
        ENGINE_UNFINISHED.labels(self.task).set_function(self.unfinished_requests)

    def unfinished_requests(self) -> int:
        """What the engine holds now (running plus waiting): aborted work leaves it at once."""
        engine = self.engine
        return engine.get_num_unfinished_requests() if engine is not None else 0

    def answer_tokens(self) -> int:
        """Tokens the engine generates after the prompt (pooling: none)."""
        return 0

    def check_model_len(self) -> None:
        """The engine's window must hold the longest prompt the manifest allows plus the answer."""
        template = len(encode_prompt(self.tokenizer, self.manifest, "")[0])
        need = template + self.manifest.max_input_tokens + self.answer_tokens() + 2  # +2: merges at the seams
        if self.settings.max_model_len < need:
            raise ArtifactError(
                f"SECCLF_MAX_MODEL_LEN={self.settings.max_model_len} cannot hold a {self.task} prompt: "
                f"template {template} + input {self.manifest.max_input_tokens} + answer {self.answer_tokens()} "
                f"tokens need {need}"
            )

    async def close(self) -> None:
        self.tokenizer_pool.shutdown(wait=False, cancel_futures=True)
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    @property
    def healthy(self) -> bool:
        return self.engine is not None and not self.engine.errored

    def info(self, adapter: str | None = None) -> ModelInfo:
        manifest = self.manifest
        return ModelInfo(
            name=manifest.name, version=manifest.version, task=self.task, base_model=self.base_name, adapter=adapter
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
        except ValueError as e:  # vLLM's input validation: the input's fault, not the engine's (a 4xx)
            raise InvalidInput(f"the {self.task} model cannot take this text: {quoted(str(e), 200)}") from e
        except Exception as e:
            raise EngineUnavailable(f"{self.task} engine request failed: {type(e).__name__}: {e}") from e
        if final is None:
            raise EngineUnavailable(f"the {self.task} engine returned no output")
        return final

    @staticmethod
    def request_id() -> str:
        return uuid.uuid4().hex

    def preprocess_all(self, texts: Sequence[str]) -> list[tuple[list[int], bool, float]]:
        """Every text's ids, truncation flag and seconds spent: run on the tokenizer thread, off the loop."""
        out = []
        for text in texts:
            t0 = time.perf_counter()
            ids, truncated = self.preprocess(text)
            out.append((ids, truncated, time.perf_counter() - t0))
        return out

    async def classify(
        self,
        encoded: tuple[list[int], bool, float],
        min_confidence: float | None = None,
        level: ConformalLevel | None = None,
        **opts: Any,
    ) -> R:
        out, truncated = await self._output(encoded, **opts)  # predict, with the per-text counters
        t2 = time.perf_counter()
        result = self.postprocess(out, truncated, **opts)
        if min_confidence is not None:
            result = self.abstain(result, min_confidence)
            if getattr(result, "abstained", False):
                ABSTAINED.labels(self.task).inc()
        if level is not None:
            for field, size in self.add_prediction_set(out, result, level):
                SET_SIZE.labels(self.task, field, f"{level.coverage:g}").observe(size)
        STAGE_LATENCY.labels(self.task, "postprocess").observe(time.perf_counter() - t2)
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
        return await self._admitted(texts, lambda e: self.classify(e, min_confidence, level, **opts))

    async def outputs_many(self, texts: Sequence[str], **opts: Any) -> list[tuple[Any, bool]]:
        """(engine output, truncated) per text, admitted as `classify_many` admits: for callers that reduce
        the outputs themselves (the report pipeline)."""
        self.validate(**opts)
        return await self._admitted(texts, lambda e: self._output(e, **opts))

    async def _output(self, encoded: tuple[list[int], bool, float], **opts: Any) -> tuple[Any, bool]:
        ids, truncated, preprocess_s = encoded
        t1 = time.perf_counter()
        out = await self.predict(ids, **opts)
        STAGE_LATENCY.labels(self.task, "preprocess").observe(preprocess_s)
        STAGE_LATENCY.labels(self.task, "predict").observe(time.perf_counter() - t1)
        ITEMS.labels(self.task).inc()
        INPUT_TOKENS.labels(self.task).observe(len(ids))
        if truncated:
            TRUNCATED.labels(self.task).inc()
        return out, truncated

    async def _admitted(self, texts: Sequence[str], work: Callable[[tuple[list[int], bool, float]], Any]) -> list:
        n = len(texts)
        if n > self.max_inflight:  # could never be accepted: retrying would not help
            raise InvalidInput(f"{n} texts exceed this server's in-flight limit of {self.max_inflight}")
        cost = self._admit(n)  # answer at once rather than queue without bound
        self.inflight += n
        try:
            # Tokenizing 64 long texts takes tens of milliseconds: on the tokenizer thread, the event loop
            # keeps answering probes and refusals meanwhile.
            loop = asyncio.get_running_loop()
            encoded = await loop.run_in_executor(self.tokenizer_pool, self.preprocess_all, texts)
            # A TaskGroup, not gather: a failed text cancels its siblings (vLLM aborts them) and the slots are
            # released only once every text has left the engine, so `inflight` never undercounts.
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(work(e)) for e in encoded]
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None  # the first failure is the request's answer
        finally:
            self.inflight -= n
            if cost:
                self.budget.release(cost)
        return [t.result() for t in tasks]
