"""The ASGI plumbing the middleware shares: the types, a watched ``send``, a held response, a replayed body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


class Watched:
    """A ``send`` that notes whether the response has started (after that, no other answer can be sent)."""

    def __init__(self, send: Callable):
        self._send = send
        self.started = False

    async def __call__(self, message: dict) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self._send(message)


class Held:
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


class Rewritten(Held):
    """A ``send`` that hands the whole body of a response with ``status`` to ``rewrite`` before sending it (with
    its new length)."""

    def __init__(self, send: Callable, rewrite: Callable[[bytes], bytes], status: int = 200):
        super().__init__(send, status)
        self._rewrite = rewrite

    async def release(self, start: dict, body: bytes) -> None:
        body = self._rewrite(body)
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        await super().release({**start, "headers": headers + [(b"content-length", str(len(body)).encode())]}, body)


def replay(body: bytes, receive: Callable) -> Callable[[], Awaitable[dict]]:
    """A ``receive`` that hands over an already read body once, then listens on the original."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
