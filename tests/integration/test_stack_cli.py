"""`featurestore dev up|status|down` as a user runs it: separate processes sharing a state folder."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from featurestore.dev.servers import LOOPBACK, RECOMMENDED_HASH_VALUE_BYTES, SERVERS, port_is_free
from featurestore.online import RedisOnlineStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "featurestore", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _gone(pid: int) -> bool:
    """True when *pid* no longer runs.

    os.kill(pid, 0) raising is the usual proof; a zombie (state Z) also counts, because the
    servers were orphaned when the `dev up` process exited, and an init that does not reap
    orphans (as in some sandboxes) leaves exited processes as zombies.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


def test_dev_up_status_down(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    up = _cli("dev", "up", "--state-dir", state)
    try:
        assert up.returncode == 0, up.stderr
        assert "export FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS=" in up.stdout
        assert "export FEATURESTORE_POSTGRES_DSN=" in up.stdout

        status = _cli("dev", "status", "--json", "--state-dir", state)
        assert status.returncode == 0, status.stdout + status.stderr
        report = json.loads(status.stdout)
        assert set(report) == {"kafka", "redis", "postgres"}
        assert all(entry["healthy"] for entry in report.values()), report

        env = dict(shlex.split(line)[1].split("=", 1) for line in up.stdout.splitlines() if line.startswith("export "))
        online = RedisOnlineStore.from_url(env["FEATURESTORE_REDIS_URL"], "stack")
        assert online.hash_value_limit() == RECOMMENDED_HASH_VALUE_BYTES  # states stay in the compact encoding
        online.client.close()

        recorded = json.loads((Path(state) / "stack" / "stack.json").read_text())
        pids = {name: rec["pid"] for name, rec in recorded["servers"].items()}
        assert pids == {name: entry["pid"] for name, entry in report.items()}

        again = _cli("dev", "up", "--state-dir", state)  # idempotent: same processes
        assert again.returncode == 0, again.stderr
        assert json.loads((Path(state) / "stack" / "stack.json").read_text())["servers"] == recorded["servers"]
    finally:
        down = _cli("dev", "down", "--state-dir", state)
    assert down.returncode == 0, down.stderr
    assert not (Path(state) / "stack" / "stack.json").exists()
    for name, pid in pids.items():
        assert _gone(pid), f"{name} (pid {pid}) still running after `dev down`"

    after = _cli("dev", "status", "--state-dir", state)
    assert after.returncode != 0
    assert "not started" in after.stdout


def _exports(stdout: str) -> dict[str, str]:
    """The ``export NAME=value`` lines `dev up` prints."""
    return dict(shlex.split(line)[1].split("=", 1) for line in stdout.splitlines() if line.startswith("export "))


def _recorded(state: str) -> dict[str, dict]:
    return json.loads((Path(state) / "stack" / "stack.json").read_text())["servers"]


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not _gone(pid):
        assert time.monotonic() < deadline, f"pid {pid} still running 10 s after SIGKILL"
        time.sleep(0.05)


def test_dev_up_restarts_killed_servers_on_their_ports(tmp_path: Path) -> None:
    """Workers and shells keep the settings `dev up` printed: a restarted server comes back where it was."""
    state = str(tmp_path / "state")
    up = _cli("dev", "up", "--state-dir", state)
    try:
        assert up.returncode == 0, up.stderr
        before = _recorded(state)
        for rec in before.values():
            _kill(rec["pid"])
        again = _cli("dev", "up", "--state-dir", state)
        assert again.returncode == 0, again.stderr
        after = _recorded(state)
        assert {name: rec["port"] for name, rec in after.items()} == {name: rec["port"] for name, rec in before.items()}
        assert all(after[name]["pid"] != before[name]["pid"] for name in before)
        assert _exports(again.stdout) == _exports(up.stdout)
        assert "WARNING: " not in again.stderr
        for name, spec in SERVERS.items():
            spec.check(before[name]["url"])  # a real request: ping, SELECT 1, list topics
    finally:
        down = _cli("dev", "down", "--state-dir", state)
    assert down.returncode == 0, down.stderr


def test_dev_up_names_the_new_port_when_the_old_one_is_taken(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    up = _cli("dev", "up", "--state-dir", state)
    try:
        assert up.returncode == 0, up.stderr
        old = _recorded(state)["redis"]
        _kill(old["pid"])
        assert port_is_free(old["port"], wait_s=10)  # the kernel may release it a moment after the exit
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind((LOOPBACK, old["port"]))
            squatter.listen()
            again = _cli("dev", "up", "--state-dir", state)
        assert again.returncode == 0, again.stderr
        new = _recorded(state)["redis"]
        assert new["port"] != old["port"]
        warning = [line for line in again.stderr.splitlines() if line.startswith("WARNING: redis")]
        assert warning and f"port {new['port']}" in warning[0] and f"port {old['port']}" in warning[0], again.stderr
        assert _exports(again.stdout)["FEATURESTORE_REDIS_URL"] == new["url"]
        SERVERS["redis"].check(new["url"])
    finally:
        down = _cli("dev", "down", "--state-dir", state)
    assert down.returncode == 0, down.stderr


def test_cli_reports_feature_store_errors_without_traceback(tmp_path: Path) -> None:
    env_project = {"FEATURESTORE_PROJECT": "Not-Valid"}
    proc = subprocess.run([sys.executable, "-m", "featurestore", "dev", "status", "--state-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env_project,
                               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                           os.environ.get("PYTHONPATH")]))})
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ")
    assert "project" in proc.stderr
    assert "Traceback" not in proc.stderr
