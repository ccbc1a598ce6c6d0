"""The task gate: validation and recording at submit, and the task routes BentoML leaves open, from the job store.

BentoML's local task machinery accepts any body at ``/submit`` and fails later, cannot cancel, and keeps
its records in the process that took the task. The gate validates a submission before BentoML takes it (a
clear 4xx instead of a task that fails later), records the job in the job store under its client before the
client learns its id, and answers ``cancel``/``status``/``get``/``retry`` from the job store, so any replica
answers for any task, and only to the client whose task it is.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from clipdlut.serving.errors import ServiceError, error_response
from clipdlut.serving.http.asgi import ASGIApp, Held, Scope, replay
from clipdlut.serving.http.auth import client_of
from clipdlut.serving.stores import JobStore
from clipdlut.serving.validation import task_of
from clipdlut.status import JobStatus


def _iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).isoformat() if t else None


Accept = Callable[[str], Awaitable[None]]  # records a validated submission in the job store under a task id


class TaskGate:
    """Validation and recording at submit, and ``status``/``get``/``cancel``/``retry`` from the job store (for the
    caller's own tasks only), for one ``@bentoml.task`` route: BentoML's own task records live in one process,
    forget everything at a restart, cannot cancel, and know no client. No request on these actions reaches them."""

    # every action BentoML serves under a task route, with the methods the gate answers it for (HEAD as GET)
    ACTIONS = {"submit": ("POST",), "status": ("GET", "HEAD"), "get": ("GET", "HEAD"), "cancel": ("PUT",),
               "retry": ("POST",)}

    def __init__(self, app: ASGIApp, route: str, store: Callable[[], JobStore],
                 validate: Callable[[Request], Awaitable[Accept]], result: Callable[[str], Awaitable[dict | None]]):
        self.app = app
        self.route = route.rstrip("/")
        self.store = store
        self.validate = validate
        self.result = result

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.route + "/"):
            return await self.app(scope, receive, send)
        action, method = scope["path"][len(self.route) + 1:], scope["method"]
        if action not in self.ACTIONS:
            return await self.app(scope, receive, send)
        if method not in self.ACTIONS[action]:  # (a HEAD or any other method must not reach BentoML's own routes)
            return await error_response(405, f"{scope['path']} takes {' or '.join(self.ACTIONS[action])}",
                                        {"Allow": ", ".join(self.ACTIONS[action])})(scope, receive, send)
        if action == "submit":
            return await self._submit(scope, receive, send)
        task_id = Request(scope).query_params.get("task_id", "")
        store = self.store()
        try:  # (another client's task is answered as one that does not exist)
            record = await task_of(store, task_id, client_of(scope))
        except ServiceError as e:
            return await e.response()(scope, receive, send)
        response: Response
        if action == "retry":  # (BentoML's would resubmit an input only the accepting process has, unchecked)
            response = error_response(409, f"task {task_id} cannot be sent again: a task's photos are let go when it "
                                      "ends; submit it again with /submit") if record.done else error_response(
                                      400, f"task {task_id} is not completed yet")
        elif action == "cancel":  # (a task that has already ended answers the state it ended in)
            if not record.done:
                await store.request_cancel(task_id)
            status = (record.status if record.done else JobStatus.CANCELLED).task
            response = JSONResponse({"task_id": task_id, "status": status})
        elif action == "status":
            response = JSONResponse({"task_id": task_id, "status": record.status.task,
                                     "created_at": _iso(record.created),
                                     "executed_at": _iso(record.updated) if record.done else None})
        elif record.status == JobStatus.FINISHED and (result := await self.result(task_id)) is not None:
            body = await asyncio.to_thread(json.dumps, result)  # (megabytes for a series: not on the event loop)
            response = Response(body, media_type="application/json")
        elif record.done:
            response = error_response(409, f"task {task_id} ended {record.status}: {record.error or 'no result'}")
        else:
            response = error_response(400, f"task {task_id} is not completed yet")
        await response(scope, receive, send)

    async def _submit(self, scope: Scope, receive: Callable, send: Callable) -> None:
        try:
            body = await Request(scope, receive).body()
        except ClientDisconnect:  # (nobody to answer)
            return
        try:
            accept = await self.validate(Request(scope, replay(body, receive)))
        except ServiceError as e:
            return await e.response()(scope, receive, send)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return await error_response(400, "the body is not valid JSON")(scope, receive, send)
        await self.app(scope, replay(body, receive), _Recording(send, accept, scope, receive))


class _Recording(Held):
    """The ``send`` of a task submission: holds BentoML's answer until the job is in the job store under the
    task id it carries (BentoML starts the task only after the answer is sent), or answers the store's refusal."""

    def __init__(self, send: Callable, accept: Accept, scope: Scope, receive: Callable):
        super().__init__(send)
        self._accept, self._scope, self._receive = accept, scope, receive

    async def release(self, start: dict, body: bytes) -> None:
        try:
            await self._accept(json.loads(body)["task_id"])
        except ServiceError as e:
            return await e.response()(self._scope, self._receive, self._send)
        await super().release(start, body)
