"""Every use of BentoML's private modules, in one place (``tests/serving/test_bentoml_internals.py`` names each one
and fails loudly when an upgrade moves it).

- :class:`BoundedTimeout` replaces BentoML's ``TimeoutMiddleware`` (1.4.39, ``bentoml._internal.server.http.traffic``).
  Theirs schedules one ``loop.call_later(traffic.timeout, ...)`` per request and never cancels it: the timer, its
  future and the request's whole context (the tracing span, BentoML's request context holding the ``Request`` and,
  for a task, its body) stay in memory for ``traffic.timeout`` seconds after the request has ended. With the API's
  timeout of an hour that measured ~0.8 MB per job (a job is ~40 requests: submit, polls, result), ~0.8 GB an hour
  at 1,000 jobs an hour (issue 27). Same behaviour otherwise: a 504 when no response has started in time.
- :func:`map_exception`: how BentoML's client turns an error response into its exception (``remote.stream``).
- :data:`REQUEST_LOGGER`, :data:`REQUEST_PARSING`: where BentoML logs a refused request, and the function that
  reads a request into an API's input model (``logs``).
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from bentoml._internal.server.http import traffic

REQUEST_LOGGER = "bentoml._internal.server.http_app"  # where BentoML logs "Exception on PATH [METHOD]"
REQUEST_PARSING = "from_http_request"  # BentoML's function that reads a request into an API's input model


async def map_exception(response: Any) -> BaseException:
    """BentoML's exception for an error response of one of its services (its client's own mapping)."""
    from _bentoml_impl.client.proxy2 import map_exception as bentoml_map_exception

    return await bentoml_map_exception(response)


class BoundedTimeout(traffic.TimeoutMiddleware):
    """BentoML's request timeout (a 504 when no response has started within ``timeout`` s) whose timer ends with
    its request: it is cancelled as soon as the response starts or the request ends, and holds no request context
    meanwhile (it runs in an empty one)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        started = loop.create_future()
        timer = loop.call_later(self.timeout, self._set_timer_out, started, context=contextvars.Context())

        async def watched_send(message: Any) -> None:
            if not started.done():
                started.set_result(None)
                timer.cancel()
            await send(message)

        work = asyncio.ensure_future(self.app(scope, receive, watched_send))
        try:
            await asyncio.wait({started, work}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not (started.done() or work.done()):  # (cancelled itself: the server is stopping)
                work.cancel()
        if started.done() and started.exception() is not None:  # (the timer fired first)
            if work.cancel():
                await traffic.JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                           status_code=504)(scope, receive, send)
            return
        await work  # (a request that failed before answering raises here, as in BentoML's)


def install() -> None:
    """Make every BentoML app built after this call use :class:`BoundedTimeout` (idempotent). BentoML's app imports
    the class from its module each time it builds its middleware list."""
    traffic.TimeoutMiddleware = BoundedTimeout  # type: ignore[misc]
