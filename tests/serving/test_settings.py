"""The service's settings (clipdlut/serving/settings.py): read from CLIPDLUT_* variables, checked at start."""

import subprocess
import sys
from pathlib import Path

import pytest

from clipdlut.serving.settings import Settings, load_settings

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent.parent


def test_settings_from_env():
    s = load_settings({"CLIPDLUT_MAX_STEPS": "10", "CLIPDLUT_MAX_BODY_MB": "1.5",
                       "CLIPDLUT_GPU_TYPE": "nvidia-a100-80gb", "CLIPDLUT_READY_NEEDS_OPTIMIZER": "0",
                       "CLIPDLUT_API_KEY": "", "OTHER": "x"})
    assert (s.max_steps, s.max_body_mb, s.gpu_type) == (10, 1.5, "nvidia-a100-80gb")
    assert s.ready_needs_optimizer is False and s.api_key == "" and s.views == Settings().views
    with pytest.raises(ValueError, match="CLIPDLUT_MAX_STEPS=many is not valid: Input should be a valid integer"):
        load_settings({"CLIPDLUT_MAX_STEPS": "many"})
    with pytest.raises(ValueError, match="CLIPDLUT_IMAGE_VARIANT=arm is not valid"):
        load_settings({"CLIPDLUT_IMAGE_VARIANT": "arm"})


def test_the_process_environment_is_read_and_changes_are_checked(monkeypatch):
    monkeypatch.setenv("CLIPDLUT_VIEWS", "2")
    monkeypatch.setenv("CLIPDLUT_CORS_ORIGINS", "")
    s = load_settings()
    assert (s.views, s.cors_origins) == (2, "")
    assert Settings().views == 4  # (settings built in code are what the code says: the environment is not read)
    assert s.but(views=8).views == 8 and s.views == 2
    with pytest.raises(ValueError, match="views"):
        s.but(views=0)


@pytest.mark.parametrize(("name", "value", "words"), [
    ("MAX_BATCH_SIZE", "0", "at least 1"), ("VIEWS", "65", "from 1 to 64"), ("WATCHDOG_S", "-1", "at least 0.1"),
    ("MAX_OPEN_JOBS", "-5", "at least 1"), ("WORKING_SIZE", "8192", "from 32 to 4096"),
])
def test_a_value_out_of_range_fails_naming_its_variable(name, value, words):
    with pytest.raises(ValueError, match=f"CLIPDLUT_{name}={value}.*out of range.*{words}"):
        load_settings({f"CLIPDLUT_{name}": value})


def test_the_service_refuses_to_start_with_a_bad_setting(tmp_path):
    from clipdlut import clients

    clients.add(tmp_path / "clients.toml", "alice")
    (tmp_path / "bad.toml").write_text("[clients.alice]\nkey = 's3cret'\n")
    cases = (({"CLIPDLUT_VIEWS": "0"}, "CLIPDLUT_VIEWS=0 is out of range"),
             ({"CLIPDLUT_CLIENTS": str(tmp_path / "none.toml")}, "not a file: make it with"),
             ({"CLIPDLUT_CLIENTS": str(tmp_path / "bad.toml")}, "clients.alice.key: Extra inputs"),
             ({"CLIPDLUT_CLIENTS": str(tmp_path / "clients.toml"), "CLIPDLUT_API_KEY": "k"}, "both set"),
             ({"CLIPDLUT_CLIENTS": str(tmp_path / "clients.toml"), "CLIPDLUT_LEGACY_CLIENT": "bob"},
              "CLIPDLUT_LEGACY_CLIENT=bob names no client"))
    starts = [subprocess.Popen([sys.executable, "-c", "import service"], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", **env})
              for env, _ in cases]  # (at once: each is a second or two of imports)
    for start, (_, says) in zip(starts, cases):
        _, err = start.communicate(timeout=120)
        assert start.returncode != 0 and says in err, err[-2000:]
