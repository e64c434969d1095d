"""Application factory: models load in the lifespan; ready only after a warm-up request each."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import errors
from service.metrics import MODEL_INFO, READY
from service.middleware import BodyLimit, Metrics
from service.models.attack import AttackModel
from service.models.cvss import CvssModel
from service.routes import Models, router
from service.settings import Settings, get_settings

log = logging.getLogger("service")
WARMUP_TEXT = "Warm-up request: a buffer overflow in a network service allows remote code execution."


@asynccontextmanager
async def lifespan(app: FastAPI):
    s: Settings = app.state.settings
    m: Models = app.state.models
    if s.cvss_artifact:
        m.cvss = CvssModel(s.cvss_artifact, s)  # verifies hashes: a tampered artifact stops start-up here
    if s.attack_artifact:
        m.attack = AttackModel(s.attack_artifact, s)
    if m.attack:
        await m.attack.load()
    if m.cvss:
        await m.cvss.load()
    try:
        for model in (m.cvss, m.attack):
            if model is None:
                continue
            man = model.manifest
            MODEL_INFO.labels(man.task).info(
                {"artifact": man.name, "version": man.version, "base_model": model.base}
            )
        if s.warmup:
            if m.cvss:
                await m.cvss.classify(WARMUP_TEXT)
            if m.attack:
                await m.attack.classify_many([WARMUP_TEXT], 1)
        m.ready = True
        READY.set(1)
        log.info("ready: cvss=%s attack=%s", bool(m.cvss), bool(m.attack))
        yield
    finally:
        m.ready = False
        READY.set(0)
        if m.attack:
            await m.attack.close()
        if m.cvss:
            await m.cvss.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    s = settings or get_settings()
    app = FastAPI(
        title="secclf",
        version="0.1.0",
        description="Fine-tuned cybersecurity classifiers: CVSS v3.1 vectors (vLLM, grammar-constrained) "
        "and MITRE ATT&CK techniques (dynamically batched, calibrated).",
        lifespan=lifespan,
    )
    app.state.settings = s
    app.state.models = Models()
    app.include_router(router)
    errors.install(app)
    app.add_middleware(Metrics)
    app.add_middleware(BodyLimit, max_bytes=s.max_body_bytes)  # outermost: rejects before anything else
    return app
