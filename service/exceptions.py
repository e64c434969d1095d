"""The service's domain exceptions: a leaf module (no imports of the app), raised by routes and models and
mapped to HTTP in one place, `service/errors.py`."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class; `status` is the HTTP answer and `retry_after` marks errors worth retrying."""

    status = 500
    retry_after = False


class Unauthorized(ServiceError):
    status = 401


class InvalidInput(ServiceError):
    """The request can never succeed as sent (too long, too many texts for this server)."""

    status = 422


class UnknownAdapter(InvalidInput):
    def __init__(self, name: str, loaded: list[str]) -> None:
        super().__init__(f"unknown adapter {name!r}; loaded: {sorted(loaded)}")


class RouteDisabled(ServiceError):
    status = 404


class ModelNotReady(ServiceError):
    status = 503
    retry_after = True


class Overloaded(ServiceError):
    """The bounded count of texts in flight is reached: answer at once rather than queue without limit."""

    status = 503
    retry_after = True


class EngineUnavailable(ServiceError):
    """The engine is dead or failed this request; the details go to the log, never to the client."""

    status = 503
    retry_after = True


class DeadlineExceeded(ServiceError):
    status = 504


class ArtifactInvalid(ServiceError):
    """An artifact or its folded checkpoint failed verification (raised at start-up, never per request)."""
