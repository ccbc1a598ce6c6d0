"""The request models (clipdlut/serving/schemas.py): their limits come from the settings, so raising one raises it on
every interface and in the OpenAPI document."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = textwrap.dedent("""
    import base64, io, json, os, time
    from PIL import Image
    from _bentoml_impl.tasks.result import Sqlite3Store
    from tests.conftest import wait_ready
    from bentoml._internal.configuration.containers import BentoMLContainer
    Sqlite3Store.init_db(BentoMLContainer.result_store_file.get())
    import service
    from starlette.testclient import TestClient

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 90, 60)).save(buf, format="PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    out = {}
    with TestClient(service.Retouch.to_asgi()) as c:
        wait_ready(c.get, timeout=60)
        for steps in (8000, 8001):
            # (a test client runs a submitted task before it answers, so the native body at 8000 has another
            # mistake: the answer names the field it refuses, and that is not steps)
            native = c.post("/v1/retouch/submit", json={"image": image, "steps": steps,
                                                         "target_prompt": "" if steps == 8000 else "x"})
            legacy = c.post("/retouch", json={"image": image, "target_prompt": "x", "iteration": steps})
            out[steps] = [native.json()["error"].split(":")[0], legacy.status_code]
            if legacy.status_code == 200:
                c.post("/stop_task", json={"task_id": legacy.json()["task_id"]})
        text = c.get("/docs.json").text
        out["documented"] = [text.count('"maximum": 8000') + text.count('"maximum":8000'),
                             text.count('"maximum": 5000') + text.count('"maximum":5000')]
    print(json.dumps(out), flush=True)
    # (the in-process optimizer's thread may still be inside a torch step of the cancelled job: ending the
    # interpreter under it aborts the process, so leave without finalizing; `bentoml serve` stops it first)
    os._exit(0)
""")


@pytest.mark.http
def test_a_raised_step_limit_is_accepted_and_documented_on_every_interface(tmp_path):
    env = {**os.environ, "CLIPDLUT_MAX_STEPS": "8000", "CLIPDLUT_CLIP_MODEL": "tiny", "BENTOML_HOME": str(tmp_path),
           "CLIPDLUT_STORE": str(tmp_path / "jobs.db"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["8000"] == ["target_prompt", 200] and out["8001"] == ["steps", 400]
    assert out["documented"][0] >= 2 and out["documented"][1] == 0  # the native and the original request
