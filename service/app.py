"""Application factory: models load in the lifespan; ready only after a warm-up request each."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
import time
from contextlib import asynccontextmanager, contextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import start_http_server

from service import errors
from service.admission import WorkBudget
from service.exceptions import EXIT_ENGINE_DEAD
from service.metrics import MODEL_INFO, READY, REGISTRY
from service.middleware import BodyLimit, RequestContext
from service.models.attack import AttackModel
from service.models.cvss import CvssModel
from service.quota import KeyQuota
from service.routes import Models, router
from service.settings import Settings, get_settings

PROCESS_START = time.perf_counter()  # as early as the service's own code runs
log = logging.getLogger("service")
PROBE_TEXTS = 8  # longest texts timed per engine at start-up (fewer if an operator's cap is lower)
WARMUP_TEXT = "Warm-up request: a buffer overflow in a network service allows remote code execution."


@contextmanager
def private_ipc_dir():
    """vLLM's engine sockets (ZeroMQ IPC files) in a folder of this process's own, removed at shutdown:
    vLLM leaves them in the temp directory otherwise."""
    folder = tempfile.mkdtemp(prefix="secclf-ipc-")
    before = os.environ.get("VLLM_RPC_BASE_PATH")
    os.environ["VLLM_RPC_BASE_PATH"] = folder
    try:
        yield folder
    finally:
        if before is None:
            os.environ.pop("VLLM_RPC_BASE_PATH", None)
        else:
            os.environ["VLLM_RPC_BASE_PATH"] = before
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def metrics_server(s: Settings):
    """/metrics on its own port when SECCLF_METRICS_PORT is set (for a scraper on a private network)."""
    if s.metrics_port is None:
        yield None
        return
    httpd, thread = start_http_server(s.metrics_port, addr=s.host, registry=REGISTRY)
    log.info("metrics on port %d", s.metrics_port)
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@asynccontextmanager
async def lifespan(app: FastAPI):
    with private_ipc_dir(), metrics_server(app.state.settings):
        async with _models_lifespan(app):
            yield


@asynccontextmanager
async def _models_lifespan(app: FastAPI):
    s: Settings = app.state.settings
    models: Models = app.state.models
    classes = app.state.model_classes
    watchdog = None
    steps = app.state.startup_seconds  # where a cold start's seconds go (GET /v1/models, make bench)
    t = time.perf_counter()
    steps["imports_and_app"] = round(t - app.state.created_at, 2)
    if s.cvss_artifact:
        models.cvss = classes["cvss"](s.cvss_artifact, s)  # verifies hashes: a tampered artifact stops start-up here
    if s.attack_artifact:
        models.attack = classes["attack"](s.attack_artifact, s)
    try:
        # Both engines start at once (each spawns and imports on its own; on 2 cores that overlaps well), and
        # each is warmed up as soon as it is up: the CVSS engine's first request takes ~2 s (its grammar
        # backend and first shapes), which then overlaps the other engine's start.
        await asyncio.gather(*(_start_model(model, s, steps) for model in models.loaded()))
        t, steps["start_and_warm_engines"] = time.perf_counter(), round(time.perf_counter() - t, 2)
        for model in models.loaded():
            manifest = model.manifest
            MODEL_INFO.labels(manifest.task).info(
                {"artifact": manifest.name, "version": manifest.version, "base_model": model.base_name}
            )
        if s.warmup:
            measured = False
            for model in models.loaded():  # one at a time: each alone on the machine
                probes = probe_texts(min(PROBE_TEXTS, model.max_inflight), s.max_text_chars)
                measured |= await asyncio.wait_for(model.measure_capacity(probes), s.warmup_timeout_s)
            steps["capacity_probe" if measured else "capacity_cached"] = round(time.perf_counter() - t, 2)
        steps["since_app_import"] = round(time.perf_counter() - PROCESS_START, 2)
        budget = WorkBudget(s.request_timeout_s * s.admission_share)  # shared: the engines share the device
        for model in models.loaded():
            model.budget = budget
        models.ready = True
        READY.set(1)
        if s.api_key_list:
            log.info("auth enabled: %d API key(s); /classify/* and /v1/models need a bearer key", len(s.api_key_list))
        else:
            log.warning("auth DISABLED: no SECCLF_API_KEYS configured; every client can classify")
        log.info("ready: cvss=%s attack=%s", bool(models.cvss), bool(models.attack))
        watchdog = asyncio.create_task(_watchdog(app))
        yield
    finally:
        models.ready = False
        READY.set(0)
        if watchdog is not None:
            watchdog.cancel()
        for model in models.loaded():
            await model.close()


async def _start_model(model, s: Settings, steps: dict[str, float]) -> None:
    """Verify, fold and start one model's engine, then warm it up (bounded: a warm-up that hangs fails
    start-up instead of leaving a pod never ready); records each part's seconds in `steps`."""
    t = time.perf_counter()
    await model.load()
    steps[f"{model.task}_engine"] = round(time.perf_counter() - t, 2)
    if s.warmup:
        t = time.perf_counter()
        await asyncio.wait_for(model.classify_many([WARMUP_TEXT]), s.warmup_timeout_s)
        steps[f"{model.task}_warmup"] = round(time.perf_counter() - t, 2)


def probe_texts(n: int, chars: int) -> list[str]:
    """`n` different texts of the longest admissible length: the slowest requests (truncation included)
    that capacity is sized on; different, so no prefix cache makes them look cheap."""
    return [(f"Probe {i}: {WARMUP_TEXT} " * (chars // len(WARMUP_TEXT) + 1))[:chars] for i in range(n)]


async def _watchdog(app: FastAPI) -> None:
    """A dead model turns /readyz to 503 at once (it reads health live); if it stays dead, exit
    non-zero so the container or pod is restarted instead of serving errors forever."""
    s: Settings = app.state.settings
    models: Models = app.state.models
    since: float | None = None
    while True:
        await asyncio.sleep(1)
        sick = [type(x).__name__ for x in models.loaded() if not x.healthy]
        if not sick:
            if since is not None:  # recovered before the exit deadline: ready again, problems cleared
                log.warning("recovered: every model is healthy again")
                models.problems = []
                READY.set(1)
            since = None
            continue
        if since is None:
            since = time.monotonic()
            models.problems = [f"{name} unhealthy" for name in sick]
            READY.set(0)
            log.error("unhealthy: %s", sick)
        elif time.monotonic() - since > s.unhealthy_exit_s:
            log.critical("still unhealthy after %.0fs (%s): exiting for a restart", s.unhealthy_exit_s, sick)
            app.state.exit_code = EXIT_ENGINE_DEAD
            server = getattr(app.state, "server", None)
            if server is not None:
                server.should_exit = True  # uvicorn drains in-flight requests, then stops; main exits 4
            else:
                os.kill(os.getpid(), signal.SIGTERM)
            return


def create_app(settings: Settings | None = None, model_classes: dict[str, type] | None = None) -> FastAPI:
    """`model_classes` ({"cvss": ..., "attack": ...}) replaces the vLLM-served models, e.g. with the fast
    test tier's fakes (subclasses of the real ones without an engine)."""
    s = settings or get_settings()
    docs = s.docs_enabled  # off by default once keys are configured: strangers learn nothing of the API
    app = FastAPI(
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        title="secclf",
        version="0.1.0",
        description="Fine-tuned cybersecurity classifiers: CVSS v3.1 vectors (vLLM, grammar-constrained) "
        "and MITRE ATT&CK techniques (vLLM pooling runner, calibrated).",
        lifespan=lifespan,
    )
    app.state.settings = s
    app.state.models = Models()
    app.state.model_classes = {"cvss": CvssModel, "attack": AttackModel, **(model_classes or {})}
    app.state.exit_code = 0
    app.state.created_at = PROCESS_START  # the start-up breakdown counts from the first import of the service
    app.state.startup_seconds = {}
    app.include_router(router)
    errors.install(app)
    if s.cors_origin_list:  # off unless origins are configured
        app.add_middleware(
            CORSMiddleware,
            allow_origins=s.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-request-id"],
        )
    app.add_middleware(
        BodyLimit,
        max_bytes=s.body_limit_bytes,
        timeout_s=s.http_body_timeout_s,
        path_limits={"/classify/attack/report": s.report_body_limit_bytes},
    )
    app.add_middleware(KeyQuota, settings=s)  # before the body is read: strangers and keys over quota cost no parsing
    # outermost: every answer, a 413 or 408 from BodyLimit too, carries a request id and is counted
    app.add_middleware(RequestContext, routes=frozenset(r.path for r in app.routes if hasattr(r, "path")))
    return app
