"""The Python client's usage counting (``FeatureStore.get_online_features`` -> ``ReadCounter``): counts kept
in memory, written to Redis when the period is over and at ``close``, kept when Redis does not answer, and
shown by the console's usage page.  Sorts after ``test_server_mount`` (whose counts it would add to)."""

from __future__ import annotations

import html
import time

import httpx
import pytest
import redis

from featurestore.client import FeatureStore
from featurestore.console.usage import FEATURE_LISTS, ReadCounter, read_usage, usage_key
from featurestore.dev.servers import free_port
from featurestore.online import RedisOnlineStore
from featurestore.repo import load_repo

pytestmark = pytest.mark.integration


def _fields(online: RedisOnlineStore, project: str) -> dict[str, int]:
    raw = online.client.hgetall(usage_key(project, int(time.time() * 1000)))
    out: dict[str, int] = {}
    for k, v in raw.items():
        _, _, name = k.decode().partition("|")
        out[name] = out.get(name, 0) + int(v)
    return out


def test_client_reads_are_counted_in_batches_and_shown(stack):
    online = RedisOnlineStore.from_url(stack.servers.redis_url, stack.project)
    store = FeatureStore(load_repo(stack.repo_path), online, {}, stack.project,
                         postgres_dsn=stack.servers.postgres_dsn)
    store.versions = store._run(store.aresolve_versions())
    before = _fields(online, stack.project)
    rows = [{"customer_id": c} for c in ("C001", "C002")]
    for _ in range(3):
        store.get_online_features(rows, feature_service="fraud", request_data={"current_amount": [1.0, 2.0]})
    store.get_online_features(rows[:1], features=["spend:max_7d", "activity:payments_1h"])
    assert _fields(online, stack.project) == before  # nothing written within the period
    store.close()  # writes the counts
    after = _fields(online, stack.project)
    grown = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert grown == {"fraud": 6, FEATURE_LISTS: 1, "-|spend:max_7d": 1, "-|activity:payments_1h": 1}
    services = {"fraud": ["spend:spend_24h", "spend:max_7d"]}
    usage = read_usage(online.client, stack.project, services)
    totals, features = dict(usage["services"]), dict(usage["features"])
    assert totals["fraud"] >= 6 and totals[FEATURE_LISTS] >= 1
    assert features["spend:max_7d"] == totals["fraud"] + after["-|spend:max_7d"]  # the service's and the list's
    page = httpx.get(stack.url + "/usage", timeout=30).text
    assert f"{FEATURE_LISTS}: " in html.unescape(page) and "fraud: " in page
    online.client.close()


def test_the_counter_keeps_counts_redis_did_not_take_and_writes_when_its_period_is_over(stack):
    class Plan:  # what the counter reads of a request plan: its feature references
        refs: list = []

    online = RedisOnlineStore.from_url(stack.servers.redis_url, stack.project)
    down = redis.Redis(port=free_port(), socket_connect_timeout=0.5)  # nothing listens there
    counter = ReadCounter(down, stack.project, period_s=3600)
    counter.add(Plan, "svc_down", 4)
    assert counter.flush() == 0  # Redis did not answer: kept
    counter.add(Plan, "svc_down", 1)
    counter.client = online.client
    assert counter.flush() == 5 and _fields(online, stack.project)["svc_down"] == 5
    assert counter.flush() == 0  # nothing left
    every_read = ReadCounter(online.client, stack.project, period_s=0.0)
    every_read.add(Plan, "svc_now", 2)  # the period is over at once: this read writes
    assert _fields(online, stack.project)["svc_now"] == 2
    online.client.close()
