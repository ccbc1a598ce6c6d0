"""BentoML's private APIs the service relies on (clipdlut/serving/bentoml_internals.py): each named here, so that a
BentoML upgrade that moves one fails this file, loudly, instead of the service quietly."""

from __future__ import annotations

import asyncio
import importlib
import inspect

import pytest
from starlette.responses import PlainTextResponse
from starlette.testclient import TestClient

from clipdlut.serving import bentoml_internals

pytestmark = pytest.mark.unit


def test_every_private_name_is_where_the_service_expects_it():
    traffic = importlib.import_module("bentoml._internal.server.http.traffic")
    assert inspect.signature(traffic.TimeoutMiddleware.__init__).parameters.keys() == {"self", "app", "timeout"}
    base_app = importlib.import_module("bentoml._internal.server.base_app")
    # (BentoML's app reads the class from its module whenever it builds its middleware: replacing it there works)
    assert "from .http.traffic import TimeoutMiddleware" in inspect.getsource(base_app)
    proxy = importlib.import_module("_bentoml_impl.client.proxy2")
    assert inspect.iscoroutinefunction(proxy.map_exception)
    importlib.import_module(bentoml_internals.REQUEST_LOGGER)
    io_models = importlib.import_module("_bentoml_sdk.io_models")
    assert any(hasattr(cls, bentoml_internals.REQUEST_PARSING) for _, cls in inspect.getmembers(io_models,
                                                                                              inspect.isclass))


def test_the_service_app_times_requests_with_the_bounded_timer(service):
    bentoml_internals.install()
    app = service.Retouch.to_asgi()
    assert any(m.cls is bentoml_internals.BoundedTimeout for m in app.user_middleware)


def _timed(app, timeout: float) -> TestClient:
    """A client of ``app`` behind the timer (no lifespan: these apps answer requests only)."""
    return TestClient(bentoml_internals.BoundedTimeout(app, timeout=timeout))


def test_a_request_that_answers_in_time_leaves_no_timer_behind():
    timers = []

    async def app(scope, receive, send):
        loop = asyncio.get_running_loop()
        timers.append(sum(1 for h in loop._scheduled if not h.cancelled()))  # (ours is scheduled now)
        await PlainTextResponse("ok")(scope, receive, send)
        timers.append(sum(1 for h in loop._scheduled if not h.cancelled()))  # (and gone once the answer started)

    client = _timed(app, timeout=3600)
    for _ in range(5):
        assert client.get("/").text == "ok"
    assert all(during == after + 1 for during, after in zip(timers[::2], timers[1::2])), timers


def test_a_request_that_does_not_answer_in_time_gets_a_504_and_is_cancelled():
    cancelled = []

    async def slow(scope, receive, send):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    r = _timed(slow, timeout=0.05).get("/")
    assert r.status_code == 504 and "0.05 seconds" in r.json()["error"] and cancelled == [True]


def test_a_request_that_fails_before_answering_raises_at_once():
    async def broken(scope, receive, send):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        _timed(broken, timeout=3600).get("/")
