"""The pages the service answers itself: the landing page, the OpenAPI page's address, and ``/readyz``."""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import HTMLResponse, JSONResponse

from clipdlut.serving.errors import error_response
from clipdlut.serving.http.asgi import ASGIApp, Scope
from clipdlut.serving.readiness import Readiness


class Landing:
    """``GET /``: 200 (the original clients' reachability check) with links to the web page and the API;
    ``GET /docs``: BentoML's OpenAPI page (which BentoML serves at ``/``, taken by this page)."""

    PAGE = ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width, initial-scale=1'><title>CLIP-DLUT</title>"
            "<link rel=icon href='data:,'><link rel=stylesheet href='/ui/style.css'></head><body><header>"
            "<h1>CLIP-DLUT</h1><p>Describe a look; get the graded photo and a <code>.cube</code> LUT for "
            "Photoshop, Premiere, Resolve and ffmpeg.</p></header><main><section class=panel>"
            "<p><a class=button href='/ui/'>Grade a photo in the browser</a></p>"
            "<p><a href='/docs'>API documentation (OpenAPI)</a>: the native task API, the original system's "
            "<code>/retouch</code>, <code>/query_task</code> and <code>/stop_task</code>, and the LUT tools.</p>"
            "</section></main></body></html>")

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"] == "/" and scope["method"] in ("GET", "HEAD"):
            return await HTMLResponse(self.PAGE)(scope, receive, send)
        if scope["type"] == "http" and scope["path"] == "/docs" and scope["method"] in ("GET", "HEAD"):
            return await self.app({**scope, "path": "/", "raw_path": b"/"}, receive, send)
        return await self.app(scope, receive, send)


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
                return await error_response(503, reason, {"Retry-After": "5"})(scope, receive, send)
            return await JSONResponse({"status": "ready"})(scope, receive, send)
        return await self.app(scope, receive, send)
