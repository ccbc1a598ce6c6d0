"""The README's curl examples, run verbatim against a tiny server (only the host:port is the test server's)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import gradient_image
from tests.live import serving

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")]


def readme_commands() -> dict[str, str]:
    """Every shell line of the README that calls curl (continuations joined), keyed by its route."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines += block.replace("\\\n", " ").splitlines()
    commands = {}
    for line in lines:
        if line.startswith("curl "):
            route = re.search(r"localhost:3000(/[\w/]+)", line).group(1)
            commands[route] = line
        elif line.startswith("IMG="):
            commands["IMG"] = line
    return commands


def run(command: str, port: int, cwd: Path, **env: str) -> str:
    """One README line in bash, curl pointed at the test server and failing on an HTTP error."""
    wrapper = f'curl() {{ command curl --fail-with-body --max-time 60 "${{@//localhost:3000/127.0.0.1:{port}}}"; }}'
    r = subprocess.run(["bash", "-c", f"{wrapper}\n{command}"], cwd=cwd, env={"PATH": "/usr/bin:/bin", **env},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{command}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r.stdout


def test_the_readme_curl_examples_run_as_written(tmp_path):
    commands = readme_commands()
    assert {"/v1/retouch/submit", "/v1/retouch/status", "/v1/progress", "/v1/retouch/cancel", "/v1/retouch/get",
            "/retouch", "/query_task", "/stop_task", "IMG"} <= set(commands)
    gradient_image(320, 240).save(tmp_path / "photo.jpg", quality=90)
    image = run(commands["IMG"] + '\nprintf %s "$IMG"', 0, tmp_path)
    (tmp_path / "server").mkdir()
    with serving(tmp_path / "server") as server:
        port = server.port
        task = json.loads(run(commands["/v1/retouch/submit"], port, tmp_path, IMG=image))
        assert task["status"] == "in_progress"
        ids = {"IMG": image, "ID": task["task_id"]}
        assert json.loads(run(commands["/v1/retouch/status"], port, tmp_path, **ids))["task_id"] == task["task_id"]
        assert json.loads(run(commands["/v1/progress"], port, tmp_path, **ids))["total"] == 200
        deadline = time.monotonic() + 240
        while json.loads(run(commands["/v1/retouch/status"], port, tmp_path, **ids))["status"] == "in_progress":
            assert time.monotonic() < deadline
            time.sleep(0.5)
        result = json.loads(run(commands["/v1/retouch/get"], port, tmp_path, **ids))
        assert result["cube"].count("\n") > 33**3 and result["quality"]["safe"]
        assert json.loads(run(commands["/v1/retouch/cancel"], port, tmp_path, **ids))["status"] == "completed"

        legacy = json.loads(run(commands["/retouch"], port, tmp_path, IMG=image))
        ids = {"IMG": image, "ID": legacy["task_id"]}
        assert legacy["overall_iteration"] == 300
        assert json.loads(run(commands["/query_task"], port, tmp_path, **ids))["task_id"] == legacy["task_id"]
        assert json.loads(run(commands["/stop_task"], port, tmp_path, **ids)) == {"status": "ok",
                                                                                 "task_id": legacy["task_id"]}
