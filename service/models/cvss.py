"""CVSS model: the causal LM + LoRA adapter served by vLLM's async engine with a grammar restricted to
the manifest's label vocabulary, so every answer is a valid vector.

On a CPU with one adapter the LoRA is folded into the base weights first (vLLM's CPU LoRA path costs
~3x; see bench/cvss_tuning.py); with extra adapters, or on a GPU, vLLM serves them as LoRAs."""

from __future__ import annotations

import logging
import math
import os
import uuid
from pathlib import Path

from service.metrics import GENERATED_TOKENS, ITEMS, TRUNCATED
from service.schemas import CvssMetricResult, CvssResult, ModelInfo
from service.settings import Settings
from training.manifest import ArtifactError, CvssLabels, Manifest, load_manifest
from training.metrics import score_vector
from training.modeling import base_for, load_tokenizer
from training.predict import cvss_value_token_ids, render, sharpen

log = logging.getLogger(__name__)
DEFAULT_ADAPTER = "default"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _bind_cpu_threads(setting: str) -> None:
    """Set vLLM's OpenMP binding before the engine process starts (an explicit env var wins)."""
    if "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
        return
    cores = sorted(os.sched_getaffinity(0))
    if setting == "auto" and len(cores) <= 4:
        # vLLM's auto keeps a core for its scheduler; on 2 cores that halves the model's threads (1.7x slower)
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    elif setting != "auto":
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = setting


class EngineUnavailable(RuntimeError):
    """The vLLM engine is dead or failed this request."""


class UnknownAdapter(KeyError):
    pass


class CvssModel:
    def __init__(self, artifact: Path, settings: Settings) -> None:
        self.settings = settings
        self.artifact = Path(artifact).resolve()
        self.manifest: Manifest = load_manifest(self.artifact)  # verifies every hash
        if not isinstance(self.manifest.labels, CvssLabels):
            raise ArtifactError(f"{artifact}: task {self.manifest.task!r}, expected a CVSS artifact")
        self.labels: CvssLabels = self.manifest.labels
        self.base = base_for(self.manifest, settings.base_model)
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
        self.engine = None
        self.tokenizer = None
        self._lora: dict[str, object] = {}
        self.merged = False
        self._value_ids: list[dict[int, str]] = []

    # -- load ---------------------------------------------------------------------------------
    async def load(self) -> None:
        import asyncio

        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.async_llm import AsyncLLM

        s = self.settings
        on_cpu = not _cuda()
        if on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(s.cpu_kvcache_gib))
            _bind_cpu_threads(s.cpu_threads_bind)
        self.tokenizer = load_tokenizer(self.base)
        ids = cvss_value_token_ids(self.tokenizer, self.labels)
        self._value_ids = [
            dict(zip(tids, m.values, strict=True)) for tids, m in zip(ids, self.labels.metrics, strict=True)
        ]
        merge = s.cvss_merge_adapter == "always" or (
            s.cvss_merge_adapter == "auto" and on_cpu and len(self.adapters) == 1
        )
        if merge and len(self.adapters) > 1:
            raise ArtifactError("cvss_merge_adapter=always serves one adapter; extra adapters need LoRA serving")
        model = self.base
        if merge:
            from training.merging import merged_model_dir

            merged = await asyncio.to_thread(merged_model_dir, self.base, self.artifact, self.manifest, s.cache_dir)
            model = str(merged)
        self.merged = merge
        rank = max(int(m.hyperparameters.get("lora_r", 16)) for _, m in self.adapters.values())
        lora = (
            {}
            if merge
            else {
                "enable_lora": True,
                "max_lora_rank": max(s.max_lora_rank, rank),
                "max_loras": max(1, len(self.adapters)),
            }
        )
        args = AsyncEngineArgs(
            model=model,
            tokenizer=self.base,
            dtype=self._dtype(),
            max_model_len=s.max_model_len,
            gpu_memory_utilization=s.gpu_memory_utilization,
            enforce_eager=s.enforce_eager,
            max_num_seqs=s.max_num_seqs,
            tensor_parallel_size=s.tensor_parallel_size,
            logprobs_mode="processed_logprobs",  # probabilities after the grammar mask
            trust_remote_code=False,
            enable_prefix_caching=True,
            **lora,
        )
        if merge:
            from training.merging import reading

            with reading(s.cache_dir):  # the cached folder cannot be rebuilt while vLLM loads it
                self.engine = AsyncLLM.from_engine_args(args)
        else:
            self.engine = AsyncLLM.from_engine_args(args)
        self._lora = {
            name: None if merge else LoRARequest(f"{name}-{m.version}", i + 1, str(path))
            for i, (name, (path, m)) in enumerate(self.adapters.items())
        }
        log.info(
            "CVSS engine ready: base=%s adapters=%s (%s)",
            self.base,
            list(self.adapters),
            f"merged into {model}" if merge else "LoRA",
        )

    def _dtype(self) -> str:
        if self.settings.vllm_dtype != "auto":
            return self.settings.vllm_dtype
        # CPUs without bf16 units (AVX2 only) run vLLM's bf16 path about 2.5x slower than fp32
        return "bfloat16" if _cuda() else "float32"

    async def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    @property
    def healthy(self) -> bool:
        return self.engine is not None and not self.engine.errored

    def info(self, adapter: str = DEFAULT_ADAPTER) -> ModelInfo:
        m = self.adapters[adapter][1]
        return ModelInfo(name=m.name, version=m.version, task="cvss", base_model=self.base, adapter=adapter)

    # -- preprocess / predict / postprocess -----------------------------------------------------
    def preprocess(self, text: str) -> tuple[list[int], bool]:
        """Token ids made exactly as training made them: same truncation, template and encoding, and no
        special tokens (a Llama-3 tokenizer would otherwise add a BOS that training never saw)."""
        prompt, truncated = render(self.tokenizer, self.manifest, text)
        return self.tokenizer.encode(prompt, add_special_tokens=False), truncated

    def sampling_params(self):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        width = max(len(m.values) for m in self.labels.metrics)
        # The grammar fixes which metric comes next; the allowed ids keep each step to the single-token
        # values (no bare-space token then a letter). Together they leave exactly one metric's values,
        # and `width` logprobs then cover every allowed value of every metric.
        return SamplingParams(
            temperature=0.0,
            max_tokens=len(self.labels.metrics),
            logprobs=width,
            allowed_token_ids=sorted({t for ids in self._value_ids for t in ids}),
            structured_outputs=StructuredOutputsParams(regex=self.labels.answer_regex()),
        )

    def lora_request(self, adapter: str = DEFAULT_ADAPTER):
        if adapter not in self._lora:
            raise UnknownAdapter(adapter)
        return self._lora[adapter]

    async def predict(self, prompt_ids: list[int], adapter: str = DEFAULT_ADAPTER):
        from vllm.inputs import TokensPrompt

        lora = self.lora_request(adapter)
        if not self.healthy:
            raise EngineUnavailable("the vLLM engine is not running")
        final = None
        try:
            async for out in self.engine.generate(
                TokensPrompt(prompt_token_ids=prompt_ids),
                self.sampling_params(),
                request_id=uuid.uuid4().hex,
                lora_request=lora,
            ):
                final = out
        except Exception as e:  # engine dead or request failed inside the engine
            raise EngineUnavailable(f"vLLM generation failed: {e}") from e
        if final is None:
            raise EngineUnavailable("vLLM returned no output")
        return final.outputs[0]

    def postprocess(self, completion, truncated: bool, adapter: str = DEFAULT_ADAPTER) -> CvssResult:
        """Per metric: the processed (post-grammar) logprobs of its allowed values, renormalised."""
        steps = completion.logprobs or []
        if len(completion.token_ids) != len(self.labels.metrics) or len(steps) != len(self.labels.metrics):
            log.error("unexpected completion %r: not one token per metric", completion.text)
            raise EngineUnavailable("the model's answer was not one value per metric")
        metrics: dict[str, CvssMetricResult] = {}
        values: dict[str, str] = {}
        temperature = self.adapters[adapter][1].temperature  # the calibration fitted with this adapter
        for m, allowed, step in zip(self.labels.metrics, self._value_ids, steps, strict=True):
            mass = {v: 0.0 for v in m.values}
            for token_id, lp in step.items():
                if token_id in allowed and lp.logprob is not None and math.isfinite(lp.logprob):
                    mass[allowed[token_id]] = math.exp(lp.logprob)
            total = sum(mass.values())
            if total <= 0:
                raise EngineUnavailable(f"no probability mass on the allowed values of {m.key}")
            probs = sharpen({v: p / total for v, p in mass.items()}, temperature)
            best = max(probs, key=probs.get)
            values[m.key] = best
            metrics[m.key] = CvssMetricResult(value=best, label=m.values[best], probabilities=probs)
        vector = self.labels.vector(values)
        score, severity = score_vector(vector)
        ITEMS.labels("cvss").inc()
        GENERATED_TOKENS.labels("cvss").inc(len(completion.token_ids))
        if truncated:
            TRUNCATED.labels("cvss").inc()
        return CvssResult(
            vector=vector,
            base_score=score,
            severity=severity,
            metrics=metrics,
            truncated=truncated,
            model=self.info(adapter),
        )

    async def classify(self, text: str, adapter: str = DEFAULT_ADAPTER) -> CvssResult:
        prompt_ids, truncated = self.preprocess(text)
        return self.postprocess(await self.predict(prompt_ids, adapter), truncated, adapter)
