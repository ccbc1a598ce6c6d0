"""The clients file: keys made and kept only as hashes, read and re-read, names and quotas checked."""

import subprocess
import sys
import tomllib

import pytest

from clipdlut import clients
from clipdlut.clients import Client, Registry

pytestmark = pytest.mark.unit


def test_add_prints_a_new_key_once_and_the_file_keeps_only_its_hash(tmp_path):
    path = tmp_path / "conf" / "clients.toml"
    r = subprocess.run([sys.executable, "-m", "clipdlut", "clients", "add", "alice", "--max-open-jobs", "8",
                        "--jobs-per-hour", "200", "--weight", "2"], capture_output=True, text=True,
                       env={"CLIPDLUT_CLIENTS": str(path), "PATH": ""}, timeout=60)
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert len(key) >= 40 and "\n" not in key and "shown this once" in r.stderr and key not in r.stderr
    text = path.read_text()
    assert key not in text
    assert tomllib.loads(text) == {"clients": {"alice": {"key_sha256": clients.key_hash(key), "max_open_jobs": 8,
                                                         "jobs_per_hour": 200, "weight": 2.0}}}
    assert text.startswith("[clients.alice]\nkey_sha256 = ")
    assert Registry(path).identify(key.encode()) == Client("alice", 8, 200, 2.0)


def test_adding_keeps_what_the_file_had_and_refuses_a_taken_or_bad_name(tmp_path):
    path = tmp_path / "clients.toml"
    path.write_text("# our studio's clients\n[clients.alice]\nkey_sha256 = \"" + "a" * 64 + "\"  # rotated in May\n")
    key = clients.add(path, "bob")
    text = path.read_text()
    assert text.startswith("# our studio's clients\n[clients.alice]") and "# rotated in May" in text
    assert set(clients.read(path)) == {"alice", "bob"} and Registry(path).identify(key.encode()).name == "bob"
    with pytest.raises(ValueError, match="already has a client 'bob'"):
        clients.add(path, "bob")
    for name in ("", "b b", "-x", "x" * 65, "a:b"):
        with pytest.raises(ValueError, match="cannot name a client"):
            clients.add(path, name)


@pytest.mark.parametrize(("text", "says"), [
    ("[clients.alice\n", "not valid TOML"),
    ('[clients.alice]\nkey_sha256 = "abc"\n', "clients.alice.key_sha256"),
    ('[clients.alice]\nkey = "s3cret"\n', "clients.alice.key"),
    (f'[clients.alice]\nkey_sha256 = "{"a" * 64}"\nmax_open_jobs = 0\n', "clients.alice.max_open_jobs"),
    (f'[clients.alice]\nkey_sha256 = "{"a" * 64}"\nweight = -1\n', "clients.alice.weight"),
    ('[users.alice]\nkey_sha256 = "x"\n', "users"),
])
def test_a_file_that_does_not_fit_is_refused_at_start_naming_what_to_fix(tmp_path, text, says):
    path = tmp_path / "clients.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=says):
        Registry(path)


def test_two_clients_with_one_key_are_refused(tmp_path):
    path = tmp_path / "clients.toml"
    clients.add(path, "alice")
    path.write_text(path.read_text() + path.read_text().replace("[clients.alice]", "[clients.bob]"))
    with pytest.raises(ValueError, match="gives alice and bob the same key"):
        Registry(path)


def test_a_missing_file_or_both_ways_of_keying_are_refused_at_start(tmp_path):
    with pytest.raises(ValueError, match="not a file: make it with"):
        Registry(tmp_path / "none.toml")
    clients.add(tmp_path / "c.toml", "alice")
    with pytest.raises(ValueError, match="both set"):
        Registry(tmp_path / "c.toml", api_key="s3cret")


def test_the_single_key_is_one_client_and_no_key_at_all_is_an_open_service():
    single = Registry(api_key="s3cret")
    assert not single.open and single.identify(b"s3cret") == clients.ANYONE  # (the open service's client: its jobs)
    assert single.identify(b"s3cre") is None and Registry().open


def test_the_readmes_clients_file_and_commands_work_as_written(tmp_path):
    """The README's example file is one the service reads; its `clients add` lines run as written."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = text.split("## Clients\n", 1)[1].split("\n## ", 1)[0]
    (example,) = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    (tmp_path / "example.toml").write_text(example)
    assert Registry(tmp_path / "example.toml").named("alice") == Client("alice", 8, 200, 1.0)
    commands = [line for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)
                for line in block.splitlines() if line.startswith("python -m clipdlut clients add")]
    assert len(commands) == 3
    for line in commands:
        r = subprocess.run(["bash", "-c", line.replace("python", sys.executable, 1)], capture_output=True, text=True,
                           env={"CLIPDLUT_CLIENTS": str(tmp_path / "clients.toml"), "PATH": "/usr/bin:/bin"},
                           timeout=60)
        assert r.returncode == 0, r.stderr
    assert set(clients.read(tmp_path / "clients.toml")) == {"alice", "bob", "scraper"}
    assert Registry(tmp_path / "clients.toml").named("scraper").operator
