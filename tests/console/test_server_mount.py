"""The console under ``/ui`` of the feature server (``create_app``) on a real uvicorn server: behind the
server's token, and counting the reads the server answers per service in Redis (the usage page); and the
console's commands, ``featurestore ui`` and ``featurestore stats``, as processes of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from featurestore.client import FeatureStore
from featurestore.console import usage
from featurestore.online import RedisOnlineStore
from featurestore.repo import load_repo
from featurestore.server import ServerConfig, create_app
from tests.console.conftest import serve_app

pytestmark = pytest.mark.integration

TOKEN = "console-test-token"


@pytest.fixture(scope="module")
def server(stack):
    saved, usage.FLUSH_PERIOD_S = usage.FLUSH_PERIOD_S, 0.0  # every answered request adds its rows at once
    online = RedisOnlineStore.from_url(stack.servers.redis_url, stack.project)
    store = FeatureStore(load_repo(stack.repo_path), online, {}, stack.project,
                         postgres_dsn=stack.servers.postgres_dsn)
    try:
        uv, thread, url = serve_app(create_app(store, ServerConfig(token=TOKEN, gc_threshold=None)), "/healthz")
    finally:
        usage.FLUSH_PERIOD_S = saved
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client
    uv.should_exit = True
    thread.join(15)


def test_the_console_is_mounted_behind_the_token(server):
    assert httpx.get(str(server.base_url).rstrip("/") + "/ui/", timeout=10).status_code == 401
    page = server.get("/ui/views/spend").text
    assert 'href="/ui/sources/payments"' in page  # links stay under the mount path
    nodes = {n["id"]: n for n in server.get("/ui/lineage.json").json()["nodes"]}
    assert nodes["view:spend"]["url"] == "/ui/views/spend"


def test_reads_per_service_and_feature_are_counted(server):
    body = {"feature_service": "fraud", "entities": {"customer_id": ["C001", "C002", "C003"],
                                                      "current_amount": [10.0, 20.0, 30.0]}}
    for _ in range(4):
        answer = server.post("/get-online-features", json=body)
        assert answer.status_code == 200, answer.text
    deadline = time.monotonic() + 20
    page = ""
    while time.monotonic() < deadline:  # the last flush runs as a task after its answer
        page = server.get("/ui/usage").text
        if "fraud: 12 rows" in page:
            break
        time.sleep(0.2)
    assert "fraud: 12 rows" in page
    assert "spend:spend_24h: 12 reads" in page and "amount_ratio:amount_ratio: 12 reads" in page


def _env(stack) -> dict[str, str]:
    return {**os.environ, "FEATURESTORE_PROJECT": stack.project, "FEATURESTORE_REDIS_URL": stack.servers.redis_url,
            "FEATURESTORE_POSTGRES_DSN": stack.servers.postgres_dsn,
            "FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS": stack.servers.kafka_bootstrap}


def _featurestore(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "featurestore", *args, "--repo", str(stack.repo_path)],
                          env=_env(stack), capture_output=True, text=True, timeout=120)


def test_featurestore_stats_command(stack):
    from tests.console.conftest import N_EVENTS, T0

    done = _featurestore(stack, "stats", "--view", "activity", "--at", str(T0 + N_EVENTS * 60_000), "--json")
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert (run["view"], run["entities"], run["sampled"], run["reference_run"]) == ("activity", 25, False, None)
    counts = run["stats"]["payments_1h"]
    assert (counts["kind"], counts["count"], counts["nulls"]) == ("numeric", 25, 0)
    assert sum(counts["histogram"]["counts"]) == 25
    sample = _featurestore(stack, "stats", "--view", "activity", "--entities", "10")
    assert sample.returncode == 0, sample.stderr
    assert "10 entities (sampled)" in sample.stdout and f"drift against run {run['run_id']}" in sample.stdout
    for args, message in ((("--view", "nope"), "unknown feature view 'nope'"),
                          (("--view", "activity", "--at", "yesterday"), "--at 'yesterday': not a time"),
                          (("--view", "activity", "--reference", "999999"), "--reference 999999: no statistics run")):
        bad = _featurestore(stack, "stats", *args)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr


def test_featurestore_ui_command(stack, tmp_path):
    """``featurestore ui`` in a process of its own, on the configured servers, with a token: the login form,
    then the pages with the cookie it sets."""
    from featurestore.dev.servers import free_port

    port = free_port()
    env = {**_env(stack), "FEATURESTORE_SERVER_TOKEN": TOKEN}
    log = (tmp_path / "ui.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "featurestore", "ui", "--repo", str(stack.repo_path),
                                "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(url + "/console.css", timeout=2)
                break
            except httpx.HTTPError:
                assert process.poll() is None, (tmp_path / "ui.log").read_text()
                time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=30, follow_redirects=True) as browser:
            assert browser.get("/").url.path == "/login"  # redirected to the token form
            assert browser.post("/login", data={"token": "wrong"}).status_code == 401
            home = browser.post("/login", data={"token": TOKEN})
            assert home.status_code == 200 and f"Project {stack.project}" in home.text
            assert 'id="health-kafka">ok<' in home.text
            assert "v2 served" in browser.get("/views/spend").text  # versions resolved at startup
    finally:
        process.terminate()
        process.wait(20)
        log.close()
    assert "featurestore ui: http://127.0.0.1:" in (tmp_path / "ui.log").read_text()
