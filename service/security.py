"""Bearer-key authentication (constant-time comparison; several keys for rotation)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.exceptions import Unauthorized

# Declares the bearer scheme in the OpenAPI document; the header is checked below (first header wins)
BEARER = HTTPBearer(auto_error=False, description="One of the server's SECCLF_API_KEYS")
Declared = Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]


def bearer(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The token of the first Authorization header (raw ASGI headers), if it is a bearer one."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip().encode() if scheme.lower() == "bearer" else b""
    return b""


def match_key(given: bytes, keys: list[str]) -> str | None:
    found = None
    for key in keys:  # every key compared, no early exit: timing does not tell which (or which prefix) matched
        if hmac.compare_digest(given, key.encode()):
            found = key
    return found


# The dependencies below are `async def`: FastAPI runs a plain `def` dependency on its thread pool, a thread
# hop per dependency per request for a few dictionary lookups.
def check_api_key(request: Request) -> None:
    keys: list[str] = request.app.state.settings.api_key_list
    if keys and match_key(bearer(request.scope.get("headers") or []), keys) is None:
        raise Unauthorized("missing or invalid API key")


async def require_api_key(request: Request, _declared: Declared = None) -> None:
    check_api_key(request)


async def require_api_key_for_ops(request: Request, _declared: Declared = None) -> None:
    if request.app.state.settings.protect_ops_endpoints:
        check_api_key(request)


async def require_api_key_for_metrics(request: Request, _declared: Declared = None) -> None:
    s = request.app.state.settings
    if s.protect_ops_endpoints or s.metrics_require_key:
        check_api_key(request)
