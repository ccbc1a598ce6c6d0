"""The API key every data route needs, and the OpenAPI document that declares it."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable

from starlette.datastructures import Headers

from clipdlut.serving.errors import error_response
from clipdlut.serving.http.asgi import ASGIApp, Rewritten, Scope


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
            return await self.app(scope, receive, Rewritten(send, self._declare_scheme))
        if (scope["type"] != "http" or scope["path"] in self.OPEN or preflight
                or (scope["method"] in ("GET", "HEAD") and (scope["path"] in ("/", "/ui")
                                                           or scope["path"].startswith(self.OPEN_PREFIXES)))):
            return await self.app(scope, receive, send)
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        # (compared as the bytes sent, stripped of ASCII spaces only: a key may end in any UTF-8 character)
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode("latin-1").strip(), self.key):
            response = error_response(401, "this service needs an API key: send the header "
                                      "'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"})
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
