"""The load test (locustfile.py) counts every job's end: run against a router that answers some status polls itself,
with a 503 or an HTML error page, each such job is a failed JOB row named by its cause, and no user crashes. The
service needs a key here, which the users send (``LOAD_KEY``)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.live import Proxy, haproxy_missing, serving

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(haproxy_missing() is not None, reason=str(haproxy_missing()))]
# One status poll in six answered by the router: a 503 with a JSON error (our own shape), or a 502 HTML page.
FLAKY_ROUTER = "\n".join([
    "  acl status_poll path /v1/retouch/status /query_task",
    "  http-request return status 503 content-type application/json string '{\"error\": \"busy\"}' "
    "if status_poll { rand(12) eq 0 }",
    "  http-request return status 502 content-type text/html "
    "string '<html><body><h1>502 Bad Gateway</h1></body></html>' if status_poll { rand(12) eq 1 }"])


def test_jobs_hurt_by_the_router_are_failed_rows_and_no_user_crashes(tmp_path):
    with serving(tmp_path / "api", CLIPDLUT_PROGRESS_EVERY="2", CLIPDLUT_API_KEY="load-s3cret") as server:
        router = Proxy(tmp_path, [server.url], rules=FLAKY_ROUTER).start()
        try:
            prefix = tmp_path / "load"
            run = subprocess.run([str(Path(sys.executable).parent / "locust"), "-f", str(ROOT / "locustfile.py"),
                                  "--headless", "-u", "6", "-r", "6", "-t", "20s", "--host", router.url, "--csv",
                                  str(prefix), "--only-summary"], cwd=ROOT, capture_output=True, text=True,
                                 env={**server.env, "LOAD_STEPS": "4", "LOAD_IMAGE_SIDE": "128",
                                      "LOAD_KEY": "load-s3cret"}, timeout=180)
        finally:
            router.stop()
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    exceptions = list(csv.DictReader(open(f"{prefix}_exceptions.csv")))
    assert exceptions == [], exceptions  # (a user that raised: the job it ran is lost from the counts)
    failures = {(r["Name"], r["Error"]): int(r["Occurrences"]) for r in csv.DictReader(open(f"{prefix}_failures.csv"))
                if r["Method"] == "JOB"}
    causes = {error for _, error in failures}
    assert any("status poll: HTTP 503" in c for c in causes), failures
    assert any("status poll: HTTP 502 (an HTML page: a router's error)" in c for c in causes), failures
    stats = {r["Name"]: r for r in csv.DictReader(open(f"{prefix}_stats.csv")) if r["Type"] == "JOB"}
    for name, row in stats.items():  # (each job counted once: its failures are the rows above)
        assert int(row["Failure Count"]) == sum(n for (job, _), n in failures.items() if job == name)
    assert sum(int(r["Request Count"]) - int(r["Failure Count"]) for r in stats.values()) > 0  # (others finished)
    assert not any("401" in c for c in causes), failures  # (every call sent the key)
