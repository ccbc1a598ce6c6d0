"""ASGI middleware of the API service: request size limit and the task routes BentoML leaves open.

BentoML's local task machinery accepts any body at ``/submit`` and fails later, cannot cancel, and
forgets cancellations. The gate validates a submission before BentoML takes it (a clear 4xx instead
of a task that fails later), and answers ``cancel``/``status`` from the job store.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from clipdlut.store import CANCELLED, JobStore

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        too_large = f"the request body is larger than {limit / 2**20:g} MB; send a smaller image"
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return await _error(413, too_large)(scope, receive, send)
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _error(413, too_large)(scope, receive, send)


class _TooLarge(Exception):
    pass


class TaskGate:
    """Validation at submit, and store-backed cancel and status, for one ``@bentoml.task`` route."""

    def __init__(self, app: ASGIApp, route: str, store: Callable[[], JobStore],
                 validate: Callable[[Request], Awaitable[None]]):
        self.app = app
        self.route = route.rstrip("/")
        self.store = store
        self.validate = validate

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.route + "/"):
            return await self.app(scope, receive, send)
        action = scope["path"][len(self.route) + 1:]
        method = scope["method"]
        if action == "submit" and method == "POST":
            return await self._submit(scope, receive, send)
        if action in ("cancel", "status") and method in ("PUT", "GET"):
            task_id = Request(scope).query_params.get("task_id", "")
            record = self.store().get(task_id) if task_id else None
            if action == "cancel" and method == "PUT":
                if record is None:
                    return await _error(404, f"no task with id {task_id!r}")(scope, receive, send)
                self.store().request_cancel(task_id)
                return await JSONResponse({"task_id": task_id, "status": "canceled"})(scope, receive, send)
            if action == "status" and record is not None and record.status == CANCELLED:
                body = {"task_id": task_id, "status": "canceled", "created_at": None, "executed_at": None}
                return await JSONResponse(body)(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _submit(self, scope: Scope, receive: Callable, send: Callable) -> None:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        from clipdlut.jobs import InputError

        try:
            await self.validate(Request(scope, replay))
        except InputError as e:
            return await _error(e.status_code, str(e))(scope, receive, send)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return await _error(400, "the body is not valid JSON")(scope, receive, send)
        sent = False

        async def replay_once() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay_once, send)


class ReadyReason:
    """``/readyz`` that says why it is not ready: the optimizer's state from the job store.

    BentoML's own 503 body is fixed text; a user whose model cannot load needs the reason.
    """

    def __init__(self, app: ASGIApp, store: Callable[[], JobStore], component: str = "optimizer"):
        self.app = app
        self.store = store
        self.component = component

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"] == "/readyz":
            state = self.store().state(self.component) or {}
            if not state.get("ready", False):
                reason = state.get("reason", f"the {self.component} has not started yet")
                return await _error(503, reason, **{"Retry-After": "5"})(scope, receive, send)
        return await self.app(scope, receive, send)
