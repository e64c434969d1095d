"""The service's domain exceptions: a leaf module (no imports of the app), raised by routes and models and
mapped to HTTP in one place, `service/errors.py`."""

from __future__ import annotations

# Process exit codes of `python -m service` (documented in the README): a supervisor restarts on either,
# but only an engine death is worth restarting at once; a start-up failure (bad artifact, hash mismatch,
# max_model_len too small) repeats until the configuration changes.
EXIT_STARTUP_FAILED = 3
EXIT_ENGINE_DEAD = 4

MAX_QUOTED = 64  # how much of a client-supplied string (a name, a field, an id) an error message repeats


def quoted(value: object, limit: int = MAX_QUOTED) -> str:
    """`value` as text cut to a short prefix: an error never echoes a large client-supplied string."""
    text = str(value)
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} characters)"


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
        super().__init__(f"unknown adapter {quoted(name)!r}; loaded: {sorted(loaded)}")


class RouteDisabled(ServiceError):
    status = 404


class ModelNotReady(ServiceError):
    status = 503
    retry_after = True


class Overloaded(ServiceError):
    """The bounded count of texts in flight is reached: answer at once rather than queue without limit.
    `retry_after_s`: when the texts now in flight should be done, at the engine's measured rate."""

    status = 503
    retry_after = True

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineUnavailable(ServiceError):
    """The engine is dead or failed this request; the details go to the log, never to the client."""

    status = 503
    retry_after = True


class DeadlineExceeded(ServiceError):
    status = 504


class PayloadTooLarge(InvalidInput):
    """A document over a size limit (bytes, pages) that the route will not cut itself."""

    status = 413


class UnsupportedMediaType(InvalidInput):
    """A document whose content (magic bytes, not its name) is none of the kinds the route reads."""

    status = 415
