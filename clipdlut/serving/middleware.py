"""ASGI middleware of the API service: request size limit and the task routes BentoML leaves open.

BentoML's local task machinery accepts any body at ``/submit`` and fails later, cannot cancel, and keeps
its records in the process that took the task. The gate validates a submission before BentoML takes it (a
clear 4xx instead of a task that fails later), records the job in the job store before the client learns its
id, and answers ``cancel``/``status``/``get`` from the job store, so any replica answers for any task.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from clipdlut.serving.errors import InputError, StoreUnavailable
from clipdlut.serving.readiness import Readiness
from clipdlut.serving.store import JobStore
from clipdlut.serving.validation import check_task_id
from clipdlut.status import JobStatus

log = logging.getLogger(__name__)
Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


def _error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


class _Watched:
    """A ``send`` that notes whether the response has started (after that, no other answer can be sent)."""

    def __init__(self, send: Callable):
        self._send = send
        self.started = False

    async def __call__(self, message: dict) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self._send(message)


class Answered:
    """Every request gets an answer: an exception that escapes what is inside before a response has started
    is answered at once, not left open until the service's timeout: an expected outcome (:class:`InputError`,
    e.g. a job store that cannot be reached: 503) with its status, a bug with a 500 naming the exception's type
    (logged with its traceback)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        watched = _Watched(send)
        try:
            await self.app(scope, receive, watched)
        except InputError as e:
            if watched.started:
                raise
            level = logging.DEBUG if isinstance(e, StoreUnavailable) else logging.WARNING  # (readiness warns once)
            log.log(level, "%s %s: %d %s", scope.get("method"), scope.get("path"), e.status_code, e)
            await _error(e.status_code, str(e), **getattr(e, "headers", {}))(scope, receive, send)
        except Exception as e:
            if watched.started:  # (the server logs it)
                raise
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            await _error(500, f"internal error ({type(e).__name__}); the server log has the details")(
                scope, receive, send)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, by Content-Length or while streaming. A body sent
    without a length (chunked) is read here first, up to the limit: BentoML reads some bodies itself and would
    answer a refusal in the middle of its reading with a 500."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.max_bytes
        too_large = (f"the request body is larger than {limit / 2**20:g} MB; send a smaller photo (a series: fewer or "
                     "smaller photos, their total counts)")
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _error(413, too_large)(scope, receive, send)
        if length is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] != "http.request":  # (the client went away)
                    return
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > limit:
                    return await _error(413, too_large)(scope, receive, send)
                if not message.get("more_body"):
                    break
            receive = _replay(b"".join(chunks), receive)
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        watched = _Watched(send)
        try:
            await self.app(scope, limited_receive, watched)
        except _TooLarge:
            if not watched.started:
                await _error(413, too_large)(scope, receive, send)


class _TooLarge(Exception):
    pass


def _iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).isoformat() if t else None


Accept = Callable[[str], Awaitable[None]]  # records a validated submission in the job store under a task id


class TaskGate:
    """Validation and recording at submit, and ``status``/``get``/``cancel`` from the job store, for one
    ``@bentoml.task`` route: BentoML's own task records live in one process, forget everything at a restart
    and cannot cancel."""

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
        if action == "submit" and method == "POST":
            return await self._submit(scope, receive, send)
        if (action, method) not in (("cancel", "PUT"), ("status", "GET"), ("get", "GET")):
            return await self.app(scope, receive, send)
        task_id = Request(scope).query_params.get("task_id", "")
        try:
            check_task_id(task_id)
        except InputError as e:
            return await _error(400, str(e))(scope, receive, send)
        store = self.store()
        record = await store.get(task_id)
        if record is None:
            return await _error(404, f"no task with id {task_id!r}; task ids come from the submit response"
                                )(scope, receive, send)
        response: Response
        if action == "cancel":  # (a task that has already ended answers the state it ended in)
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
            response = _error(409, f"task {task_id} ended {record.status}: {record.error or 'no result'}")
        else:
            response = _error(400, f"task {task_id} is not completed yet")
        await response(scope, receive, send)

    async def _submit(self, scope: Scope, receive: Callable, send: Callable) -> None:
        body = await _read_body(receive)
        try:
            accept = await self.validate(Request(scope, _replay(body, receive)))
        except InputError as e:
            return await _error(e.status_code, str(e), **getattr(e, "headers", {}))(scope, receive, send)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return await _error(400, "the body is not valid JSON")(scope, receive, send)
        await self.app(scope, _replay(body, receive), _Recording(send, accept, scope, receive))


class _Held:
    """A ``send`` that holds a response with ``status`` until its whole body is in, then hands both to
    :meth:`release` (the other responses pass as they are)."""

    def __init__(self, send: Callable, status: int = 200):
        self._send, self._status = send, status
        self._start: dict | None = None
        self._chunks: list[bytes] = []

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start" and message["status"] == self._status:
            self._start = message
            return
        if self._start is None:
            return await self._send(message)
        self._chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            await self.release(self._start, b"".join(self._chunks))

    async def release(self, start: dict, body: bytes) -> None:
        await self._send(start)
        await self._send({"type": "http.response.body", "body": body})


class _Recording(_Held):
    """The ``send`` of a task submission: holds BentoML's answer until the job is in the job store under the
    task id it carries (BentoML starts the task only after the answer is sent), or answers the store's refusal."""

    def __init__(self, send: Callable, accept: Accept, scope: Scope, receive: Callable):
        super().__init__(send)
        self._accept, self._scope, self._receive = accept, scope, receive

    async def release(self, start: dict, body: bytes) -> None:
        try:
            await self._accept(json.loads(body)["task_id"])
        except InputError as e:
            return await _error(e.status_code, str(e), **getattr(e, "headers", {}))(
                self._scope, self._receive, self._send)
        await super().release(start, body)


async def _read_body(receive: Callable) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive: Callable) -> Callable[[], Awaitable[dict]]:
    """A ``receive`` that hands over an already read body once, then listens on the original."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class FormCheck:
    """A 400 for a malformed multipart body on the given routes (BentoML would answer 500)."""

    def __init__(self, app: ASGIApp, routes: tuple[str, ...]):
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] not in self.routes or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        request = Request(scope, _replay(body, receive))
        if request.headers.get("content-type", "").startswith("multipart/"):
            try:
                async with request.form():
                    pass
            except Exception as e:
                message = f"the multipart body cannot be read ({e}); send the fields as multipart/form-data"
                return await _error(400, message)(scope, receive, send)
        await self.app(scope, _replay(body, receive), send)


class JsonBodies:
    """A JSON body sent with no content type, or with curl's default ``-d`` type
    (``application/x-www-form-urlencoded``), is read as the JSON it is on every route but the multipart ones
    (BentoML would parse it as a form and answer "Field required")."""

    _FORM = b"application/x-www-form-urlencoded"

    def __init__(self, app: ASGIApp, multipart_routes: tuple[str, ...]):
        self.app = app
        self.multipart_routes = multipart_routes

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT") and \
                scope["path"] not in self.multipart_routes:
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            kind = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
            if kind.split(b";")[0].strip().lower() in (b"", self._FORM):
                scope = {**scope, "headers": headers + [(b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


class ReadyReason:
    """``/readyz`` from the state a background task keeps current (see :mod:`clipdlut.serving.readiness`): answered
    at once, with the reason in a 503's body (BentoML's own 503 body is fixed text; a user whose model
    cannot load needs the reason)."""

    def __init__(self, app: ASGIApp, readiness: Readiness):
        self.app = app
        self.readiness = readiness

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"] == "/readyz":
            if (reason := self.readiness.reason) is not None:
                return await _error(503, reason, **{"Retry-After": "5"})(scope, receive, send)
            return await JSONResponse({"status": "ready"})(scope, receive, send)
        return await self.app(scope, receive, send)


class ApiKey:
    """Require ``Authorization: Bearer <key>`` on every data route. Open: the health checks, ``GET /`` (the
    original clients' reachability check), what a browser loads by navigating, which sends no header (the web
    page's files, the OpenAPI page), and the service's limits. The key is compared in constant time and never
    logged. The OpenAPI document declares the bearer scheme, so its page's "Authorize" button sends the key with
    "Try it out"."""

    OPEN = frozenset({"/healthz", "/livez", "/readyz", "/docs", "/docs.json", "/v1/limits"})
    OPEN_PREFIXES = ("/ui/", "/static_content/")

    def __init__(self, app: ASGIApp, key: str):
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        preflight = scope.get("method") == "OPTIONS" and any(k == b"access-control-request-method"
                                                              for k, _ in scope.get("headers", []))
        if scope["type"] == "http" and scope["path"] == "/docs.json":
            return await self.app(scope, receive, _Rewritten(send, self._declare_scheme))
        if (scope["type"] != "http" or scope["path"] in self.OPEN or preflight
                or (scope["method"] in ("GET", "HEAD") and (scope["path"] in ("/", "/ui")
                                                           or scope["path"].startswith(self.OPEN_PREFIXES)))):
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers", [])).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
            response = _error(401, "this service needs an API key: send the header 'Authorization: Bearer <key>'",
                              **{"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)

    def _declare_scheme(self, document: bytes) -> bytes:
        """The OpenAPI document with the bearer scheme required on every operation but the open ones."""
        try:
            doc = json.loads(document)
        except ValueError:
            return document
        doc.setdefault("components", {}).setdefault("securitySchemes", {})["apiKey"] = {
            "type": "http", "scheme": "bearer", "description": "the service's CLIPDLUT_API_KEY"}
        doc["security"] = [{"apiKey": []}]
        for path, operations in doc.get("paths", {}).items():
            if path in self.OPEN or path == "/":
                for operation in operations.values():
                    if isinstance(operation, dict):
                        operation["security"] = []
        return json.dumps(doc).encode()


class _Rewritten(_Held):
    """A ``send`` that hands the whole body of a response with ``status`` to ``rewrite`` before sending it (with
    its new length)."""

    def __init__(self, send: Callable, rewrite: Callable[[bytes], bytes], status: int = 200):
        super().__init__(send, status)
        self._rewrite = rewrite

    async def release(self, start: dict, body: bytes) -> None:
        body = self._rewrite(body)
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        await super().release({**start, "headers": headers + [(b"content-length", str(len(body)).encode())]}, body)


class ClearErrors:
    """Turn BentoML's request-validation 400s ("1 validation error for XIODescriptor", details in a list)
    into one message that names each field to fix, e.g. ``iteration: Input should be a valid integer``,
    in the shape the OpenAPI document promises."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        await self.app(scope, receive, _Rewritten(send, _clear, status=400))


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


class Landing:
    """``GET /``: 200 (the original clients' reachability check) with links to the web page and the API;
    ``GET /docs``: BentoML's OpenAPI page (which BentoML serves at ``/``, taken by this page)."""

    PAGE = ("<!doctype html><html lang=en><meta charset=utf-8><meta name=viewport content='width=device-width'>"
            "<title>CLIP-DLUT</title><body style='font-family:system-ui;max-width:40em;margin:3em auto'>"
            "<h1>CLIP-DLUT</h1><p>Text-driven colour grading with a 3D LUT.</p><ul>"
            "<li><a href='/ui/'>Grade a photo in the browser</a></li>"
            "<li><a href='/docs'>API documentation (OpenAPI)</a></li></ul></body></html>")

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"] == "/" and scope["method"] in ("GET", "HEAD"):
            return await HTMLResponse(self.PAGE)(scope, receive, send)
        if scope["type"] == "http" and scope["path"] == "/docs" and scope["method"] in ("GET", "HEAD"):
            return await self.app({**scope, "path": "/", "raw_path": b"/"}, receive, send)
        return await self.app(scope, receive, send)
