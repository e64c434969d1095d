"""Building a vLLM `AsyncLLM` for one model: CPU thread binding, dtype, KV-cache size, and a stat logger
that publishes what the engine's scheduler knows (running and waiting requests, queue time) to /metrics."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from service import fork_server
from service.metrics import ENGINE_QUEUE_TIME, ENGINE_RUNNING, ENGINE_WAITING
from service.settings import Settings
from training.artifact.base_model import revision_of
from training.artifact.loading import default_dtype

GIB = 1 << 30


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def bind_cpu_threads(setting: str) -> None:
    """Set vLLM's OpenMP binding before an engine process starts (an explicit env var wins)."""
    if "VLLM_CPU_OMP_THREADS_BIND" in os.environ:
        return
    cores = sorted(os.sched_getaffinity(0))
    if setting == "auto" and len(cores) <= 4:
        # vLLM's auto keeps a core for its scheduler; on 2 cores that halves the model's threads (1.7x slower)
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    elif setting != "auto":
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = setting


def engine_dtype(s: Settings) -> str:
    return default_dtype(on_gpu()) if s.vllm_dtype == "auto" else s.vllm_dtype


def can_compile() -> bool:
    """Whether torch.compile can build the engines here: on a CPU, Inductor compiles C++ (with $CXX or g++)."""
    return on_gpu() or any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++"))


def _compiled_on_cpu(s: Settings) -> None:
    """Environment for a compiled CPU engine, before its process starts."""
    # vLLM 0.32's AOT cache fails to load on a CPU ("'function' object has no attribute 'finalize_loading'")
    # and recompiles at every start (~70 s on 2 cores); Inductor's own cache then makes a restart ~10 s
    os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
    # beside the folded checkpoints (a container's volume), not in /tmp
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(s.cache_dir).resolve() / "inductor"))


def _stat_logger(model: str):
    from vllm.v1.metrics.loggers import StatLoggerBase

    class EngineStats(StatLoggerBase):
        """Runs in the service process on every engine step's stats (vLLM calls `record`)."""

        def __init__(self, vllm_config, engine_index: int = 0) -> None:
            self.model = model

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
            if scheduler_stats is not None:
                ENGINE_RUNNING.labels(self.model).set(scheduler_stats.num_running_reqs)
                ENGINE_WAITING.labels(self.model).set(scheduler_stats.num_waiting_reqs)
            if iteration_stats is not None:
                for done in iteration_stats.finished_requests:
                    ENGINE_QUEUE_TIME.labels(self.model).observe(done.queued_time)

        def log_engine_initialized(self) -> None:
            pass

    return EngineStats


def start_engine(model: str, metrics_name: str, s: Settings, kv_cache_gib: float, lock=None, **extra: Any):
    """An `AsyncLLM` over `model` (a folder or id) with this service's common settings plus `extra`.

    `lock` is held while vLLM reads the folder (the folded-model cache's reader lock)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    if not on_gpu():
        bind_cpu_threads(s.cpu_threads_bind)
        if s.tensor_parallel_size == 1:
            # vLLM's CPU platform turns "uni" back into a separate worker process unless this is 0; it only
            # changes the synchronous LLM (which this service does not use) otherwise. One process per engine
            # instead of two: ~20 s less of start-up on 2 cores, and no IPC hop per step.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if not s.enforce_eager:
            _compiled_on_cpu(s)
        fork_server.route_vllm_engines()
    args = AsyncEngineArgs(
        model=model,
        dtype=engine_dtype(s),
        max_model_len=s.max_model_len,
        gpu_memory_utilization=s.gpu_memory_utilization,
        kv_cache_memory_bytes=int(kv_cache_gib * GIB),  # per engine: two share one device
        enforce_eager=s.enforce_eager,
        max_num_seqs=s.max_num_seqs,
        tensor_parallel_size=s.tensor_parallel_size,
        trust_remote_code=False,
        revision=revision_of(model),  # a hub id served directly (LoRA mode) loads at its pinned revision
        # one device: the worker runs inside the engine-core process instead of a process of its own (one
        # spawn and one round of imports less per engine at start-up; on a CPU see above)
        distributed_executor_backend="uni" if s.tensor_parallel_size == 1 else None,
        **extra,
    )
    with lock or contextlib.nullcontext():
        return AsyncLLM.from_engine_args(args, stat_loggers=[_stat_logger(metrics_name)])
