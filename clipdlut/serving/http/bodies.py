"""Request bodies: the size limit, a malformed multipart body, and JSON sent without its content type."""

from __future__ import annotations

from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request

from clipdlut.serving.errors import error_response
from clipdlut.serving.http.asgi import ASGIApp, Scope, Watched, replay


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
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await error_response(413, too_large)(scope, receive, send)
        if length is None and scope.get("method") in ("POST", "PUT", "PATCH"):
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] != "http.request":  # (the client went away)
                    return
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > limit:
                    return await error_response(413, too_large)(scope, receive, send)
                if not message.get("more_body"):
                    break
            receive = replay(b"".join(chunks), receive)
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        watched = Watched(send)
        try:
            await self.app(scope, limited_receive, watched)
        except _TooLarge:
            if not watched.started:
                await error_response(413, too_large)(scope, receive, send)


class _TooLarge(Exception):
    pass


class FormCheck:
    """A 400 for a malformed multipart body on the given routes (BentoML would answer 500)."""

    def __init__(self, app: ASGIApp, routes: tuple[str, ...]):
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] not in self.routes or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        request = Request(scope, receive)
        try:
            body = await request.body()  # (kept: the form is parsed from it, and the app reads it again)
        except ClientDisconnect:  # (nobody to answer)
            return
        if request.headers.get("content-type", "").startswith("multipart/"):
            try:
                async with request.form():
                    pass
            except Exception as e:
                message = f"the multipart body cannot be read ({e}); send the fields as multipart/form-data"
                return await error_response(400, message)(scope, receive, send)
        await self.app(scope, replay(body, receive), send)


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
