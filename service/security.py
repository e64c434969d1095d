"""Bearer-key authentication (constant-time comparison; several keys for rotation)."""

from __future__ import annotations

import hmac

from fastapi import Request

from service.exceptions import Unauthorized


def require_api_key(request: Request) -> None:
    keys: list[str] = request.app.state.settings.api_key_list
    if not keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    given = token.strip().encode() if scheme.lower() == "bearer" else b""
    # compare against every key, no early exit: timing does not reveal which key (or prefix) matched
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key.encode())
    if not ok:
        raise Unauthorized("missing or invalid API key")


def require_api_key_for_ops(request: Request) -> None:
    if request.app.state.settings.protect_ops_endpoints:
        require_api_key(request)
