"""Who is calling: the client a request's key belongs to (:mod:`clipdlut.clients`), required on every data route,
and the OpenAPI document that declares the key."""

from __future__ import annotations

import json
from collections.abc import Callable, MutableMapping
from typing import Any

from starlette.datastructures import Headers

from clipdlut.clients import ANYONE, NOBODY, Client, Registry
from clipdlut.serving.errors import error_response
from clipdlut.serving.http.asgi import ASGIApp, Rewritten, Scope

LEGACY_ROUTES = frozenset({"/retouch", "/query_task", "/stop_task"})  # the original system's (its clients send no key)


def client_of(scope: MutableMapping[str, Any]) -> Client:
    """The client :class:`Authenticate` found for this request (everyone's on a service that needs no key); one that
    owns nothing where no key was checked (an open route of a keyed service)."""
    return scope.get("state", {}).get("client", NOBODY)


class Authenticate:
    """Require ``Authorization: Bearer <key>`` of a known client on every data route, and tell the routes which
    client it is (:func:`client_of`). Open: the health checks, ``GET /`` (the original clients' reachability check),
    what a browser loads by navigating, which sends no header (the web page's files, the OpenAPI page), and the
    service's limits. The original API's routes act as ``legacy_client`` when they send no key (if it is set).

    Every refusal is the same 401, whatever was wrong with the key: it says nothing about which keys exist. Keys are
    compared as digests in constant time and never logged. The OpenAPI document declares the bearer scheme, so its
    page's "Authorize" button sends the key with "Try it out"."""

    OPEN = frozenset({"/healthz", "/livez", "/readyz", "/docs", "/docs.json", "/v1/limits"})
    OPEN_PREFIXES = ("/ui/", "/static_content/")

    def __init__(self, app: ASGIApp, registry: Registry, legacy_client: str = ""):
        self.app = app
        self.registry = registry
        self.legacy_client = legacy_client

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.registry.open:
            scope.setdefault("state", {})["client"] = ANYONE
            return await self.app(scope, receive, send)
        if scope["path"] == "/docs.json":
            return await self.app(scope, receive, Rewritten(send, self._declare_scheme))
        if self._open(scope):
            return await self.app(scope, receive, send)
        if (client := self._client(scope)) is None:
            response = error_response(401, "this service needs a client's key: send the header "
                                      "'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        if scope["path"] == "/metrics" and not client.operator:  # (every client's figures, under their names)
            return await error_response(403, "/metrics shows every client's figures: it needs the key of a client "
                                        "marked 'operator = true' in the clients file")(scope, receive, send)
        scope.setdefault("state", {})["client"] = client
        return await self.app(scope, receive, send)

    def _open(self, scope: Scope) -> bool:
        preflight = scope["method"] == "OPTIONS" and any(k == b"access-control-request-method"
                                                          for k, _ in scope.get("headers", []))
        return scope["path"] in self.OPEN or preflight or (
            scope["method"] in ("GET", "HEAD") and (scope["path"] in ("/", "/ui")
                                                   or scope["path"].startswith(self.OPEN_PREFIXES)))

    def _client(self, scope: Scope) -> Client | None:
        header = Headers(scope=scope).get("authorization")
        if header is None and scope["path"] in LEGACY_ROUTES and self.legacy_client:
            return self.registry.named(self.legacy_client)
        scheme, _, token = (header or "").partition(" ")
        # (compared as the bytes sent, stripped of ASCII spaces only: a key may end in any UTF-8 character)
        key = token.encode("latin-1").strip()
        if scheme.lower() != "bearer" or not key:
            return None
        return self.registry.identify(key)

    def _declare_scheme(self, document: bytes) -> bytes:
        """The OpenAPI document with the bearer scheme required on every operation but the open ones."""
        try:
            doc = json.loads(document)
        except ValueError:
            return document
        doc.setdefault("components", {}).setdefault("securitySchemes", {})["apiKey"] = {
            "type": "http", "scheme": "bearer",
            "description": "a client's key (from `python -m clipdlut clients add NAME`, or CLIPDLUT_API_KEY)"}
        doc["security"] = [{"apiKey": []}]
        for path, operations in doc.get("paths", {}).items():
            if path in self.OPEN or path == "/":
                for operation in operations.values():
                    if isinstance(operation, dict):
                        operation["security"] = []
        return json.dumps(doc).encode()
