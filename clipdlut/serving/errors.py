"""The errors the API answers with, in two families, each error carrying its HTTP status, headers and message:

- :class:`InputError` and its kin: the client must change something (bad input, an unknown task, a full queue);
- :class:`ServiceFault`: the service cannot serve now and the client should retry (a shutdown, a job store out of
  reach), never the client's fault.

:func:`error_response` is the one place an error's body is built (``{"error": message}``, what the original
system's clients read); :func:`answers_errors` answers them on every route. A job that ended without a result
(:class:`JobEnded`) is an outcome, not an HTTP error: routes say what it means for them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import JSONResponse


def describe(e: BaseException) -> str:
    """``Type: message`` of an error, for a reason or a log line (never a traceback)."""
    return f"{type(e).__name__}: {e}".strip().rstrip(":") or type(e).__name__


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The body every error is answered with: ``{"error": message}``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


class ServiceError(Exception):
    """An error answered with its own status and headers; its message says what to do about it."""

    status_code = 500

    def __init__(self, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        return error_response(self.status_code, str(self), self.headers)


class InputError(ServiceError, ValueError):
    """Bad input from a client: answered with a 4xx and a message that says what to fix."""

    status_code = 400


class PayloadTooLarge(InputError):
    status_code = 413


class UnknownTask(InputError):
    status_code = 404


class TaskNotFinished(InputError):
    """The task has no result: it ended without one (its status and reason say why), or has not ended yet."""

    status_code = 409


class QueueFull(InputError):
    """Too many open jobs: try again later (429 with ``Retry-After``)."""

    status_code = 429

    def __init__(self, max_open: int, retry_after_s: int):
        super().__init__(f"the service has {max_open} jobs queued or running, its limit; retry in {retry_after_s} s",
                         {"Retry-After": str(retry_after_s)})


class QuotaReached(InputError):
    """A client is at one of its own quotas (429 with ``Retry-After``); the message names the quota."""

    status_code = 429

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message, {"Retry-After": str(max(1, math.ceil(retry_after_s)))})  # (never too soon)


class ServiceFault(ServiceError):
    """The service cannot serve the request now (503): the client did nothing wrong and may retry."""

    status_code = 503


class ShuttingDown(ServiceFault):
    """This process is stopping; the job goes on elsewhere."""


class StoreUnavailable(ServiceFault):
    """The job store cannot be reached now (Redis restarting, a network cut, a locked or full disk): 503 with
    ``Retry-After``; the message names the kind of failure, never the store's address."""

    def __init__(self, cause: BaseException):
        self.cause = describe(cause)  # (for the log and readiness)
        super().__init__(f"the job store cannot be reached now ({type(cause).__name__}); retry in a few seconds",
                         {"Retry-After": "5"})


class JobEnded(RuntimeError):
    """The job ended without a result (cancelled or failed): ``status`` and the message say which and why."""

    def __init__(self, status: str, message: str):
        self.status = status
        super().__init__(message)


def answers_errors(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Turn a :class:`ServiceError` raised by a route into its response.

    (BentoML 1.4.39 wraps the body of its own 4xx errors in a list; clients expect an object.)
    """

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await handler(*args, **kwargs)
        except ServiceError as e:
            if (ctx := kwargs.get("ctx")) is not None:  # BentoML applies the context's status last
                ctx.response.status_code = e.status_code
            return e.response()

    return wrapper
