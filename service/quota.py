"""Authentication before the body is read, and a cap on each API key's requests in flight.

Pure ASGI, outside the body limit: a request without a valid key is answered 401 from its headers alone
(no JSON is parsed for strangers), and a key already at its limit gets 429 with a Retry-After taken from the
work in flight (service/admission.py), so one client cannot take every slot from the others. Keys are
compared in constant time; a key is named in settings and logs only by its fingerprint (sha256 prefix)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter

from service.metrics import ERRORS
from service.middleware import DRAIN_LIMIT_BYTES
from service.security import bearer, match_key
from service.settings import Settings

PROTECTED_PREFIXES = ("/classify/", "/v1/models")
DISCARD_LIMIT = 1 << 20  # body bytes read (not parsed) before a 401; past it the connection just closes
DISCARD_SECONDS = 1.0


def fingerprint(key: str) -> str:
    """How settings and logs name a key: the first 12 hex digits of its sha256."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class KeyQuota:
    def __init__(self, app, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self.inflight: Counter[str] = Counter()

    def limit(self, key: str) -> int:
        s = self.settings
        return s.key_concurrency_overrides.get(fingerprint(key), s.key_max_concurrency)

    async def __call__(self, scope, receive, send):
        keys = self.settings.api_key_list
        if scope["type"] != "http" or not keys or not scope.get("path", "").startswith(PROTECTED_PREFIXES):
            return await self.app(scope, receive, send)
        key = match_key(bearer(scope.get("headers") or []), keys)
        if key is None:
            ERRORS.labels("other", "auth").inc()
            await _discard_body(receive, DISCARD_LIMIT)  # read, never parsed: clients that write first get the 401
            return await _answer(send, 401, "missing or invalid API key", {b"www-authenticate": b"Bearer"})
        if self.inflight[key] >= self.limit(key):
            ERRORS.labels("other", "quota").inc()
            # unparsed, bounded like a body over the limit (a key holder, not a stranger): a client that writes
            # its whole body first, even one over the body limit, still reads its 429 instead of a reset
            await _discard_body(receive, DRAIN_LIMIT_BYTES, self.settings.http_body_timeout_s)
            retry = str(self._retry_after(scope)).encode()
            detail = f"this key already has {self.inflight[key]} requests in flight (its limit); retry later"
            return await _answer(send, 429, detail, {b"retry-after": retry})
        self.inflight[key] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight[key] -= 1

    @staticmethod
    def _retry_after(scope) -> int:
        """The seconds of engine work in flight, when the models share a measured budget; else 1."""
        app = scope.get("app")
        models = getattr(getattr(app, "state", None), "models", None)
        for model in models.loaded() if models is not None else []:
            if model.budget is not None:
                return model.budget.retry_after_s()
        return 1


async def _discard_body(receive, limit: int, seconds: float = DISCARD_SECONDS) -> None:
    """Read what the client already sent, bounded in bytes and time: a stranger's body never holds us."""
    read, more = 0, True
    deadline = time.monotonic() + seconds
    while more and read <= limit:
        try:
            msg = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return
        if msg["type"] == "http.disconnect":
            return
        read += len(msg.get("body", b""))
        more = msg.get("more_body", False)


async def _answer(send, status: int, detail: str, headers: dict[bytes, bytes]) -> None:
    """Answered from the headers; the connection closes after it, whatever body was coming."""
    body = json.dumps({"detail": detail}).encode()
    base = {b"content-type": b"application/json", b"content-length": str(len(body)).encode(), b"connection": b"close"}
    await send({"type": "http.response.start", "status": status, "headers": list({**base, **headers}.items())})
    await send({"type": "http.response.body", "body": body})
