"""Failures to HTTP answers, in one place: client mistakes are 4xx with a message, overload and engine
faults 503 with Retry-After, engine details only in the log."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.exceptions import EngineUnavailable, InvalidInput, Overloaded, ServiceError, Unauthorized, quoted
from service.logging_setup import REQUEST_ID
from service.metrics import ERRORS

log = logging.getLogger(__name__)
RETRY_AFTER_S = "1"


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", "other")


def _clean(errors) -> list[dict]:
    """Validation errors without echoing back the (possibly huge or binary) input: no `input`, and field
    names (an unknown field's name is the client's) and context cut to a short prefix."""
    out = []
    for e in errors:
        item = {k: e[k] for k in ("msg", "type") if k in e}
        item["loc"] = [part if isinstance(part, int) else quoted(part) for part in e.get("loc", ())]
        if "ctx" in e:
            item["ctx"] = {quoted(k): quoted(v) for k, v in e["ctx"].items()}
        out.append(item)
    return out


def _kind(exc: ServiceError) -> str:
    if isinstance(exc, InvalidInput):
        return "validation"
    if isinstance(exc, Overloaded):
        return "overloaded"
    if isinstance(exc, EngineUnavailable):
        return "engine"
    if isinstance(exc, Unauthorized):
        return "auth"
    return type(exc).__name__.lower()


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        ERRORS.labels(_route(request), "validation").inc()
        return JSONResponse({"detail": _clean(exc.errors())}, status_code=422)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        ERRORS.labels(_route(request), _kind(exc)).inc()
        status, body, headers = service_error_payload(exc)
        return JSONResponse(body, status, headers=headers)


def service_error_payload(exc: ServiceError) -> tuple[int, dict, dict[str, str]]:
    """(status, JSON body, headers) of a domain error: the route's answer, and the batch command's line."""
    headers = {"Retry-After": str(getattr(exc, "retry_after_s", RETRY_AFTER_S))} if exc.retry_after else {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, EngineUnavailable):
        rid = REQUEST_ID.get()
        log.error("engine failure (request %s): %s", rid, exc)  # details stay in the log
        body = {"detail": f"model unavailable; request id {rid}", "request_id": rid}
    elif isinstance(exc, Overloaded):
        body = {"detail": f"overloaded: {exc}; retry later"}
    else:
        body = {"detail": str(exc)}
    return exc.status, body, headers


def validation_payload(errors, prefix: tuple = ("body",)) -> dict:
    """A 422 body from pydantic errors, locations under `prefix` as FastAPI reports a request body's."""
    return {"detail": [{**e, "loc": [*prefix, *e.get("loc", ())]} for e in _clean(errors)]}
