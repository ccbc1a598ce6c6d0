"""The ASGI middlewares of the API service, each on a small Starlette app."""

import asyncio
import uuid

import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from clipdlut import clients
from clipdlut.clients import Registry
from clipdlut.serving.errors import InputError, QueueFull
from clipdlut.serving.http import Answered, Authenticate, BodyLimit, JsonBodies, ReadyReason, TaskGate, client_of
from clipdlut.serving.stores.sqlite import SqliteJobStore
from clipdlut.status import JobStatus

pytestmark = pytest.mark.unit


def app(*middleware) -> Starlette:
    async def ok(request):
        return PlainTextResponse("app:" + request.url.path)

    a = Starlette(routes=[Route("/{path:path}", ok, methods=["GET", "POST", "PUT"])])
    for cls, kw in middleware:
        a.add_middleware(cls, **kw)
    return a


def keyed(key: str) -> tuple:
    return Authenticate, {"registry": Registry(api_key=key)}


def test_api_key_guards_everything_but_health_checks():
    c = TestClient(app(keyed("s3cret")))
    for path in ("/healthz", "/livez", "/readyz", "/", "/ui/", "/ui/app.js", "/docs", "/docs.json",
                 "/static_content/swagger-ui.css"):  # what a browser loads by navigating (it sends no header)
        assert c.get(path).status_code == 200, path
    assert c.post("/ui/x").status_code == 401 and c.get("/uix").status_code == 401
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"},
                    {"Authorization": "s3cret"}):
        r = c.post("/retouch", headers=headers)
        assert r.status_code == 401 and "'Authorization: Bearer <key>'" in r.json()["error"]
        assert r.headers["www-authenticate"] == "Bearer" and "s3cret" not in r.text
    assert c.post("/retouch", headers={"Authorization": "Bearer s3cret"}).text == "app:/retouch"
    assert c.get("/metrics", headers={"Authorization": "bearer s3cret"}).status_code == 200


@pytest.mark.parametrize("key", ["secretà", "ключР", "s3cret "])
def test_a_key_is_compared_as_the_bytes_sent(key):
    """A key that ends in a UTF-8 character whose last byte is 0x85 or 0xA0 (à, Р) is still the key: only ASCII
    spaces around it are ignored."""
    c = TestClient(app(keyed(key.strip())))
    assert c.post("/retouch", headers={"Authorization": f"Bearer {key}".encode()}).status_code == 200
    assert c.post("/retouch", headers={"Authorization": f"Bearer {key.strip()[:-1]}".encode()}).status_code == 401


@pytest.mark.parametrize("middleware", ["form", "gate"])
def test_a_client_that_goes_away_while_sending_gets_no_answer_and_no_error(middleware, tmp_path):
    from clipdlut.serving.http import FormCheck

    async def never(request):
        raise AssertionError("the app is not reached")

    inner = Starlette(routes=[Route("/{path:path}", never, methods=["POST"])])
    wrapped = FormCheck(inner, routes=("/v1/apply",)) if middleware == "form" else \
        TaskGate(inner, route="/v1/retouch", store=lambda: SqliteJobStore(tmp_path / "jobs.db"), validate=never,
                 result=never)
    path = "/v1/apply" if middleware == "form" else "/v1/retouch/submit"
    sent = []

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-type", b"multipart/form-data")],
             "query_string": b""}
    asyncio.run(wrapped(scope, receive, send))
    assert sent == []


def test_json_sent_as_curl_sends_it_by_default_is_read_as_json():
    async def kind(request):
        return PlainTextResponse(request.headers.get("content-type", "none"))

    a = Starlette(routes=[Route("/{path:path}", kind, methods=["GET", "POST", "PUT"])])
    a.add_middleware(JsonBodies, multipart_routes=("/v1/apply",))
    c = TestClient(a)
    body = b'{"task_id": "x"}'
    for headers in ({}, {"content-type": "application/x-www-form-urlencoded"},
                    {"content-type": "Application/X-WWW-Form-Urlencoded; charset=utf-8"}):
        assert c.post("/query_task", content=body, headers=headers).text == "application/json"
        assert c.put("/v1/retouch/cancel", content=body, headers=headers).text == "application/json"
        assert c.post("/v1/apply", content=body, headers=headers).text == headers.get("content-type", "none")
    for kept in ("application/json; charset=utf-8", "multipart/form-data; boundary=x", "text/plain"):
        assert c.post("/query_task", content=body, headers={"content-type": kept}).text == kept
    assert c.get("/readyz").text == "none"


class Broken:
    """A middleware with a bug: it raises before any response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/broken":
            raise KeyError("oops")
        await self.app(scope, receive, send)


def test_an_error_before_any_response_is_answered_at_once():
    c = TestClient(app((Broken, {}), (Answered, {})), raise_server_exceptions=False)
    r = c.get("/broken")
    assert r.status_code == 500 and r.json() == {"error": "internal error (KeyError); the server log has the details"}
    assert c.get("/fine").text == "app:/fine"


def test_body_limit():
    c = TestClient(app((BodyLimit, {"max_bytes": 100})))
    assert c.post("/x", content=b"a" * 100).status_code == 200
    r = c.post("/x", content=b"a" * 101)
    assert r.status_code == 413 and "larger than" in r.json()["error"]


def test_ready_reason_answers_from_the_kept_state():
    from clipdlut.serving.readiness import Readiness
    from clipdlut.serving.wire import OptimizerHealth

    readiness = Readiness()
    c = TestClient(app((ReadyReason, {"readiness": readiness})))
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json() == {"error": "the service is starting"} and r.headers["retry-after"]
    readiness.update(OptimizerHealth(ready=False, reason="weights missing at /x.pt"))
    assert c.get("/readyz").json()["error"] == "weights missing at /x.pt"
    readiness.update(OptimizerHealth(ready=True, model="tiny", running=1, capacity=8))
    assert c.get("/readyz").status_code == 200
    readiness.update(None, "ConnectionRefusedError: [Errno 111]")
    r = c.get("/readyz")
    assert r.status_code == 503 and "cannot be reached: ConnectionRefusedError" in r.json()["error"]
    assert c.get("/other").text == "app:/other"


def test_task_gate_records_a_job_before_its_id_is_known_and_answers_from_the_store(tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.db")
    seen, known = [], []

    async def validate(request):
        body = await request.json()
        seen.append(body)
        if body.get("full"):
            raise QueueFull(2, 7)
        if not body.get("ok"):
            raise InputError("target_prompt: field required")

        async def accept(task_id):
            if body.get("full_by_now"):  # another replica took the last place meanwhile
                raise QueueFull(2, 9)
            await store.create(task_id, {"steps": 1}, b"s", b"w", owner="api")

        return accept

    async def bentoml_submit(request):  # BentoML answers the task id, then starts the task
        task_id = uuid.uuid4().hex
        known.append(await store.get(task_id))  # (what the task would find when it starts)
        return JSONResponse({"task_id": task_id, "status": "in_progress"}, background=BackgroundTask(
            lambda: known.append(task_id)))

    async def bentoml_other(request):
        return PlainTextResponse("app:" + request.url.path)

    inner = Starlette(routes=[Route("/v1/retouch/submit", bentoml_submit, methods=["POST"]),
                              Route("/{path:path}", bentoml_other, methods=["GET", "POST", "PUT"])])
    inner.add_middleware(TaskGate, route="/v1/retouch", store=lambda: store, validate=validate,
                         result=lambda task_id: _async({"task_id": task_id, "cube": "LUT"}))
    inner.add_middleware(Authenticate, registry=Registry())  # (an open service: one client, everyone)
    c = TestClient(inner)
    r = c.post("/v1/retouch/submit", json={"ok": True})
    t1 = r.json()["task_id"]
    assert r.status_code == 200 and known == [None, t1]  # recorded after BentoML made the id, before the answer
    assert asyncio.run(store.get(t1)).status == "queued"
    r = c.post("/v1/retouch/submit", json={"ok": True, "full_by_now": True})
    assert r.status_code == 429 and r.headers["retry-after"] == "9" and "limit" in r.json()["error"]
    r = c.post("/v1/retouch/submit", json={})
    assert r.status_code == 400 and r.json() == {"error": "target_prompt: field required"}
    r = c.post("/v1/retouch/submit", json={"full": True})
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert c.post("/v1/retouch/submit", content=b"{nope").status_code == 400
    r = c.put("/v1/retouch/cancel", params={"task_id": "nope"})
    assert r.status_code == 400 and "not a task id" in r.json()["error"]
    for action, method in (("cancel", c.put), ("status", c.get), ("get", c.get)):
        r = method(f"/v1/retouch/{action}", params={"task_id": uuid.uuid4().hex})
        assert r.status_code == 404 and "no task with id" in r.json()["error"]

    assert c.get("/v1/retouch/status", params={"task_id": t1}).json()["status"] == "in_progress"
    assert c.get("/v1/retouch/get", params={"task_id": t1}).status_code == 400
    assert c.put("/v1/retouch/cancel", params={"task_id": t1}).json()["status"] == "canceled"
    assert asyncio.run(store.get(t1)).cancel_requested
    asyncio.run(store.finish(t1, {}, {}))
    status = c.get("/v1/retouch/status", params={"task_id": t1}).json()
    assert status["status"] == "completed" and status["executed_at"]
    assert c.get("/v1/retouch/get", params={"task_id": t1}).json() == {"task_id": t1, "cube": "LUT"}
    t2 = uuid.uuid4().hex
    asyncio.run(store.create(t2, {"steps": 1}, b"", b"", owner="api"))
    asyncio.run(store.set_status(t2, "failed", "interrupted: restart"))
    r = c.get("/v1/retouch/get", params={"task_id": t2})
    assert r.status_code == 409 and "interrupted: restart" in r.json()["error"]
    assert asyncio.run(store.get(t1)).status == JobStatus.FINISHED


async def _async(value):
    return value


def test_a_body_without_a_length_over_the_limit_is_413_where_the_app_reads_it_itself():
    """As BentoML does: the app reads the body and answers anything that goes wrong meanwhile with a 500."""
    async def reads(request):
        try:
            return PlainTextResponse(f"read {len(await request.body())}")
        except Exception:
            return PlainTextResponse("An unexpected error has occurred", status_code=500)

    a = Starlette(routes=[Route("/{path:path}", reads, methods=["POST"])])
    a.add_middleware(BodyLimit, max_bytes=100)
    c = TestClient(a)

    def chunked(n):
        yield from (b"a" * 10 for _ in range(n))

    r = c.post("/x", content=chunked(11))
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    assert c.post("/x", content=chunked(10)).text == "read 100"


def test_a_job_store_that_cannot_be_reached_is_a_503_saying_to_retry():
    from clipdlut.serving.errors import StoreUnavailable
    from clipdlut.serving.stores import open_store

    class Down:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] == "http" and scope["path"] == "/status":
                await open_store("redis://127.0.0.1:9/0").get("x")  # (nothing listens on port 9)
            await self.app(scope, receive, send)

    c = TestClient(app((Down, {}), (Answered, {})), raise_server_exceptions=False)
    r = c.get("/status")
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json()["error"] == ("the job store cannot be reached now (ConnectionError); retry in a few seconds")
    assert "127.0.0.1" not in r.text
    with pytest.raises(StoreUnavailable) as failure:
        asyncio.run(open_store("redis://127.0.0.1:9/0").open_jobs())
    assert failure.value.cause.startswith("ConnectionError: Error 111 connecting to 127.0.0.1:9")  # (for the log)


def test_the_openapi_document_declares_the_key_so_try_it_out_can_send_it():
    import json

    async def document(request):
        return JSONResponse({"openapi": "3.0.2", "paths": {"/readyz": {"get": {}}, "/v1/progress": {"post": {}}}})

    a = Starlette(routes=[Route("/docs.json", document)])
    a.add_middleware(Authenticate, registry=Registry(api_key="s3cret"))
    doc = json.loads(TestClient(a).get("/docs.json").text)
    assert doc["components"]["securitySchemes"]["apiKey"] == {
        "type": "http", "scheme": "bearer",
        "description": "a client's key (from `python -m clipdlut clients add NAME`, or CLIPDLUT_API_KEY)"}
    assert doc["security"] == [{"apiKey": []}] and doc["paths"]["/readyz"]["get"]["security"] == []
    assert "security" not in doc["paths"]["/v1/progress"]["post"] and "s3cret" not in json.dumps(doc)


def whoami_app(registry: Registry, legacy_client: str = "") -> Starlette:
    async def whoami(request):
        return PlainTextResponse(client_of(request.scope).name)

    a = Starlette(routes=[Route("/{path:path}", whoami, methods=["GET", "POST", "PUT"])])
    a.add_middleware(Authenticate, registry=registry, legacy_client=legacy_client)
    return a


@pytest.fixture
def two_clients(tmp_path) -> tuple[Registry, str, str]:
    """A clients file with alice and bob; their keys."""
    path = tmp_path / "clients.toml"
    alice, bob = clients.add(path, "alice"), clients.add(path, "bob", max_open_jobs=2)
    return Registry(path), alice, bob


def test_each_key_names_its_client_and_every_bad_key_gets_the_same_401(two_clients):
    registry, alice, bob = two_clients
    c = TestClient(whoami_app(registry))
    assert c.post("/v1/progress", headers={"Authorization": f"Bearer {alice}"}).text == "alice"
    assert c.post("/v1/progress", headers={"Authorization": f"bearer {bob}"}).text == "bob"
    bad = {"missing": {}, "empty": {"Authorization": "Bearer "}, "wrong": {"Authorization": "Bearer " + "x" * 43},
           "very long": {"Authorization": "Bearer " + alice * 200},
           "another scheme": {"Authorization": f"Basic {alice}"},
           "no scheme": {"Authorization": alice}, "non-ASCII": {"Authorization": "Bearer ключ-à".encode()},
           "a key's hash": {"Authorization": f"Bearer {clients.key_hash(alice)}"}}
    answers = set()
    for why, headers in bad.items():
        r = c.post("/v1/progress", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", why
        answers.add(r.text)
    assert len(answers) == 1 and "alice" not in answers.pop()  # (nothing says which keys exist)


def test_a_key_added_or_removed_from_the_file_works_or_stops_without_a_restart(tmp_path):
    path = tmp_path / "clients.toml"
    alice = clients.add(path, "alice")
    now = [0.0]
    c = TestClient(whoami_app(Registry(path, clock=lambda: now[0], recheck_s=1.0)))
    carol = clients.add(path, "carol")

    def who(key):
        r = c.post("/v1/cancel", headers={"Authorization": f"Bearer {key}"})
        return r.text if r.status_code == 200 else r.status_code

    assert who(carol) == 401  # (read a moment ago: the file is looked at again once a second)
    now[0] += 1.0
    assert who(carol) == "carol" and who(alice) == "alice"
    path.write_text(path.read_text().split("[clients.carol]")[0])  # carol's table removed by hand
    now[0] += 1.0
    assert who(carol) == 401 and who(alice) == "alice"
    path.write_text("[clients.alice\n")  # a half-saved edit keeps the clients read last
    now[0] += 1.0
    assert who(alice) == "alice"
    assert alice not in path.read_text() and carol not in path.read_text()


def test_the_original_api_acts_as_the_legacy_client_without_a_key_and_as_the_key_with_one(two_clients):
    registry, alice, bob = two_clients
    c = TestClient(whoami_app(registry, legacy_client="alice"))
    for route in ("/retouch", "/query_task", "/stop_task"):
        assert c.post(route).text == "alice"
        assert c.post(route, headers={"Authorization": f"Bearer {bob}"}).text == "bob"
        assert c.post(route, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.post("/v1/progress").status_code == 401  # (the native API always needs a key)
    assert TestClient(whoami_app(registry)).post("/query_task").status_code == 401  # (no legacy client set)


def test_metrics_need_an_operators_key_on_a_service_of_clients(tmp_path):
    path = tmp_path / "clients.toml"
    alice, ops = clients.add(path, "alice"), clients.add(path, "ops", operator=True)
    c = TestClient(whoami_app(Registry(path)))
    r = c.get("/metrics", headers={"Authorization": f"Bearer {alice}"})
    assert r.status_code == 403 and "operator = true" in r.json()["error"]
    assert c.get("/metrics", headers={"Authorization": f"Bearer {ops}"}).text == "ops"
    assert c.get("/readyz").text == "\x00nobody"  # (an open route of a keyed service: a caller who owns nothing)


def test_an_open_service_has_one_client_that_everyone_is():
    c = TestClient(whoami_app(Registry()))
    assert c.post("/v1/progress").text == ""
    assert c.post("/v1/progress", headers={"Authorization": "Bearer x"}).text == ""


def test_the_task_gate_answers_another_clients_task_as_an_unknown_one(tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.db")
    path = tmp_path / "clients.toml"
    alice, bob = clients.add(path, "alice"), clients.add(path, "bob")
    mine, done = uuid.uuid4().hex, uuid.uuid4().hex
    for task in (mine, done):
        asyncio.run(store.create(task, {"steps": 1}, b"s", b"w", owner="api", client="alice"))
    asyncio.run(store.finish(done, {}, {}))
    inner = Starlette(routes=[Route("/{path:path}", lambda r: PlainTextResponse("app"),
                                    methods=["GET", "POST", "PUT"])])
    inner.add_middleware(TaskGate, route="/v1/retouch", store=lambda: store, validate=None,
                         result=lambda task_id: _async({"task_id": task_id}))
    inner.add_middleware(Authenticate, registry=Registry(path))
    c = TestClient(inner)
    calls = (("cancel", c.put), ("status", c.get), ("get", c.get), ("retry", c.post), ("status", c.head),
             ("get", c.head))
    for task in (mine, done):
        for action, method in calls:
            theirs = method(f"/v1/retouch/{action}", params={"task_id": task},
                            headers={"Authorization": f"Bearer {bob}"})
            unknown_id = uuid.uuid4().hex
            unknown = method(f"/v1/retouch/{action}", params={"task_id": unknown_id},
                             headers={"Authorization": f"Bearer {bob}"})
            assert theirs.status_code == unknown.status_code == 404, action
            assert theirs.text.replace(task, unknown_id) == unknown.text
    assert not asyncio.run(store.get(mine)).cancel_requested  # (bob's cancel reached nothing)
    as_alice = {"Authorization": f"Bearer {alice}"}
    assert c.get("/v1/retouch/status", params={"task_id": mine}, headers=as_alice).json()["status"] == "in_progress"
    r = c.post("/v1/retouch/retry", params={"task_id": done}, headers=as_alice)
    assert r.status_code == 409 and "submit it again" in r.json()["error"]
    assert c.head("/v1/retouch/status", params={"task_id": mine}, headers=as_alice).status_code == 200
    for method, action in ((c.delete, "status"), (c.post, "get"), (c.get, "cancel"), (c.options, "retry"),
                           (c.get, "submit")):  # (nothing reaches BentoML's own task routes)
        r = method(f"/v1/retouch/{action}", params={"task_id": mine}, headers=as_alice)
        assert r.status_code == 405 and r.headers["allow"] and "takes" in r.json()["error"], action
