"""Pure-ASGI middleware: body-size limit (413) and per-route latency/in-flight metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from service.logging_setup import REQUEST_ID, new_request_id
from service.metrics import ERRORS, IN_FLIGHT, REQUEST_LATENCY, REQUESTS

access_log = logging.getLogger("service.access")


# How much of an oversized body is read and thrown away before the 413: clients that send the whole
# body before reading (urllib, requests, httpx) otherwise see a connection reset instead of the answer.
DRAIN_LIMIT_BYTES = 32 * 1024 * 1024


class BodyLimit:
    """Rejects bodies over `max_bytes` with 413, by Content-Length or while reading a chunked body, and
    bodies not received within `timeout_s` with 408 (a Content-Length never filled holds no slot)."""

    def __init__(
        self,
        app,
        max_bytes: int,
        timeout_s: float = 30.0,
        drain_limit: int = DRAIN_LIMIT_BYTES,
        path_limits: dict[str, int] | None = None,
    ) -> None:
        self.app, self.default_max, self.timeout_s, self.drain_limit = app, max_bytes, timeout_s, drain_limit
        self.path_limits = path_limits or {}  # routes taking whole documents get their own limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.path_limits.get(scope.get("path", ""), self.default_max)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._reject(receive, send, 0, limit)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        deadline = time.monotonic() + self.timeout_s
        while more:
            try:
                msg = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                ERRORS.labels("other", "body_timeout").inc()
                return await _send_json(send, 408, f"request body not received within {self.timeout_s:g} s")
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            size += len(body)
            if size > limit:
                return await self._reject(receive, send, size, limit, more)
            chunks.append(body)
            more = msg.get("more_body", False)
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
        return await _cancel_on_disconnect(self.app, scope, replay, receive, send)

    async def _reject(self, receive, send, read: int, limit: int, more: bool = True) -> None:
        while more and read <= self.drain_limit:  # bounded: a larger body ends in a closed connection
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            read += len(msg.get("body", b""))
            more = msg.get("more_body", False)
        ERRORS.labels("other", "too_large").inc()
        await _send_json(send, 413, f"request body larger than {limit} bytes")


async def _cancel_on_disconnect(app, scope, replay: list[dict], receive, send) -> None:
    """Runs the app on the read body and cancels it when the client disconnects before its answer: the
    cancellation reaches the engine calls, so vLLM aborts the work and the in-flight slots are freed."""
    gone = asyncio.Event()
    answered = False

    async def receive_replayed():
        if replay:
            return replay.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send_tracked(msg):
        nonlocal answered
        if msg["type"] == "http.response.body" and not msg.get("more_body", False):
            answered = True
        await send(msg)

    work = asyncio.ensure_future(app(scope, receive_replayed, send_tracked))

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()
        if not answered:
            work.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        await work
    except asyncio.CancelledError:
        if not gone.is_set():
            raise  # the server is cancelling us, not the client
        ERRORS.labels(getattr(scope.get("route"), "path", "other"), "client_gone").inc()
    finally:
        watcher.cancel()


async def _send_json(send, status: int, detail: str) -> None:
    """A JSON error answered from middleware; the connection closes after it (the body may be unread)."""
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*headers, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class RequestContext:
    """Request id (kept from X-Request-ID or made, returned as a header, in every log line); latency
    histogram and request counter by route template and status; in-flight gauge; one access-log line."""

    def __init__(self, app, routes: frozenset[str] = frozenset()) -> None:
        self.app, self.routes = app, routes  # label values: known route paths only, else "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        rid = new_request_id(headers.get(b"x-request-id", b"").decode("latin-1"))
        token = REQUEST_ID.set(rid)
        status = {"code": 499}  # nothing sent: the client went away first (nginx's code)
        path = scope.get("path", "")
        gauge = IN_FLIGHT.labels(path if path in self.routes else "other")  # bounded label set
        gauge.inc()

        async def send_wrapped(msg):
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
                msg = {**msg, "headers": [*msg.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(msg)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_wrapped)
        finally:
            gauge.dec()
            route = getattr(scope.get("route"), "path", "other")
            labels = (route, scope.get("method", ""), str(status["code"]))
            elapsed = time.perf_counter() - start
            REQUEST_LATENCY.labels(*labels).observe(elapsed)
            REQUESTS.labels(*labels).inc()
            access_log.info(
                "request",
                extra={
                    "method": labels[1],
                    "path": path,
                    "route": route,
                    "status": status["code"],
                    "duration_s": round(elapsed, 4),
                },
            )
            REQUEST_ID.reset(token)
