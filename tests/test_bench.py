"""The benchmarks run end to end (``./dev bench --quick``, tiny sizes, on the test servers).

The goals are checked by the benchmarks, not here: this only catches a benchmark broken by a change
(a layout it reads, an argument it passes), which would otherwise surface at the next measurement.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration

#: what each benchmark's report must hold: its measurement and the same-run baseline it is compared with
EXPECTED = {
    "transforms": ("batch", "streaming", "state_size_hot_entity"),
    "backfill": ("end_to_end", "compute_only", "baselines"),
    "historical": ("ours", "goal", "meets_goal"),
    "online": ("read_1_entity", "raw_hmget_floor", "read_100_entities", "raw_hmget_100_entities_floor",
               "read_1_entity_while_a_worker_commits"),
    "worker": ("end_to_end_events_per_s", "floors_events_per_s", "meets_goal"),
    "latency": ("runs", "goal", "meets_goal"),
    "server": ("one_entity", "hundred_entities", "throughput_per_s", "p99_under_10ms", "meets_goal"),
    "stats": ("stats_run", "training_set_read_alone", "meets_goal"),
}


def test_every_benchmark_runs_and_reports(servers) -> None:
    env = {**os.environ, "FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS": servers.kafka_bootstrap,
           "FEATURESTORE_REDIS_URL": servers.redis_url, "FEATURESTORE_POSTGRES_DSN": servers.postgres_dsn}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout)
    assert report["failed"] == [] and set(report["benchmarks"]) == set(EXPECTED)
    for name, keys in EXPECTED.items():
        got = report["benchmarks"][name]["report"]
        assert set(keys) <= set(got), (name, sorted(got))
    [run] = report["benchmarks"]["latency"]["report"]["runs"]
    assert run["p99_ms"] is not None and run["unseen_after_60s"] == 0  # every sample became visible
    assert run["kafka_consumer_floor"]["events_seen"] == run["kafka_consumer_floor"]["of"]  # the floor saw every event
    assert report["benchmarks"]["online"]["report"]["read_100_entities"]["n"] == 1000


#: ``--redis-cluster`` runs (a local 3-master cluster started by the benchmark, beside the single Redis): tiny
#: sizes, and what the report must hold for each store and side by side
CLUSTER_RUNS = {
    "online": (["--reads", "100", "--entities", "50"],
               ("single_node", "cluster", "ratio_cluster_vs_single", "goal_cluster_100_entities",
                "meets_goal_cluster_100")),
    "worker": (["--events", "2000", "--customers", "100"],
               ("single_node", "cluster", "ratio_cluster_vs_single", "floors_events_per_s")),
}


@pytest.mark.parametrize("name", sorted(CLUSTER_RUNS))
def test_benchmark_with_redis_cluster_reports_both_stores(servers, name: str) -> None:
    args, keys = CLUSTER_RUNS[name]
    env = {**os.environ, "FEATURESTORE_KAFKA_BOOTSTRAP_SERVERS": servers.kafka_bootstrap,
           "FEATURESTORE_REDIS_URL": servers.redis_url, "FEATURESTORE_POSTGRES_DSN": servers.postgres_dsn}
    done = subprocess.run([sys.executable, "-m", f"bench.bench_{name}", "--redis-cluster", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout)
    assert set(keys) <= set(report), sorted(report)
    assert report["redis_cluster"] is True and report["cluster"]["layout"]["masters"] == 3
    figures = ("read_1_entity", "raw_hmget_floor", "read_100_entities", "raw_hmget_100_entities_floor") \
        if name == "online" else ("end_to_end_events_per_s", "ceiling_events_per_s", "redis_hset_pipelined_floor")
    assert set(figures) <= set(report["ratio_cluster_vs_single"]), sorted(report["ratio_cluster_vs_single"])
    if name == "online":
        for side in ("single_node", "cluster"):
            assert report[side]["read_100_entities"]["n"] == 1000
            assert report[side]["read_1_entity"]["n"] == 100
        assert isinstance(report["meets_goal_cluster_100"], bool)
        assert report["ratio_cluster_vs_single"]["read_100_entities"]["p99"] > 0
        assert report["cluster"]["layout"]["partitions_per_view"] == 12
    else:
        for side in ("single_node", "cluster"):  # every event went through each store's worker, and its ceiling
            assert report[side]["worker"]["records_committed"] > 0
            assert report[side]["ceiling_without_transforms"]["records_committed"] > 0
            assert isinstance(report[side]["meets_goal"], bool)


def test_unknown_benchmark_is_named() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "nosuch"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown benchmark(s) nosuch" in done.stderr
