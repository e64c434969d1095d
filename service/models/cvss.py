"""CVSS model: the causal LM + LoRA adapter served by vLLM's async engine with a grammar restricted to
the manifest's label vocabulary, so every answer is a valid vector.

On a CPU with one adapter the LoRA is folded into the base weights first (vLLM's CPU LoRA path costs
~3x; see bench/cvss_tuning.py); with extra adapters, or on a GPU, vLLM serves them as LoRAs."""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path

from service.engine import on_gpu, start_engine
from service.exceptions import EngineUnavailable, InvalidInput, UnknownAdapter
from service.metrics import GENERATED_TOKENS
from service.models.base import VllmModel
from service.schemas import CvssMetricResult, CvssResult
from service.settings import Settings
from training.artifact.base_model import revision_of
from training.artifact.conformal import VectorSet
from training.artifact.encoding import cvss_value_token_ids, sharpen
from training.artifact.folding import folded_model_dir, reading
from training.artifact.manifest import ArtifactError, ConformalLevel, CvssLabels, Manifest, load_manifest
from training.artifact.scoring import score_vector

log = logging.getLogger(__name__)
DEFAULT_ADAPTER = "default"


class CvssModel(VllmModel[CvssResult]):
    task = "cvss"

    def __init__(self, artifact: Path, settings: Settings) -> None:
        super().__init__(artifact, settings)
        if not isinstance(self.manifest.labels, CvssLabels):
            raise ArtifactError(f"{artifact}: labels are not CVSS labels")
        self.labels: CvssLabels = self.manifest.labels
        self.adapters: dict[str, tuple[Path, Manifest]] = {DEFAULT_ADAPTER: (self.artifact, self.manifest)}
        for name, path in settings.cvss_extra_adapters.items():
            extra = load_manifest(Path(path))
            if (
                extra.task != "cvss"
                or extra.labels != self.labels
                or extra.prompt_template != self.manifest.prompt_template
            ):
                raise ArtifactError(f"adapter {name} ({path}) is not a CVSS adapter with the same labels and prompt")
            if extra.base_model.weights_sha256 != self.manifest.base_model.weights_sha256:
                raise ArtifactError(f"adapter {name} ({path}) was trained on another base model")
            self.adapters[name] = (Path(path).resolve(), extra)
        self._lora: dict[str, object] = {}
        self.merged = False
        self._value_ids: list[dict[int, str]] = []
        self._params: dict[str, object] = {}  # adapter -> its SamplingParams

    def answer_tokens(self) -> int:
        return len(self.labels.metrics)  # one value token per metric

    @property
    def configured_inflight(self) -> int | None:
        return self.settings.max_inflight_cvss

    # -- load ---------------------------------------------------------------------------------
    async def start_engine(self):
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        from service.models.value_shift import EXTRA_ARG, step_tables
        from service.models.value_shift import QUALNAME as SHIFT_PROCESSOR

        s = self.settings
        ids = cvss_value_token_ids(self.tokenizer, self.labels)
        self._value_ids = [
            dict(zip(tids, metric.values, strict=True)) for tids, metric in zip(ids, self.labels.metrics, strict=True)
        ]

        def params(manifest: Manifest) -> SamplingParams:
            # The grammar fixes which metric comes next; the allowed ids keep each step to the single-token
            # values (no bare-space token then a letter). Together they leave exactly one metric's values,
            # and `width` logprobs then cover every allowed value of every metric.
            shifts = manifest.prior_correction
            return SamplingParams(
                # one output at the end, as vLLM's server asks for a non-streamed completion: the default
                # (cumulative) has the engine send, and this process rebuild, a growing output at every step
                output_kind=RequestOutputKind.FINAL_ONLY,
                temperature=0.0,
                max_tokens=len(self.labels.metrics),
                logprobs=max(len(metric.values) for metric in self.labels.metrics),
                allowed_token_ids=sorted({t for ids in self._value_ids for t in ids}),
                structured_outputs=StructuredOutputsParams(regex=self.labels.answer_regex()),
                extra_args=None
                if shifts is None
                else {EXTRA_ARG: step_tables(ids, [shifts.bias(m.key, list(m.values)) for m in self.labels.metrics])},
            )

        self._params = {name: params(manifest) for name, (_, manifest) in self.adapters.items()}
        merge = s.cvss_merge_adapter == "always" or (
            s.cvss_merge_adapter == "auto" and not on_gpu() and len(self.adapters) == 1
        )
        if merge and len(self.adapters) > 1:
            raise ArtifactError("cvss_merge_adapter=always serves one adapter; extra adapters need LoRA serving")
        self.merged = merge
        common = {
            "tokenizer": self.base,
            "tokenizer_revision": revision_of(self.base),
            "logprobs_mode": "processed_logprobs",  # probabilities after the grammar mask
            "enable_prefix_caching": True,
        }
        if any(manifest.prior_correction for _, manifest in self.adapters.values()):
            common["logits_processors"] = [SHIFT_PROCESSOR]
        if merge:
            folded = await asyncio.to_thread(folded_model_dir, self.base, self.artifact, self.manifest, s.cache_dir)
            # the cached folder cannot be rebuilt while vLLM loads it
            model, extra = str(folded), {"lock": reading(s.cache_dir)}
        else:
            rank = max(int(manifest.hyperparameters.get("lora_r", 16)) for _, manifest in self.adapters.values())
            model = self.base
            extra = {"enable_lora": True, "max_lora_rank": max(s.max_lora_rank, rank), "max_loras": len(self.adapters)}
        self._lora = {
            name: None if merge else LoRARequest(f"{name}-{manifest.version}", i + 1, str(path))
            for i, (name, (path, manifest)) in enumerate(self.adapters.items())
        }
        log.info("CVSS engine starting: base=%s adapters=%s merged=%s", self.base_name, list(self.adapters), merge)
        # Returned, never bound to a local: vLLM keeps a frame object from inside this call alive (its f_back
        # chain reaches this frame), so a local would hold the engine past close() until interpreter teardown,
        # where its __del__ fails ("TypeError: 'NoneType' object is not callable").
        # off the loop: the two engines start side by side
        return await asyncio.to_thread(start_engine, model, "cvss", s, s.cvss_kv_cache_gib, **common, **extra)

    def info(self, adapter: str | None = DEFAULT_ADAPTER):
        manifest = self.adapters[adapter or DEFAULT_ADAPTER][1]
        return super().info(adapter).model_copy(update={"name": manifest.name, "version": manifest.version})

    # -- predict / postprocess ------------------------------------------------------------------
    def validate(self, adapter: str = DEFAULT_ADAPTER) -> None:
        self.lora_request(adapter)

    def lora_request(self, adapter: str = DEFAULT_ADAPTER):
        if adapter not in self._lora:
            raise UnknownAdapter(adapter, list(self.adapters))
        return self._lora[adapter]

    def top_choices(self, result: CvssResult) -> list[tuple[str, str, float]]:
        return [(k, f"{k}:{metric.value}", metric.probabilities[metric.value]) for k, metric in result.metrics.items()]

    def manifest_for(self, adapter: str = DEFAULT_ADAPTER, **_) -> Manifest:
        return self.adapters[adapter][1]

    def conformal_level(self, coverage: float, adapter: str = DEFAULT_ADAPTER, **opts) -> ConformalLevel:
        level = super().conformal_level(coverage, adapter=adapter, **opts)
        if level.vector_nll is None:  # per-metric thresholds of an older release
            raise InvalidInput(
                f"adapter {adapter!r} has no vector thresholds; its artifact needs `python -m training conformal`"
            )
        return level

    def add_prediction_set(self, completion, result: CvssResult, level: ConformalLevel):
        probs = {key: metric.probabilities for key, metric in result.metrics.items()}
        vectors = VectorSet(self.labels, probs, level.vector_nll)
        for key, values in vectors.sets.items():
            result.metrics[key].prediction_set = values
        result.base_score_range = vectors.base_score_range
        return [("vector", vectors.size), *((key, len(values)) for key, values in vectors.sets.items())]

    def abstain(self, result: CvssResult, min_confidence: float) -> CvssResult:
        for metric in result.metrics.values():
            metric.abstained = metric.probabilities[metric.value] < min_confidence
        result.abstained = any(metric.abstained for metric in result.metrics.values())
        return result

    async def predict(self, prompt_ids: list[int], adapter: str = DEFAULT_ADAPTER):
        return await self.generate(prompt_ids, self._params[adapter], self.lora_request(adapter))

    async def generate(self, prompt_ids: list[int], params, lora_request=None):
        """One completion from the engine with the caller's sampling parameters and LoRA (None: the base
        or the folded default); `predict` uses it with the label grammar, benchmarks with their own."""
        from vllm.inputs import TokensPrompt

        final = await self.final_output(
            lambda: self.engine.generate(
                TokensPrompt(prompt_token_ids=prompt_ids),
                params,
                request_id=self.request_id(),
                lora_request=lora_request,
            )
        )
        return final.outputs[0]

    def postprocess(self, completion, truncated: bool, adapter: str = DEFAULT_ADAPTER) -> CvssResult:
        """Per metric: the processed (post-grammar) logprobs of its allowed values, renormalised."""
        steps = completion.logprobs or []
        if len(completion.token_ids) != len(self.labels.metrics) or len(steps) != len(self.labels.metrics):
            log.error("unexpected completion %r: not one token per metric", completion.text)
            raise EngineUnavailable("the model's answer was not one value per metric")
        metrics: dict[str, CvssMetricResult] = {}
        values: dict[str, str] = {}
        temperature = self.manifest_for(adapter).temperature  # the calibration fitted with this adapter
        for metric, allowed, step in zip(self.labels.metrics, self._value_ids, steps, strict=True):
            mass = {v: 0.0 for v in metric.values}
            for token_id, lp in step.items():
                if token_id in allowed and lp.logprob is not None and math.isfinite(lp.logprob):
                    mass[allowed[token_id]] = math.exp(lp.logprob)
            total = sum(mass.values())
            if total <= 0:
                raise EngineUnavailable(f"no probability mass on the allowed values of {metric.key}")
            probs = sharpen({v: p / total for v, p in mass.items()}, temperature)
            best = max(probs, key=probs.get)
            values[metric.key] = best
            metrics[metric.key] = CvssMetricResult(value=best, label=metric.values[best], probabilities=probs)
        vector = self.labels.vector(values)
        score, severity = score_vector(vector)
        GENERATED_TOKENS.labels("cvss").inc(len(completion.token_ids))
        return CvssResult(
            vector=vector,
            base_score=score,
            severity=severity,
            metrics=metrics,
            truncated=truncated,
            model=self.info(adapter),
        )
