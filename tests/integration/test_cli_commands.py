"""The commands as a user runs them, each a process against the real servers: at DEBUG no secret
reaches their output, and the worker's probes listen on the address it is given."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from featurestore.dev.servers import free_port
from tests.support import drop_project, refused

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO = '''
from featurestore.definitions import Aggregate, Entity, EventSource, FeatureView

customer = Entity(name="customer", join_key="customer_id", description="A card holder.")
txns = EventSource(name="txns", topic={topic!r}, timestamp_field="event_time", entity_field="customer_id",
                   event_id_field="transaction_id",
                   schema={{"transaction_id": "string", "customer_id": "string", "amount": "float64",
                           "event_time": "timestamp"}})
stats = FeatureView(name="stats", entity=customer, source=txns, ttl="30d",
                    features=[Aggregate("total", "amount", "sum")])
'''
START_MS = int(time.time() * 1000) - 3_600_000  # recent: the view's states live 30 days
EVENTS = [{"transaction_id": f"t{i}", "customer_id": f"C{i % 3}", "amount": float(i + 1),
           "event_time": START_MS + i * 60_000} for i in range(30)]


def _with_password(url: str, password: str) -> tuple[str, list[str]]:
    """*url* with *password* in its user info, and the passwords to look for in the output: none
    when *url* already has a password of its own (a server that checks it; the unit tests of the
    filter cover URL passwords)."""
    parts = urlsplit(url)
    if parts.password is not None:
        return url, []
    userinfo, _, hostport = parts.netloc.rpartition("@")
    netloc = f"{userinfo}:{password}@{hostport}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), [password]


@dataclass
class Running:
    """A command left running (a worker), its output going to files: a pipe nobody reads would
    fill and block it."""

    proc: subprocess.Popen
    out: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> subprocess.CompletedProcess:
        """SIGTERM (a worker stops gracefully), then its exit code and output."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode,
                                           self.out.with_suffix(".stdout").read_bytes(),
                                           self.out.with_suffix(".stderr").read_bytes())


@dataclass
class Cli:
    """Runs ``featurestore`` commands on a repository of one view over a unique topic, a unique project."""

    env: dict[str, str]
    repo: Path
    events: Path
    secrets: list[str]

    def args(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "featurestore", *args]

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.args(*args), capture_output=True, timeout=timeout, env=self.env, cwd=REPO_ROOT)

    def start(self, *args: str, env: dict[str, str] | None = None) -> Running:
        out = self.events.with_name(f"out-{time.monotonic_ns()}")
        with open(out.with_suffix(".stdout"), "wb") as stdout, open(out.with_suffix(".stderr"), "wb") as stderr:
            proc = subprocess.Popen(self.args(*args), env={**self.env, **(env or {})}, cwd=REPO_ROOT,
                                    stdout=stdout, stderr=stderr)
        return Running(proc, out)


@pytest.fixture
def cli(servers, topic_factory, unique_name, tmp_path) -> Iterator[Cli]:
    """Secrets set to unique markers: the SASL password (PLAINTEXT: kafka-python ignores the SASL
    options, and still logs them), and the passwords of the Redis URL and the DSN (servers without
    authentication accept any)."""
    project, marker = unique_name("p"), unique_name("Secret")
    repo, events = tmp_path / "repo.py", tmp_path / "events.jsonl"
    repo.write_text(REPO.format(topic=topic_factory(partitions=2)))
    events.write_text("".join(json.dumps(e) + "\n" for e in EVENTS))
    redis_url, redis_secrets = _with_password(servers.redis_url, marker + "R")
    dsn, pg_secrets = _with_password(servers.postgres_dsn, marker + "P")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURESTORE_")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
               FEATURESTORE_PROJECT=project, FEATURESTORE_STATE_DIR=str(tmp_path / "state"),
               FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS=servers.kafka_bootstrap, FEATURESTORE_REDIS_URL=redis_url,
               FEATURESTORE_POSTGRES_DSN=dsn, FEATURESTORE_KAFKA_SECURITY_PROTOCOL="PLAINTEXT",
               FEATURESTORE_KAFKA_SASL_PASSWORD=marker + "K")
    yield Cli(env, repo, events, [marker + "K", *redis_secrets, *pg_secrets])
    drop_project(servers, project)




def test_no_secret_in_the_output_of_any_command_at_debug(cli: Cli) -> None:
    repo = str(cli.repo)
    debug = ("--log-level", "DEBUG")
    get = ("get", "--repo", repo, "--entity", "customer_id=C1", "--features", "stats:total")
    expected = sum(e["amount"] for e in EVENTS[1::3])
    runs = {"apply": cli(*debug, "apply", "--repo", repo),
            "produce": cli(*debug, "produce", "--repo", repo, "--source", "txns", "--file", str(cli.events),
                           "--partitions", "2")}
    worker = cli.start(*debug, "worker", "--repo", repo, "--metrics-port", "0")
    try:
        deadline = time.monotonic() + 90
        while (got := cli(*get)).returncode != 0 or json.loads(got.stdout)["total"]["value"] != expected:
            assert worker.alive(), worker.stop().stderr.decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, f"the worker applied no events in 90 s: {got.stdout!r}"
            time.sleep(0.5)
    finally:
        runs["worker"] = worker.stop()
    runs.update({"get": cli(*debug, *get), "list": cli(*debug, "list"), "describe": cli(*debug, "describe", "stats"),
                 "produce --log-json": cli(*debug, "--log-json", "produce", "--repo", repo, "--source", "txns",
                                           "--file", str(cli.events))})
    for name, run in runs.items():
        assert run.returncode == 0, (name, run.stderr.decode(errors="replace")[-3000:])
        for secret in cli.secrets:
            assert secret.encode() not in run.stdout + run.stderr, f"{name} printed {secret!r}"
    produced = runs["produce"].stderr.decode()
    assert "DEBUG   kafka." in produced  # the clients' own debug lines went through, redacted
    assert "'sasl_plain_password': '***'" in produced
    assert '"logger": "kafka.' in runs["produce --log-json"].stderr.decode()


def test_client_libraries_log_only_warnings_at_info(cli: Cli) -> None:
    run = cli("--log-level", "INFO", "produce", "--repo", str(cli.repo), "--source", "txns", "--file",
              str(cli.events), "--partitions", "2")
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-3000:]
    lines = run.stderr.decode().splitlines()
    assert not [line for line in lines if " INFO    kafka." in line or " DEBUG   kafka." in line]


def _answers(host: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False




@pytest.mark.parametrize(("option", "env", "host", "not_on"), [
    ([], {}, "127.0.0.1", "127.0.0.2"),
    (["--metrics-host", "0.0.0.0"], {}, "127.0.0.2", None),
    ([], {"FEATURESTORE_METRICS_HOST": "127.0.0.2"}, "127.0.0.2", "127.0.0.1"),
], ids=["default-loopback", "option", "env"])
def test_worker_probes_listen_on_the_metrics_host(cli: Cli, option, env, host, not_on) -> None:
    """127.0.0.2 is another loopback address: a server bound to 127.0.0.1 does not answer on it."""
    assert cli("apply", "--repo", str(cli.repo)).returncode == 0
    port = free_port()
    worker = cli.start("worker", "--repo", str(cli.repo), "--metrics-port", str(port), *option, env=env)
    try:
        deadline = time.monotonic() + 60
        while not _answers(host, port):
            assert worker.alive(), worker.stop().stderr.decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, f"no /healthz on {host}:{port}"
            time.sleep(0.2)
        if not_on:
            assert refused(not_on, port)
    finally:
        worker.stop()
