"""The BentoML app in-process (both services, the real job store) through Starlette's test client."""

from __future__ import annotations

import base64
import io
import json
import re
import time
import urllib.parse
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from clipdlut.cube import read_cube
from clipdlut.hald import read_strip
from clipdlut.render import pillow_lut
from tests.conftest import camera_jpeg, gradient_image, kept_exif, page_files, png_bytes, wait

pytestmark = pytest.mark.http
PHOTO = gradient_image(160, 120)
PHOTO_B64 = base64.b64encode(png_bytes(PHOTO)).decode()


def query(client, task_id, **kw):
    r = client.post("/query_task", json={"task_id": task_id, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def test_service_config_passes_bentoml_validation(service):
    from _bentoml_sdk.service.config import validate

    for svc in (service.Optimizer, service.Retouch):
        validate(svc.config)
    assert service.Optimizer.config["resources"]["gpu"] == 1
    assert service.Optimizer.config["workers"] == 1
    assert service.Retouch.dependencies["optimizer"].on is service.Optimizer


@pytest.mark.parametrize("recipe_file", ["bentocloud.yaml", "bentocloud-redis.yaml"])
def test_the_bentocloud_recipe_fits_the_services(service, recipe_file):
    """Each recipe in deploy/ names the services as service.py does, parses as BentoCloud's deployment schema,
    and its overrides pass BentoML's validation; the optimizer scales to zero behind the external queue; the
    API runs several replicas only with a job store they can share."""
    from pathlib import Path

    import yaml
    from _bentoml_sdk.service.config import validate
    from bentoml._internal.cloud.schemas.modelschemas import DeploymentServiceConfig
    from bentoml._internal.utils.cattr import bentoml_cattr

    from clipdlut.serving.settings import Settings

    recipe = yaml.safe_load((Path(__file__).parent.parent / "deploy" / recipe_file).read_text())
    services = {svc.name: svc for svc in (service.Optimizer, service.Retouch)}
    assert set(recipe["services"]) == set(services)
    settings = {f"CLIPDLUT_{name.upper()}" for name in Settings.model_fields}
    for name, conf in recipe["services"].items():
        bentoml_cattr.structure(conf, DeploymentServiceConfig)
        overrides = conf.get("config_overrides", {})
        validate({**services[name].config, **{k: {**services[name].config.get(k, {}), **v}
                                               for k, v in overrides.items()}})
        assert {env["name"] for env in conf.get("envs", [])} <= settings
    optimizer = recipe["services"][service.Optimizer.name]
    assert optimizer["scaling"]["min_replicas"] == 0 and optimizer["config_overrides"]["traffic"]["external_queue"]
    assert optimizer["config_overrides"]["traffic"]["concurrency"] == Settings().max_batch_size
    api = recipe["services"][service.Retouch.name]
    store = {env["name"]: env["value"] for env in api.get("envs", [])}.get("CLIPDLUT_STORE", "")
    assert api["scaling"]["max_replicas"] == 1 or store.startswith("redis://")


def test_reachability_and_ready(client):
    assert client.get("/").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_the_pages_load_nothing_from_elsewhere(client):
    """The landing page and the web page with every file they load (style sheet, script, the zip library), all from
    the service: no CDN, so the page works offline."""
    files = page_files(client.get)
    assert {"/", "/ui/", "/ui/style.css", "/ui/app.js", "/ui/fflate.js"} <= set(files), sorted(files)


def test_the_openapi_page_is_at_docs(client):
    """The landing page takes BentoML's ``/``; its OpenAPI page (the README's and the landing page's link) is
    at ``/docs``."""
    assert "href='/docs'" in client.get("/").text
    r = client.get("/docs")
    assert r.status_code == 200 and "./static_content/swagger-ui-bundle.js" in r.text  # (relative to /)
    assert "docs.json" in client.get("/static_content/swagger-initializer.js").text


def test_original_api_flow_and_client_side_check(client):
    r = client.post("/retouch", json={"image": "data:image/png;base64," + PHOTO_B64,
                                      "target_prompt": "赛博朋克风格的夜晚城市", "iteration": 12})
    assert r.status_code == 200
    body = r.json()
    assert body == {"task_id": body["task_id"], "status": "pending", "current_iteration": 0,
                    "overall_iteration": 12, "lut": None, "image": None}
    done = wait(lambda: (q := query(client, body["task_id"]))["status"] in ("finished", "failed") and q)
    assert done["status"] == "finished" and done["current_iteration"] == 12
    q = query(client, body["task_id"], include_image=True, lut_format="cube")
    cube = base64.b64decode(q["lut"]).decode()
    image = Image.open(io.BytesIO(base64.b64decode(q["image"].split(",", 1)[1])))
    assert image.size == PHOTO.size  # the full-resolution result, not a preview
    client_side = PHOTO.filter(pillow_lut(read_cube(cube).table))
    assert client_side.tobytes() == image.convert("RGB").tobytes()
    strip = read_strip(base64.b64decode(query(client, body["task_id"], lut_format="png")["lut"]))
    assert strip.shape == (33, 33, 33, 3)
    assert np.abs(strip - read_cube(cube).table).max() <= 0.5 / 255 + 1e-9


def test_native_task_flow(client):
    r = client.post("/v1/retouch/submit", json={"image": PHOTO_B64, "target_prompt": "warm golden hour film look",
                                                "steps": 10, "lut_size": 17, "strength": 0.7, "seed": 4,
                                                "image_format": "jpeg"})
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    status = wait(lambda: (s := client.get("/v1/retouch/status", params={"task_id": task_id}).json())["status"]
                  != "in_progress" and s)
    assert status["status"] == "completed"
    progress = client.post("/v1/progress", json={"task_id": task_id, "include_preview": True}).json()
    assert progress["status"] == "finished" and progress["iteration"] == progress["total"] == 10
    assert progress["preview"].startswith("data:image/png;base64,")
    result = client.get("/v1/retouch/get", params={"task_id": task_id}).json()
    assert result["lut_size"] == 17 and result["media_type"] == "image/jpeg" and result["model"] == "tiny"
    assert result["images"] == []  # (one photo: it is `image`; never null, which BentoML's client cannot read)
    assert read_cube(result["cube"]).size == 17
    assert set(result["scores"]) == {"source_target", "result_target", "directional"}
    assert result["timings"]["total_s"] >= result["timings"]["optimize_s"] > 0
    q = result["quality"]
    assert q["safe"] and q["max_slope"] <= 4 and q["min_own_step"] >= -1 and 0 <= q["min_value"] <= q["max_value"] <= 1
    assert 0 < q["ssim"] <= 1 and q["color_shift"] >= 0
    table = read_cube(result["cube"]).table  # (the figures are of the returned .cube)
    assert q["max_slope"] == pytest.approx(max(np.abs(np.diff(table, axis=a)).max() * 16 for a in range(3)), abs=1e-6)


def test_pins_hold_exactly_in_the_returned_cube(client):
    """keep_blacks / keep_whites on the native and the original API: the .cube maps black and white to
    themselves exactly, at a strength that extrapolates the grade too."""
    r = client.post("/v1/retouch/submit", json={"image": PHOTO_B64, "target_prompt": "赛博朋克风格的夜晚城市",
                                                "steps": 15, "lut_size": 17, "strength": 1.8, "keep_blacks": True,
                                                "keep_whites": True})
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    wait(lambda: client.get("/v1/retouch/status", params={"task_id": task_id}).json()["status"] != "in_progress")
    table = read_cube(client.get("/v1/retouch/get", params={"task_id": task_id}).json()["cube"]).table
    assert table[0, 0, 0].tolist() == [0, 0, 0] and table[-1, -1, -1].tolist() == [1, 1, 1]
    legacy = client.post("/retouch", json={"image": PHOTO_B64, "target_prompt": "冷色调", "iteration": 10,
                                           "keep_blacks": True}).json()
    done = wait(lambda: (q := query(client, legacy["task_id"], lut_format="cube"))["status"] == "finished" and q)
    table = read_cube(base64.b64decode(done["lut"])).table
    assert table[0, 0, 0].tolist() == [0, 0, 0]


def test_json_bodies_need_no_content_type(client):
    """`curl -d` sends JSON as a form (and a bare client sends no type): every JSON route reads it as JSON."""
    body = json.dumps({"image": PHOTO_B64, "target_prompt": "冷色调", "iteration": 5})
    for headers in ({"content-type": "application/x-www-form-urlencoded"}, {"content-type": ""}):
        task = client.post("/retouch", content=body, headers=headers)
        assert task.status_code == 200, task.text
        task_id = task.json()["task_id"]
        for route, payload in (("/query_task", {"task_id": task_id}), ("/v1/progress", {"task_id": task_id}),
                               ("/v1/classify", {"image": PHOTO_B64, "concepts": ["白天", "夜晚"]}),
                               ("/v1/embed_text", {"prompts": ["白天"]})):
            r = client.post(route, content=json.dumps(payload), headers=headers)
            assert r.status_code == 200, (route, r.text)
        native = client.post("/v1/retouch/submit", content=json.dumps({"image": PHOTO_B64, "target_prompt": "暖",
                                                                       "steps": 3}), headers=headers)
        assert native.status_code == 200, native.text


def _running(client, steps=3000):
    r = client.post("/retouch", json={"image": PHOTO_B64, "target_prompt": "冷色调", "iteration": steps})
    task_id = r.json()["task_id"]
    wait(lambda: query(client, task_id)["current_iteration"] > 0)
    return task_id


def test_stop_task_while_another_job_completes(client):
    """(BentoML's native cancel needs a real server: the test client runs a task inside its submit call.)"""
    long_a = _running(client)
    short = client.post("/retouch", json={"image": PHOTO_B64, "target_prompt": "暖色", "iteration": 20}).json()
    r = client.post("/stop_task", json={"task_id": long_a})
    assert r.json() == {"status": "ok", "task_id": long_a}
    t0 = time.monotonic()
    wait(lambda: query(client, long_a)["status"] == "stopped", timeout=5)
    assert time.monotonic() - t0 < 1.0
    stopped_at = query(client, long_a)["current_iteration"]
    wait(lambda: query(client, short["task_id"])["status"] == "finished")
    assert query(client, long_a)["current_iteration"] == stopped_at  # no more work after the stop
    assert client.post("/v1/cancel", json={"task_id": long_a}).json() == {"task_id": long_a, "status": "cancelled"}


def test_a_plain_post_whose_job_is_cancelled_gets_409_with_the_reason(client, service):
    """POST /v1/retouch (not submitted as a task) waits for its job; cancelled, it answers 409, not 500."""
    import threading

    from clipdlut.serving.stores.sqlite import SqliteJobStore
    from clipdlut.status import JobStatus

    store = SqliteJobStore(service.S.store)
    answers = []
    t = threading.Thread(target=lambda: answers.append(client.post("/v1/retouch", json={
        "image": PHOTO_B64, "target_prompt": "冷色调", "steps": 4321})))
    t.start()
    job_id = wait(lambda: next((r[0] for r in store._exec("SELECT id FROM jobs WHERE status = ? AND total = 4321",
                                                           (JobStatus.RUNNING.value,))), None))
    assert client.post("/v1/cancel", json={"task_id": job_id}).json()["status"] == "cancelling"
    t.join(timeout=30)
    (r,) = answers
    assert r.status_code == 409 and r.json()["error"] == f"task {job_id} ended cancelled: cancelled by the user"


UNKNOWN_ID = "0b6c2f0e-9a39-4d4b-9c55-2f1d3c1b0a77"
BAD_INPUTS = [
    ("/retouch", {"image": "aGVsbG8=", "target_prompt": "x"}, 400, "not an image"),
    ("/retouch", {"image": "***", "target_prompt": "x"}, 400, "not valid base64"),
    ("/retouch", {"image": PHOTO_B64, "target_prompt": "  "}, 400, "target_prompt is empty"),
    ("/retouch", {"image": PHOTO_B64, "target_prompt": "x" * 500}, 400, "the limit is 200"),
    ("/retouch", {"image": PHOTO_B64, "target_prompt": "x", "iteration": 0}, 400, "iteration"),
    ("/v1/retouch/submit", {"image": PHOTO_B64, "target_prompt": "x", "lut_size": 20}, 400, "lut_size"),
    ("/v1/retouch/submit", {"image": PHOTO_B64, "target_prompt": "x", "steps": 99999}, 400, "steps"),
    ("/v1/retouch/submit", {"image": "data:text/plain;base64,aGVsbG8=", "target_prompt": "x"}, 400, "text/plain"),
    ("/v1/retouch/submit", {"image": base64.b64encode(png_bytes(Image.new("RGB", (2000, 1000)))).decode(),
                            "target_prompt": "x"}, 413, "pixels"),
    ("/query_task", {"task_id": UNKNOWN_ID}, 404, "no task"),
    ("/stop_task", {"task_id": UNKNOWN_ID}, 404, "no task"),
    ("/v1/progress", {"task_id": UNKNOWN_ID}, 404, "no task"),
    ("/query_task", {"task_id": "../../etc/passwd"}, 400, "not a task id"),
    ("/v1/cancel", {"task_id": "1 OR 1=1"}, 400, "not a task id"),
]


@pytest.mark.parametrize("path,body,status,message", BAD_INPUTS)
def test_bad_input_gets_a_clear_4xx(client, path, body, status, message):
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert message in r.text


def test_oversized_body_is_413(client):
    r = client.post("/retouch", content=b"x" * (4 * 2**20), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    for path in ("/v1/embed_image", "/retouch", "/v1/retouch/submit"):  # (sent chunked: no length to refuse by)
        r = client.post(path, content=(b"x" * 2**20 for _ in range(4)), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "larger than" in r.json()["error"], (path, r.text)


def test_apply_endpoint(client):
    ident = "LUT_3D_SIZE 2\n0 0 0\n0 0 1\n0 1 0\n0 1 1\n1 0 0\n1 0 1\n1 1 0\n1 1 1\n"  # swaps red and blue
    r = client.post("/v1/apply", files={"image": ("p.png", png_bytes(PHOTO), "image/png"),
                                        "lut": ("swap.cube", ident.encode(), "text/plain")})
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/png")
    out = np.asarray(Image.open(io.BytesIO(r.content))).astype(int)
    assert np.abs(out - np.asarray(PHOTO)[..., ::-1]).max() <= 1
    jpeg, exif = camera_jpeg(PHOTO)  # a JPEG comes back a JPEG with its EXIF, unless image_format says
    r = client.post("/v1/apply", files={"image": ("p.jpg", jpeg, "image/jpeg"),
                                        "lut": ("swap.cube", ident.encode(), "text/plain")})
    assert r.headers["content-type"].startswith("image/jpeg") and kept_exif(r.content) == {**exif, "orientation": 1}
    r = client.post("/v1/apply", data={"image_format": "png"}, files={"image": ("p.jpg", jpeg, "image/jpeg"),
                                                                      "lut": ("swap.cube", ident.encode())})
    assert r.headers["content-type"].startswith("image/png")
    bad = client.post("/v1/apply", files={"image": ("p.png", png_bytes(PHOTO), "image/png"),
                                          "lut": ("bad.cube", b"LUT_3D_SIZE 2\n1 2\n", "text/plain")})
    assert bad.status_code == 400 and "line 2" in bad.json()["error"]


def test_clip_endpoints(client):
    vecs = client.post("/v1/embed_text", json={"prompts": ["白天", "夜晚"]}).json()
    assert len(vecs) == 2 and abs(np.linalg.norm(vecs[0]) - 1) < 1e-4
    img = client.post("/v1/embed_image", json={"image": PHOTO_B64}).json()
    assert len(img) == 32
    r = client.post("/v1/classify", json={"image": PHOTO_B64, "concepts": ["白天", "夜晚", "黄昏"]}).json()
    assert abs(sum(r["probabilities"].values()) - 1) < 1e-6 and r["best"] in r["probabilities"]


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression-bomb or zero-size header)."""
    data = bytearray(png_bytes(Image.new("RGB", (1, 1))))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (40, 30), c) for c in ((200, 30, 30), (30, 200, 30))]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


PNG = png_bytes(PHOTO)
HARDENING = [  # (what, path, request kwargs, status, words in the message)
    ("bomb header", "/retouch", {"json": {"image": _b64(_png_with_size(100_000, 100_000)), "target_prompt": "x"}},
     413, "pixels"),
    ("zero-size", "/retouch", {"json": {"image": _b64(_png_with_size(0, 10)), "target_prompt": "x"}}, 400, "image"),
    ("truncated", "/retouch", {"json": {"image": _b64(PNG[: len(PNG) // 2]), "target_prompt": "x"}}, 400,
     "truncated or corrupt"),
    ("corrupt", "/v1/retouch/submit", {"json": {"image": _b64(PNG[:40] + bytes(range(256)) * 8),
                                                "target_prompt": "x"}}, 400, "image"),
    ("junk base64", "/retouch", {"json": {"image": "iVBOR$$%%^^", "target_prompt": "x"}}, 400, "base64"),
    ("bad padding", "/retouch", {"json": {"image": PHOTO_B64[:-2] + "===", "target_prompt": "x"}}, 400, "image"),
    ("pdf data URL", "/retouch", {"json": {"image": "data:application/pdf;base64,JVBERi0=", "target_prompt": "x"}},
     400, "application/pdf"),
    ("control-only prompt", "/retouch", {"json": {"image": PHOTO_B64, "target_prompt": "\x00\x07\x1b"}}, 400, "empty"),
    ("10,000 characters", "/v1/retouch/submit", {"json": {"image": PHOTO_B64, "target_prompt": "色" * 10_000}},
     400, "target_prompt has 10000 characters; the limit is 200"),
    ("1,000 characters", "/retouch", {"json": {"image": PHOTO_B64, "target_prompt": "色" * 1000}}, 400,
     "the limit is 200"),
    ("only emoji", "/retouch", {"json": {"image": PHOTO_B64, "target_prompt": "🌆🌃✨"}}, 400, "no words"),
    ("non-UTF-8 bytes", "/retouch", {"content": b'{"image": "x", "target_prompt": "\xff\xfe"}',
                                     "headers": {"content-type": "application/json"}}, 400, "not valid JSON (UTF-8)"),
    ("non-UTF-8 task", "/v1/retouch/submit", {"content": b'{"target_prompt": "\xff"}',
                                              "headers": {"content-type": "application/json"}}, 400, "JSON"),
    ("not a UUID", "/v1/progress", {"json": {"task_id": "zzz"}}, 400, "not a task id"),
    ("malformed cube", "/v1/apply", {"files": {"image": ("p.png", PNG, "image/png"),
                                               "lut": ("l.cube", b"LUT_3D_SIZE 3\n0 0 0\n", "text/plain")}},
     400, "LUT"),
    ("malformed Hald", "/v1/apply", {"files": {"image": ("p.png", PNG, "image/png"),
                                               "lut": ("h.png", png_bytes(Image.new("RGB", (10, 7))), "image/png")}},
     400, "LUT"),
    ("JSON to a multipart route", "/v1/apply", {"json": {"image": PHOTO_B64, "lut": "x"}}, 400,
     "image: Invalid file type"),
    ("broken multipart", "/v1/apply", {"content": b"--zzz\r\ngarbage",
                                       "headers": {"content-type": "multipart/form-data; boundary=zzz"}}, 400,
     "image: "),
    ("headerless multipart", "/v1/apply", {"content": b"garbage",
                                           "headers": {"content-type": "multipart/form-data; boundary=zzz"}}, 400,
     "multipart"),
    ("XML to a JSON route", "/retouch", {"content": b"<image/>", "headers": {"content-type": "application/xml"}},
     400, "not valid JSON"),
    ("array body", "/v1/retouch/submit", {"json": [1, 2]}, 400, "object"),
]


@pytest.mark.parametrize("what,path,kwargs,status,words", HARDENING, ids=[h[0] for h in HARDENING])
def test_hostile_input_gets_a_clear_4xx(client, what, path, kwargs, status, words):
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    assert words.lower() in r.json()["error"].lower()


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_images_use_the_first_frame(client, fmt):
    r = client.post("/retouch", json={"image": _b64(_animated(fmt)), "target_prompt": "暖色", "iteration": 2})
    assert r.status_code == 200, r.text
    done = wait(lambda: (q := query(client, r.json()["task_id"]))["status"] not in ("pending", "processing") and q)
    image = Image.open(io.BytesIO(base64.b64decode(query(client, done["task_id"], include_image=True)["image"]
                                                   .split(",", 1)[1])))
    assert done["status"] == "finished" and image.size == (40, 30)


def test_control_characters_are_removed_from_a_prompt(client):
    r = client.post("/v1/retouch/submit", json={"image": PHOTO_B64, "target_prompt": "暖\x00色\u200b调\n", "steps": 2})
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    wait(lambda: client.get("/v1/retouch/status", params={"task_id": task_id}).json()["status"] == "completed")
    assert client.get("/v1/retouch/get", params={"task_id": task_id}).json()["cube"].startswith("# prompt: 暖 色 调")


# -- looks for a whole shoot (issue 15) ----------------------------------------------------------------------

def finished(client, body):
    r = client.post("/v1/retouch/submit", json=body)
    assert r.status_code == 200, r.text
    task_id = r.json()["task_id"]
    status = wait(lambda: (s := client.get("/v1/retouch/status", params={"task_id": task_id}).json())["status"]
                  != "in_progress" and s)
    assert status["status"] == "completed", client.post("/v1/progress", json={"task_id": task_id}).text
    return client.get("/v1/retouch/get", params={"task_id": task_id}).json()


def test_a_series_gets_one_cube_and_each_photo_graded_from_it(client):
    photos = [gradient_image(160, 120, 1), gradient_image(120, 90, 2), gradient_image(100, 140, 3)]
    result = finished(client, {"images": [base64.b64encode(png_bytes(p)).decode() for p in photos],
                               "target_prompt": "温暖的金色黄昏", "steps": 8, "lut_size": 17})
    assert len(result["images"]) == 3 and result["image"] == result["images"][0]["image"]
    lut = pillow_lut(read_cube(result["cube"]).table)
    for photo, graded in zip(photos, result["images"]):
        image = Image.open(io.BytesIO(base64.b64decode(graded["image"])))
        assert (graded["width"], graded["height"]) == photo.size and graded["quality"]["safe"]
        assert image.convert("RGB").tobytes() == photo.filter(lut).tobytes()  # bit for bit, from the .cube
    assert "one LUT for a series of 3 photos" in result["cube"]


def test_refining_starts_from_a_finished_task_or_a_cube_file(client, service):
    first = finished(client, {"image": PHOTO_B64, "target_prompt": "冷色调", "steps": 40, "lut_size": 17})
    again = finished(client, {"image": PHOTO_B64, "target_prompt": "更暖一点", "start_from": first["task_id"],
                              "steps": 1, "lut_size": 17})
    before, after = read_cube(first["cube"]).table, read_cube(again["cube"]).table
    moved = np.abs(before - read_cube(_identity_cube(17)).table).max()  # (the first look, from the identity)
    assert np.abs(after - before).max() < 0.25 * moved
    assert f"refined from task {first['task_id']}" in again["cube"]
    uploaded = finished(client, {"image": PHOTO_B64, "target_prompt": "更暖一点", "start_from": first["cube"],
                                 "steps": 1, "lut_size": 17})
    assert np.abs(read_cube(uploaded["cube"]).table - before).max() < 0.25 * moved
    r = client.post("/v1/retouch/submit", json={"image": PHOTO_B64, "target_prompt": "x",
                                                "start_from": "LUT_3D_SIZE 3"})
    assert r.status_code == 400 and "start_from" in r.json()["error"]
    r = client.post("/v1/retouch/submit", json={"image": PHOTO_B64, "target_prompt": "x", "start_from": UNKNOWN_ID})
    assert r.status_code == 404 and "start_from" in r.json()["error"]


def _identity_cube(n):
    from clipdlut.cube import write_cube
    from clipdlut.table import identity_table
    return write_cube(identity_table(n))


def test_black_and_white_gives_a_neutral_cube(client):
    result = finished(client, {"image": PHOTO_B64, "target_prompt": "高对比度的黑白照片", "mode": "bw", "steps": 6,
                               "lut_size": 17, "strength": 0.6})
    rows = [line.split() for line in result["cube"].splitlines() if line[:1].isdigit()]
    assert len(rows) == 17**3 and all(r == g == b for r, g, b in rows)
    assert result["mode"] == "bw" and "mode: bw" in result["cube"]


def test_a_reference_photo_alone_gives_the_look(client):
    tinted = Image.fromarray((np.asarray(PHOTO) * [1.0, 0.7, 0.4]).astype(np.uint8))
    result = finished(client, {"image": PHOTO_B64, "reference_image": base64.b64encode(png_bytes(tinted)).decode(),
                               "steps": 20, "lut_size": 17})
    assert "aimed at a reference photo" in result["cube"] and result["quality"]["safe"]


@pytest.mark.parametrize("body,message", [
    ({"target_prompt": "x"}, "`image`, or a series as `images`"),
    ({"image": PHOTO_B64, "images": [PHOTO_B64], "target_prompt": "x"}, "one of the two"),
    ({"image": PHOTO_B64}, "target_prompt`, `reference_image`, or both"),
    ({"images": [PHOTO_B64] * 17, "target_prompt": "x"}, "images"),
    ({"images": [PHOTO_B64, "***"], "target_prompt": "x"}, "images[1]: the image is not valid base64"),
    ({"image": PHOTO_B64, "target_prompt": "x", "mode": "sepia"}, "mode"),
    ({"image": PHOTO_B64, "reference_image": "aGVsbG8=", "target_prompt": "x"}, "reference_image: "),
    ({"image": PHOTO_B64, "target_prompt": "x", "start_from": "a Hald PNG"}, "neither a task id nor"),
])
def test_a_bad_shoot_request_gets_a_clear_400(client, body, message):
    r = client.post("/v1/retouch/submit", json=body)
    assert r.status_code == 400 and message in r.json()["error"], r.text


def test_the_openapi_page_documents_a_shoot_s_fields(client):
    schemas = client.get("/docs.json").json()["components"]["schemas"].values()
    (request,) = [x["properties"] for x in schemas if "start_from" in x.get("properties", {})]
    for field in ("images", "reference_image", "start_from", "mode"):
        assert request[field]["description"], field
    assert "16" in request["images"]["description"] and "bw" in request["mode"]["description"]
    results = [x["properties"] for x in schemas if "cube" in x.get("properties", {}) and "images" in x["properties"]]
    assert results and all(r["images"]["description"] for r in results)


def download_name(response) -> str:
    """The file name a response's Content-Disposition gives (RFC 6266: ``filename*`` where it is not ASCII)."""
    disposition = response.headers["content-disposition"]
    if (m := re.search(r"filename\*=utf-8''([^;]+)", disposition, re.IGNORECASE)):
        return urllib.parse.unquote(m.group(1))
    return re.search(r'filename="([^"]+)"', disposition).group(1)


def test_the_lut_comes_in_every_format_by_its_own_name(client):
    """`/v1/lut` `format`: each file is the delivered .cube converted (clipdlut/formats.py), named for the look."""
    from clipdlut.formats import FORMATS, convert, file_name

    result = finished(client, {"image": PHOTO_B64, "target_prompt": "冷色调", "steps": 3, "lut_size": 33})
    for fmt in FORMATS:
        r = client.post("/v1/lut", json={"task_id": result["task_id"], "format": fmt, "size": 17})
        assert r.status_code == 200, (fmt, r.text)
        assert r.content == convert(result["cube"], fmt, 17), fmt
        assert download_name(r) == file_name("冷色调", fmt, 17), r.headers["content-disposition"]  # (the look's words)
    assert client.post("/v1/lut", json={"task_id": result["task_id"]}).content == result["cube"].encode("utf-8")
    r = client.post("/v1/lut", json={"task_id": result["task_id"], "format": "tiff"})
    assert r.status_code == 400 and "3dl-flame" in r.json()["error"], r.text


def test_the_lut_comes_at_any_strength_blended_and_made_safe_as_the_job_s_own(client):
    """`/v1/lut` `strength`: the job's optimized LUT blended and repaired as its own `.cube` was (the optimizer's
    LUT is safe, so a blend towards the identity is that blend exactly, and doubling it is repaired), in every
    format; at the job's own strength, its `.cube` to the last byte."""
    from clipdlut.formats import FORMATS, convert
    from clipdlut.safety import measure
    from clipdlut.table import identity_table

    result = finished(client, {"image": PHOTO_B64, "target_prompt": "赛博朋克风格的夜晚城市", "steps": 6,
                               "lut_size": 17, "keep_whites": True})
    own = read_cube(result["cube"]).normalized()

    def lut(**options) -> bytes:
        r = client.post("/v1/lut", json={"task_id": result["task_id"], **options})
        assert r.status_code == 200, r.text
        return r.content

    assert lut(strength=1.0) == result["cube"].encode("utf-8")
    for strength in (0.0, 0.5, 2.0):
        cube = lut(strength=strength)
        table = read_cube(cube).normalized()
        assert f"strength: {strength}" in cube.decode("utf-8")
        assert measure(torch.as_tensor(table).permute(3, 0, 1, 2).unsqueeze(0)).safe
        assert table[-1, -1, -1].tolist() == [1.0, 1.0, 1.0]  # (the job's pins hold)
        if strength < 1:
            blend = identity_table(17) + strength * (own - identity_table(17))
            assert np.abs(table - blend).max() < 2e-6, strength
        for fmt in FORMATS:
            assert lut(format=fmt, strength=strength) == convert(cube, fmt), (fmt, strength)
    named = client.post("/v1/lut", json={"task_id": result["task_id"], "strength": 0.5, "size": 33})
    assert download_name(named) == "赛博朋克风格的夜晚城市-50pct_33.cube"
    r = client.post("/v1/lut", json={"task_id": result["task_id"], "strength": 3})
    assert r.status_code == 400 and "strength must be from 0 to 2" in r.json()["error"], r.text


def test_footage_is_graded_as_the_display_shows_it_and_its_lut_is_on_the_log_encoding(client):
    """`input_space` (clipdlut/viewing.py): the result image is the display rendering graded, rendered from the
    returned `display` LUT on the log frame; a `look` LUT maps log to log and its image is rendered by its `display`
    twin; names the OCIO config lacks get a 400 listing what it has."""
    from clipdlut.viewing import open_viewing

    viewing = open_viewing("S-Log3 S-Gamut3.Cine")
    photo = np.asarray(PHOTO.convert("RGB")) / 255.0
    log = Image.fromarray(np.round(viewing.from_display(photo) * 255).astype(np.uint8))
    assert np.abs(np.asarray(log) / 255.0 - photo).mean() > 0.1  # (a log frame looks flat: far from the photo)
    body = {"image": _b64(png_bytes(log)), "target_prompt": "冷色调", "steps": 3, "lut_size": 17,
            "input_space": "S-Log3 S-Gamut3.Cine"}
    for kind in ("display", "look"):
        result = finished(client, {**body, "lut_kind": kind})
        cube = read_cube(result["cube"])
        assert "input: S-Log3 S-Gamut3.Cine (studio-config" in "\n".join(cube.comments)
        output = next(c for c in cube.comments if c.startswith("output: "))
        assert ("the look alone" in output) == (kind == "look") and ("sRGB - Display" in output) == (kind == "display")
        assert (result["input_space"], result["lut_kind"]) == ("S-Log3 S-Gamut3.Cine", kind)
        graded = Image.open(io.BytesIO(base64.b64decode(result["image"]))).convert("RGB")
        assert np.abs(np.asarray(graded) / 255.0 - photo).mean() < 0.05
        q = result["quality"]
        if kind == "display":  # (the image is the returned LUT on the frame, as a client's Pillow renders it)
            assert graded.tobytes() == log.filter(pillow_lut(cube.table)).tobytes()
            assert not q["safe"] and "OpenColorIO's technical transform" in q["note"]  # (OCIO's slopes, kept)
        else:
            assert q["safe"] and q["note"] is None  # (a look LUT is made safe in the log encoding)
    refine = client.post("/v1/retouch/submit", json={**body, "start_from": result["task_id"]})
    assert refine.status_code == 400 and "footage (input_space) starts from the identity" in refine.text
    photo_from_footage = client.post("/v1/retouch/submit", json={"image": PHOTO_B64, "target_prompt": "x",
                                                                  "start_from": result["task_id"]})
    assert photo_from_footage.status_code == 400 and "graded footage" in photo_from_footage.text
    for bad, words in (({"input_space": "S-Log9"}, "input_space 'S-Log9' is not in the OCIO config"),
                       ({"input_space": "ACEScg"}, "is scene-linear"),
                       ({"input_space": "Apple Log", "view": "Filmic"}, "view 'Filmic' is not a view of"),
                       ({"input_space": None, "display": "sRGB - Display"}, "display, view and lut_kind are for")):
        r = client.post("/v1/retouch/submit", json={**body, **bad})
        assert r.status_code == 400 and words in r.json()["error"], r.text


def test_protect_skin_keeps_skin_on_every_delivered_lut_and_each_result_says_how_far_skin_moved(client):
    """`protect_skin` (clipdlut/skin.py): the result's skin figures are within the bound and say so, the `.cube`
    and a coarser size from `/v1/lut` keep it on every skin colour; a job without it reports its figures too; what
    protection cannot keep is a 400."""
    from clipdlut import skin

    chart = _b64(png_bytes(skin.chart()))
    body = {"image": chart, "target_prompt": "赛博朋克风格的夜晚城市", "steps": 6, "lut_size": 33, "seed": 1}
    plain, kept = finished(client, body), finished(client, {**body, "protect_skin": True})
    assert plain["skin"]["protected"] is False and kept["skin"]["protected"] is True
    for result in (plain, kept):
        assert result["skin"]["colours"] == len(skin.region_colours(skin.FIGURE_STEP))
        assert result["skin"]["hue_shift"] == pytest.approx(skin.figures(read_cube(result["cube"]).normalized())
                                                            .hue_shift, abs=1e-6)
    assert kept["skin"]["hue_shift"] <= skin.HUE_DEGREES and kept["skin"]["delta_e"] <= skin.DELTA_E
    for size in (17, 65):
        r = client.post("/v1/lut", json={"task_id": kept["task_id"], "size": size})
        f = skin.figures(read_cube(r.text).normalized(), step=2)
        assert r.status_code == 200 and f.hue_shift <= skin.HUE_DEGREES and f.delta_e <= skin.DELTA_E, (size, f)
    footage = finished(client, {**body, "protect_skin": True, "input_space": "S-Log3 S-Gamut3.Cine", "steps": 3})
    assert footage["skin"]["protected"] and footage["skin"]["hue_shift"] <= skin.HUE_DEGREES  # (on the look)
    for bad, words in (({"mode": "bw"}, "a black-and-white look removes it"),
                       ({"input_space": "S-Log3 S-Gamut3.Cine", "display": "Rec.2100-PQ - Display"},
                        "grade for an sRGB or Rec.709 display")):
        r = client.post("/v1/retouch/submit", json={**body, "protect_skin": True, **bad})
        assert r.status_code == 400 and words in r.json()["error"], r.text


def test_a_camera_jpeg_comes_back_a_jpeg_with_its_exif_on_both_apis(client):
    """A photo keeps its format by default (a JPEG stays a JPEG) and its EXIF on the native API; the original API
    answers a PNG, as its clients expect, with the same EXIF; the orientation is upright, as the pixels are."""
    data, expected = camera_jpeg(gradient_image(160, 120))
    native = finished(client, {"image": _b64(data), "target_prompt": "温暖的金色黄昏", "steps": 3, "lut_size": 17})
    image = base64.b64decode(native["image"])
    assert native["media_type"] == "image/jpeg" and Image.open(io.BytesIO(image)).format == "JPEG"
    assert Image.open(io.BytesIO(image)).size == (120, 160)  # (turned upright by the orientation tag)
    assert kept_exif(image) == {**expected, "orientation": 1}
    as_png = finished(client, {"image": _b64(data), "target_prompt": "温暖的金色黄昏", "steps": 3, "lut_size": 17,
                               "image_format": "png"})
    assert as_png["media_type"] == "image/png" and kept_exif(base64.b64decode(as_png["image"]))["model"] == "EOS R5"
    task = client.post("/retouch", json={"image": _b64(data), "target_prompt": "暖色", "iteration": 3}).json()
    wait(lambda: query(client, task["task_id"])["status"] == "finished")
    legacy = query(client, task["task_id"], include_image=True)["image"]
    legacy_png = base64.b64decode(legacy.split(",", 1)[1] if legacy.startswith("data:") else legacy)
    assert Image.open(io.BytesIO(legacy_png)).format == "PNG"
    assert kept_exif(legacy_png) == {**expected, "orientation": 1}
