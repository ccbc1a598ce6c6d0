"""Calls to the optimizer service: one-shot calls retried when the connection drops, and a streamed call whose
end the callee sees at once.

BentoML's client hands a stream to the caller as an async iterator but keeps the HTTP response to itself:
closing the iterator leaves the connection open until the garbage collector finds it (about 10 s
measured), and the callee goes on working for a caller that has gone. Here the response is owned by
the iterator: closing it closes the connection, so the callee's server cancels the work at once. The
request is built and sent by BentoML's own client (its serde, connection pool, unix or TCP address);
in-process (tests) the dependency is the service object itself, and its method is called directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
from multidict import CIMultiDict

from clipdlut.serving.bentoml_internals import map_exception

log = logging.getLogger(__name__)


async def call(dependency: Any, endpoint: str, items: list, attempts: int = 3) -> list:
    """Call one-shot ``endpoint`` of ``dependency`` with ``items``, again after a short wait when the connection
    drops (only for idempotent endpoints: every one-shot endpoint of the optimizer is)."""
    for attempt in range(attempts):
        try:
            return await getattr(dependency, endpoint)(items)
        except (aiohttp.ClientConnectionError, httpx.TransportError, ConnectionError):
            if attempt == attempts - 1:
                raise
            log.warning("call to the optimizer's %s dropped; retrying", endpoint, exc_info=True)
            await asyncio.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


async def stream(dependency: Any, endpoint: str, **kwargs: Any) -> AsyncIterator[str | bytes]:
    """Call streaming ``endpoint`` of ``dependency`` (a ``bentoml.depends`` attribute) with ``kwargs``."""
    client = getattr(dependency, "to_async", None)
    if client is None or not hasattr(client, "_session_manager"):  # an in-process service object
        async with contextlib.aclosing(getattr(dependency, endpoint)(**kwargs)) as items:
            async for item in items:
                yield item
        return
    spec = client.endpoints[endpoint]
    session = await client._session_manager.get_session()
    headers = CIMultiDict({"Content-Type": client.media_type})
    body = client._build_payload(spec, (), kwargs, headers)
    # no overall time limit (the session's counts any wait in a queue too): the caller watches for silence
    async with session.post(spec.route, data=body, headers=headers,
                            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30)) as response:
        if not response.ok:
            raise await map_exception(response)
        async for chunk in response.content.iter_any():
            yield chunk
