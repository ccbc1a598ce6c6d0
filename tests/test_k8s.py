"""The Kubernetes manifests (deploy/k8s/): valid against the Kubernetes schemas (offline), and run for real by a real
engine, `podman kube play`: the CPU image for both services, the GPU limit dropped by a test overlay, the host's
network, and a job through them that finishes."""

from __future__ import annotations

import base64
import copy
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import gradient_image, on, png_bytes, wait, wait_ready
from tests.containers import Container, podman_missing
from tests.live import free_port

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
PLAYED = ("Deployment", "PersistentVolumeClaim")  # (podman plays these; Services, autoscalers, budgets need a cluster)


def documents() -> list[dict]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_name(docs: list[dict], kind: str, name: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.unit
def test_the_manifests_are_valid_kubernetes_and_say_what_the_readme_says():
    r = subprocess.run([str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "--quiet",
                        *map(str, MANIFESTS)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    docs = documents()
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} >= {
        ("Deployment", "clipdlut-api"), ("Service", "clipdlut"), ("Deployment", "clipdlut-optimizer"),
        ("Service", "clipdlut-optimizer"), ("HorizontalPodAutoscaler", "clipdlut-optimizer"),
        ("PodDisruptionBudget", "clipdlut-api"), ("Deployment", "clipdlut-redis")}
    optimizer = by_name(docs, "Deployment", "clipdlut-optimizer")["spec"]["template"]["spec"]
    (container,) = optimizer["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["args"] == ["start-http-server", "--service-name", "clipdlut-optimizer"]
    for name in ("clipdlut-api", "clipdlut-optimizer"):
        spec = by_name(docs, "Deployment", name)["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert spec["securityContext"]["runAsNonRoot"] and 15 <= spec["terminationGracePeriodSeconds"] <= 60
    api = by_name(docs, "Deployment", "clipdlut-api")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in api["env"]}
    assert env["CLIPDLUT_STORE"].startswith("redis://clipdlut-redis:")
    assert env["CLIPDLUT_OPTIMIZER_URL"] == "http://clipdlut-optimizer:3000"


def overlay(docs: list[dict], ports: dict[str, int], images: dict[str, str]) -> list[dict]:
    """The manifests as one host without a cluster runs them: what podman plays, one pod each on the host's network
    (each on a port of its own, Services' names replaced by 127.0.0.1), test images, no GPU."""
    out = []
    for doc in copy.deepcopy(docs):
        if doc["kind"] not in PLAYED:
            continue
        if doc["kind"] == "Deployment":
            name = doc["metadata"]["name"]
            spec = doc["spec"]["template"]["spec"]
            doc["spec"]["replicas"], spec["hostNetwork"] = 1, True
            (c,) = spec["containers"]
            c["image"] = images[name]
            c.get("resources", {}).get("limits", {}).pop("nvidia.com/gpu", None)
            c["resources"] = {k: v for k, v in c.get("resources", {}).items() if v}
            c.pop("ports")  # (the host's network: no port mappings; the probes name the port)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in c:
                    target = c[probe].get("httpGet") or c[probe]["tcpSocket"]
                    target["port"] = ports[name]
            if name == "clipdlut-redis":
                c["args"] = [a if a != "6379" else str(ports[name]) for a in c["args"]]
            for e in c.get("env", []):
                e["value"] = {"PORT": str(ports[name]),
                              "CLIPDLUT_STORE": f"redis://127.0.0.1:{ports['clipdlut-redis']}/0",
                              "CLIPDLUT_OPTIMIZER_URL": f"http://127.0.0.1:{ports['clipdlut-optimizer']}"
                              }.get(e["name"], e["value"])
            c.setdefault("env", []).extend([{"name": "CLIPDLUT_PROGRESS_EVERY", "value": "2"}])
        out.append(doc)
    return out


@pytest.mark.container
@pytest.mark.skipif(podman_missing() is not None, reason=str(podman_missing()))
def test_a_job_finishes_through_the_manifests_played_by_podman(podman, built, redis_image, tmp_path):
    ports = {name: free_port() for name in ("clipdlut-api", "clipdlut-optimizer", "clipdlut-redis")}
    images = {"clipdlut-api": "clipdlut:cpu", "clipdlut-optimizer": "clipdlut:cpu", "clipdlut-redis": redis_image}
    played = tmp_path / "clipdlut.yaml"
    played.write_text(yaml.safe_dump_all(overlay(documents(), ports, images)))
    podman("kube", "play", str(played), timeout=300)
    try:
        api = Container(podman, "", ports["clipdlut-api"])
        wait_ready(on(api.url), timeout=180, every=0.5)
        image = base64.b64encode(png_bytes(gradient_image(96, 64))).decode()
        task = httpx.post(api.url + "/v1/retouch/submit", json={"image": image, "target_prompt": "复古胶片",
                                                                 "steps": 8, "lut_size": 17}, timeout=30).json()
        wait(lambda: httpx.get(api.url + "/v1/retouch/status", params={"task_id": task["task_id"]}, timeout=30
                               ).json()["status"] != "in_progress", timeout=180, every=0.25)
        result = httpx.get(api.url + "/v1/retouch/get", params={"task_id": task["task_id"]}, timeout=30).json()
        assert result["steps"] == 8 and result["quality"]["safe"] and result["model"] == "tiny"
    finally:
        podman("kube", "down", str(played), check=False, timeout=120)
        podman("volume", "rm", "--force", "clipdlut-redis-data", check=False)  # (the claim's volume outlives it)
