"""Fixtures of the feature server tests: the example repository applied under a project of this module,
and ``featurestore serve`` started in a subprocess on a free port, talked to over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from featurestore.dev.servers import free_port
from featurestore.settings import Settings
from tests.support import apply_repo, drop_project

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "repo.py"
START_TIMEOUT_S = 90


@dataclass
class Project:
    """The example repository applied under ``name``: ``settings`` and ``env`` name the test servers."""

    name: str
    settings: Settings
    env: dict[str, str]


@dataclass
class Served:
    """One running ``featurestore serve``: its base ``url``, the process and its log file."""

    url: str
    port: int
    process: subprocess.Popen
    log: Path
    client: httpx.Client = field(repr=False)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def wait_for(condition: Callable[[], bool], seconds: float = 30) -> None:
    """Until ``condition()`` holds, at most ``seconds`` (the assertion after it says what did not happen)."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.fixture(scope="module")
def project(servers) -> Iterator[Project]:
    """The example repository applied under a project of its own (dropped afterwards)."""
    name = f"srv_{uuid.uuid4().hex[:12]}"
    apply_repo(servers, name, EXAMPLE)
    settings = Settings(project=name, redis_url=servers.redis_url, postgres_dsn=servers.postgres_dsn,
                        kafka_bootstrap_servers=servers.kafka_bootstrap)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURESTORE_SERVER_")}
    env.update(FEATURESTORE_PROJECT=name, FEATURESTORE_REDIS_URL=servers.redis_url,
               FEATURESTORE_POSTGRES_DSN=servers.postgres_dsn,
               FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS=servers.kafka_bootstrap)
    yield Project(name, settings, env)
    drop_project(servers, name)


def start_server(env: dict[str, str], log: Path, *args: str, scheme: str = "http", verify: object = True,
                 headers: dict[str, str] | None = None) -> Served:
    """``featurestore serve --repo examples/repo.py --port FREE *args`` with ``env``, once ``/healthz`` answers."""
    port = free_port()
    out = log.open("wb")
    process = subprocess.Popen([sys.executable, "-m", "featurestore", "serve", "--repo", str(EXAMPLE), "--port",
                                str(port), *args], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    url = f"{scheme}://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, verify=verify, headers=headers or {}, timeout=30)
    served = Served(url, port, process, log, client)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"featurestore serve exited with {process.returncode}:\n{served.log_text()[-4000:]}")
        try:
            if client.get("/healthz").status_code == 200:
                return served
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    served.stop()
    raise AssertionError(f"featurestore serve did not answer within {START_TIMEOUT_S} s:\n{served.log_text()[-4000:]}")


@pytest.fixture(scope="module")
def serve(tmp_path_factory) -> Iterator[Callable[..., Served]]:
    """``serve(env, *args, **client_options)`` starts a server, stopped when the module's tests are done."""
    started: list[Served] = []
    folder = tmp_path_factory.mktemp("serve")

    def make(env: dict[str, str], *args: str, **options) -> Served:
        served = start_server(env, folder / f"serve-{len(started)}.log", *args, **options)
        started.append(served)
        return served

    yield make
    for served in started:
        served.stop()


@pytest.fixture(scope="module")
def server(project, serve) -> Served:
    """A read-write server without a token, on the module's project."""
    return serve(project.env)
