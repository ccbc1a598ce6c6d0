"""A streamed call to another BentoML service whose end the callee sees at once.

BentoML's client hands a stream to the caller as an async iterator but keeps the HTTP response to itself:
closing the iterator leaves the connection open until the garbage collector finds it (about 10 s
measured), and the callee goes on working for a caller that has gone. Here the response is owned by
the iterator: closing it closes the connection, so the callee's server cancels the work at once. The
request is built and sent by BentoML's own client (its serde, connection pool, unix or TCP address);
in-process (tests) the dependency is the service object itself, and its method is called directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from multidict import CIMultiDict


async def stream(dependency: Any, endpoint: str, **kwargs: Any) -> AsyncIterator[str | bytes]:
    """Call streaming ``endpoint`` of ``dependency`` (a ``bentoml.depends`` attribute) with ``kwargs``."""
    client = getattr(dependency, "to_async", None)
    if client is None or not hasattr(client, "_session_manager"):  # an in-process service object
        async with contextlib.aclosing(getattr(dependency, endpoint)(**kwargs)) as items:
            async for item in items:
                yield item
        return
    from _bentoml_impl.client.proxy2 import map_exception

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
