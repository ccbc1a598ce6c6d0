"""Every request gets an answer, in the one error shape: an exception before the response is answered at once, and
BentoML's validation errors become one message naming each field to fix."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from clipdlut.serving.errors import ServiceError, StoreUnavailable, error_response
from clipdlut.serving.http.asgi import ASGIApp, Rewritten, Scope, Watched

log = logging.getLogger(__name__)


class Answered:
    """Every request gets an answer: an exception that escapes what is inside before a response has started
    is answered at once, not left open until the service's timeout: an expected one (a :class:`ServiceError`,
    e.g. a job store that cannot be reached: 503) with its own response, a bug with a 500 naming the exception's
    type (logged with its traceback; never in the response)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        watched = Watched(send)
        try:
            await self.app(scope, receive, watched)
        except ServiceError as e:
            if watched.started:
                raise
            level = logging.DEBUG if isinstance(e, StoreUnavailable) else logging.WARNING  # (readiness warns once)
            log.log(level, "%s %s: %d %s", scope.get("method"), scope.get("path"), e.status_code, e)
            await e.response()(scope, receive, send)
        except Exception as e:
            if watched.started:  # (the server logs it)
                raise
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            await error_response(500, f"internal error ({type(e).__name__}); the server log has the details")(
                scope, receive, send)


class ClearErrors:
    """Turn BentoML's request-validation 400s ("1 validation error for XIODescriptor", details in a list)
    into one message that names each field to fix, e.g. ``iteration: Input should be a valid integer``,
    in the shape the OpenAPI document promises."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        await self.app(scope, receive, Rewritten(send, _clear, status=400))


def _clear(body: bytes) -> bytes:
    try:
        payload = json.loads(body)
        details = payload["detail"] if isinstance(payload, dict) else None
        if isinstance(details, list) and details and "validation error" in str(payload.get("error")):
            # (the documented error schema has a string ``detail``; BentoML sends a list there)
            return json.dumps({"error": "; ".join(_describe(d) for d in details)}).encode()
    except (ValueError, KeyError, TypeError):
        pass
    return body


def _describe(detail: dict) -> str:
    where = ".".join(str(p) for p in detail.get("loc", ())) or "body"
    message = str(detail.get("msg", "is not valid"))
    if detail.get("type") == "json_invalid":
        where = "body"
        message = "is not valid JSON (UTF-8): " + message
    return f"{where}: {message}"
