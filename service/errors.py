"""Mapping of failures to HTTP answers: client mistakes are 4xx with a message, overload/engine faults 503."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.batching import QueueFull
from service.logging_setup import REQUEST_ID
from service.metrics import ERRORS
from service.models.cvss import EngineUnavailable, UnknownAdapter

log = logging.getLogger(__name__)
RETRY_AFTER_S = "1"


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "other")


def _clean(errors) -> list[dict]:
    """Validation errors without echoing back the (possibly huge or binary) input."""
    out = []
    for e in errors:
        item = {k: e[k] for k in ("loc", "msg", "type") if k in e}
        if "ctx" in e:
            item["ctx"] = {k: str(v) for k, v in e["ctx"].items()}
        out.append(item)
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        ERRORS.labels(_route(request), "validation").inc()
        return JSONResponse({"detail": _clean(exc.errors())}, status_code=422)

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        ERRORS.labels(_route(request), "overloaded").inc()
        return JSONResponse({"detail": f"overloaded: {exc}; retry later"}, 503, headers={"Retry-After": RETRY_AFTER_S})

    @app.exception_handler(EngineUnavailable)
    async def _engine(request: Request, exc: EngineUnavailable) -> JSONResponse:
        ERRORS.labels(_route(request), "engine").inc()
        rid = REQUEST_ID.get()
        log.error("engine failure (request %s): %s", rid, exc)  # details stay in the log
        return JSONResponse(
            {"detail": f"model unavailable; request id {rid}", "request_id": rid},
            503,
            headers={"Retry-After": RETRY_AFTER_S},
        )

    @app.exception_handler(UnknownAdapter)
    async def _adapter(request: Request, exc: UnknownAdapter) -> JSONResponse:
        ERRORS.labels(_route(request), "validation").inc()
        models = request.app.state.models
        names = sorted(models.cvss.adapters) if models.cvss else []
        return JSONResponse({"detail": f"unknown adapter {exc.args[0]!r}; loaded: {names}"}, 422)
