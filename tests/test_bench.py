"""The benchmark: a smoke run of its code (tiny model; no timing is asserted), and the README showing its
recorded results."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.live import redis_missing

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
@pytest.mark.skipif(redis_missing() is not None, reason=str(redis_missing()))
def test_quick_bench_writes_every_section(tmp_path):
    out = tmp_path / "results.json"
    r = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["quick"] and results["machine"]["cpu_cores"] >= 1
    cost = results["cost"]
    assert cost["original"]["steps"] == 1000 and cost["ours_default"]["steps"] == 200
    ratio = cost["original"]["job_s"] / cost["ours_default"]["job_s"]
    assert cost["job_cheaper_default_vs_default"] == pytest.approx(ratio)
    assert [row["jobs"] for row in results["scaling"]["tiny"]] == [1, 2, 4]
    load = results["continuous_batching"]["loads"][0]
    assert [run["mode"] for run in load["runs"]] == ["lock-step", "continuous"]
    assert all(run["jobs"] == results["continuous_batching"]["jobs"] for run in load["runs"]), load["runs"]
    assert results["render"]["megapixels"] == 12
    apply = results["apply"]  # (tiny photos in the quick run)
    assert apply["photos"] == 4 and apply["one"]["same_bytes"] and apply["folder"]["same_bytes"]
    assert apply["command"] == "python -m bench --quick" and apply["one"]["ours_s"] > apply["startup_s"] > 0
    assert [(x["topology"], x["store"]) for x in results["service_overhead"]] == [("one host", "sqlite"),
                                                                                  ("split", "redis")]
    assert all(x["failures"] == 0 and x["jobs_per_min"] > 0 for x in results["service_overhead"]), \
        results["service_overhead"]
    (cold,) = results["cold_start"]
    assert cold["model"] == "tiny" and cold["to_ready_s"] > 0 and cold["to_first_job_s"] > 0
    table = out.with_suffix(".md").read_text()
    assert "Machine:" in table and "Continuous batching" in table and "Rendering 12 MP" in table
    assert "Applying a LUT at scale" in table and "| a folder of 4 " in table
    assert "| split | redis |" in table and "Cold start" in table and "Soak" in table
    fair = results["fairness"]
    assert [(r["store"], r["waiting_clients"]) for r in fair["queue_cost"]] == [
        ("sqlite", 1), ("sqlite", 50), ("redis", 1), ("redis", 50)]
    assert all(0 < r["p50_ms"] <= r["p99_ms"] for r in fair["queue_cost"]) and "admission p99" in table, fair
    soak = results["soak"]
    assert soak["accepted"] > 0 and soak["lost"] == 0 and soak["ready_probes"] > 0


@pytest.mark.unit
def test_the_readme_shows_the_committed_results_as_recorded():
    """Every benchmark figure in the README is bench/results.md, which is the table of bench/results.json."""
    from bench.__main__ import table

    recorded = (ROOT / "bench" / "results.md").read_text(encoding="utf-8")
    assert table(json.loads((ROOT / "bench" / "results.json").read_text(encoding="utf-8"))) == recorded
    assert recorded in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.e2e
def test_the_apply_bench_writes_its_section_alone(tmp_path):
    """`python -m bench.apply --quick` (smoke run): its section into a copy of the recorded results, the rest kept."""
    out = tmp_path / "results.json"
    recorded = json.loads((ROOT / "bench" / "results.json").read_text(encoding="utf-8"))
    out.write_text(json.dumps(recorded))
    r = subprocess.run([sys.executable, "-m", "bench.apply", "--quick", "--out", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["apply"]["command"] == "python -m bench.apply --quick" and results["cost"] == recorded["cost"]
    assert "`python -m bench.apply --quick`" in out.with_suffix(".md").read_text()


@pytest.mark.e2e
def test_the_safety_bench_compares_every_mechanism(tmp_path):
    """`python -m bench.safety` (smoke run of its code; bench/safety.md holds the recorded figures)."""
    out = tmp_path / "safety.md"
    r = subprocess.run([sys.executable, "-m", "bench.safety", "--steps", "4", "--prompts", "1", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    assert [row[0] for row in rows[1:]] == ["| none", "| at the end", "| each step"] + ["| at the end"] * 3
    assert "python -m bench.safety --model tiny --steps 4 --prompts 1" in out.read_text()
    recorded = (ROOT / "bench" / "safety.md").read_text()
    assert recorded.startswith("Measured with `python -m bench.safety") and "| each step |" in recorded
