"""The outcomes the API answers a client with, each with its HTTP status (bad input, an unknown task, a full
queue, a shutdown), a job that ended without a result, and the decorator that answers them on every route."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import JSONResponse


class InputError(ValueError):
    """Bad input from a client: answered with a 4xx and this message."""

    status_code = 400


class PayloadTooLarge(InputError):
    status_code = 413


class UnknownTask(InputError):
    status_code = 404


class TaskNotFinished(InputError):
    """The task has no result: it ended without one (its status and reason say why), or has not ended yet."""

    status_code = 409


class ShuttingDown(InputError):
    status_code = 503


class StoreUnavailable(InputError):
    """The job store cannot be reached now (Redis restarting, a network cut, a locked or full disk): 503 with
    ``Retry-After``; the message names the kind of failure, never the store's address."""

    status_code = 503

    def __init__(self, cause: BaseException):
        self.cause = f"{type(cause).__name__}: {cause}".strip().rstrip(":")  # (for the log and readiness)
        self.headers = {"Retry-After": "5"}
        super().__init__(f"the job store cannot be reached now ({type(cause).__name__}); retry in a few seconds")


class QueueFull(InputError):
    """Too many open jobs: try again later (429 with ``Retry-After``)."""

    status_code = 429

    def __init__(self, max_open: int, retry_after_s: int):
        self.headers = {"Retry-After": str(retry_after_s)}
        super().__init__(f"the service has {max_open} jobs queued or running, its limit; "
                         f"retry in {retry_after_s} s")


class JobEnded(RuntimeError):
    """The job ended without a result (stopped or failed)."""

    def __init__(self, status: str, message: str):
        self.status = status
        super().__init__(message)


def answers_client_errors(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Turn :class:`InputError` raised by a route into a ``{"error": message}`` response with its status.

    (BentoML 1.4.39 wraps the body of its own 4xx errors in a list; clients expect an object.)
    """

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await handler(*args, **kwargs)
        except InputError as e:
            if (ctx := kwargs.get("ctx")) is not None:  # BentoML applies the context's status last
                ctx.response.status_code = e.status_code
            return JSONResponse({"error": str(e)}, status_code=e.status_code, headers=getattr(e, "headers", None))

    return wrapper
