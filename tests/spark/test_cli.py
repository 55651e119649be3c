"""``featurestore backfill --engine spark`` and ``featurestore training-set --engine spark|local`` run
in-process on the session's local Spark, over a repository file whose BatchTransform and on-demand
view are defined in that file (shipped to the tasks by value)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from featurestore.cli import main
from featurestore.offline import PostgresOfflineStore
from featurestore.repo import load_repo
from featurestore.schema import validate_frame
from featurestore.spark.jdbc import JAR_SETTING
from tests.spark.data import HOT, tricky_events
from tests.spark.test_backfill import assert_same_history, parquet_history
from tests.spark.test_training import assert_frames_equal
from tests.support import apply_repo, drop_project
from tests.workers.test_backfill import write_parquet

pytestmark = pytest.mark.integration

REPO = '''
from featurestore import Aggregate, BatchTransform, Entity, EventSource, FeatureView, Latest, OnDemandFeatureView
from featurestore.definitions import FileHistory
import pandas as pd

def cents(df):
    return (df["amount"].astype("float64") * 100).round()

def scaled(df):
    return pd.DataFrame({{"spend_scaled": df["spend_1h"].astype(float) * df["factor"].astype(float)}}, index=df.index)

customer = Entity(name="customer", join_key="customer_id")
txns = EventSource(name="txns", topic="{topic}", timestamp_field="event_time", entity_field="customer_id",
                   schema={{"transaction_id": "string", "customer_id": "string", "amount": "float64",
                           "event_time": "timestamp"}}, event_id_field="transaction_id", allowed_lateness="5m",
                   optional_fields=("amount",), history=FileHistory(path="{history}"))
stats = FeatureView(name="stats", entity=customer, source=txns, ttl="1d", features=[
    Aggregate("spend_1h", "amount", "sum", "1h"), Aggregate("n_24h", "amount", "count", "24h"),
    Latest("last_amount", "amount"), BatchTransform("cents", ["amount"], cents, "float64")])
scaled_view = OnDemandFeatureView(name="scaled", sources=[stats[["spend_1h"]]], request_schema={{"factor": "float64"}},
                                  schema={{"spend_scaled": "float64"}}, fn=scaled)
'''


@pytest.fixture
def cli_repo(servers, unique_name, tmp_path, monkeypatch):
    project = unique_name("p")
    history = write_parquet(tmp_path, tricky_events(600, seed=13))
    path = tmp_path / "repo.py"
    path.write_text(textwrap.dedent(REPO.format(topic=unique_name("t"), history=history)))
    apply_repo(servers, project, path)
    for name, value in (("PROJECT", project), ("REDIS_URL", servers.redis_url),
                        ("POSTGRES_DSN", servers.postgres_dsn), ("KAFKA_BOOTSTRAP_SERVERS", servers.kafka_bootstrap)):
        monkeypatch.setenv(f"FEATURESTORE_{name}", value)
    yield path, project
    drop_project(servers, project)


def test_backfill_and_training_set_commands(spark, servers, cli_repo, tmp_path, capsys):
    path, project = cli_repo
    assert main(["backfill", "--repo", str(path), "--view", "stats", "--no-progress"]) == 0
    assert main(["backfill", "--repo", str(path), "--view", "stats", "--engine", "spark", "--buckets", "3",
                 "--out", f"file://{tmp_path}/hist", "--spark-conf", "spark.sql.shuffle.partitions=4"]) == 0
    view = load_repo(path).view("stats")

    async def local_history():
        store = await PostgresOfflineStore.create(servers.postgres_dsn, project)
        try:
            valid, _ = validate_frame(view.source, pd.read_parquet(view.source.history.path))
            valid["__partition"], valid["__offset"] = 0, range(len(valid))
            await store.write_events(view.source, valid)  # the event log the training sets read
            return await store.load_history(view, 1)
        finally:
            await store.close()

    expected = asyncio.run(local_history())
    assert len(expected) > 500
    assert_same_history(parquet_history(tmp_path / "hist"), expected.assign(seq=expected["seq"].astype("int32")))

    labels = pd.DataFrame({"customer_id": [HOT, "C001", "C003", "nobody"] * 25,
                           "event_timestamp": pd.to_datetime(
                               [1_767_225_600_000 + i * 97_000 for i in range(100)], unit="ms", utc=True),
                           "factor": [0.5, 2.0] * 50})
    labels.to_parquet(tmp_path / "labels.parquet")
    args = ["training-set", "--repo", str(path), "--labels", str(tmp_path / "labels.parquet"),
            "--features", "stats:spend_1h", "stats:cents", "stats:last_amount", "scaled:spend_scaled"]
    assert main(args + ["--out", str(tmp_path / "local.parquet")]) == 0
    assert main(args + ["--out", f"file://{tmp_path}/spark_ts", "--engine", "spark"]) == 0
    local = pd.read_parquet(tmp_path / "local.parquet")
    got = pd.read_parquet(tmp_path / "spark_ts")
    assert_frames_equal(got.drop(columns="event_timestamp"), local.drop(columns="event_timestamp"))
    assert got["spend_scaled"].notna().sum() > 20


def test_bad_spark_arguments_are_named(spark, cli_repo, capsys):
    path, _ = cli_repo
    assert main(["backfill", "--repo", str(path), "--view", "stats", "--engine", "spark", "--source", "kafka"]) == 2
    assert "--source files or postgres" in capsys.readouterr().err
    assert main(["backfill", "--repo", str(path), "--view", "stats", "--engine", "spark", "--spark-conf", "oops"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["backfill", "--repo", str(path), "--view", "stats", "--engine", "spark",
                 "--history-path", "file:///nonexistent/h.parquet", "--out", "/tmp/never"]) == 2
    assert "cannot read the Parquet history" in capsys.readouterr().err


def test_spark_options_without_the_spark_engine_are_refused(cli_repo, capsys, tmp_path):
    """A Spark-only option with the local engine would be ignored: it is refused, named."""
    path, _ = cli_repo
    assert main(["backfill", "--repo", str(path), "--view", "stats", "--out", "file:///tmp/x", "--buckets", "4"]) == 2
    err = capsys.readouterr().err
    assert "--out, --buckets are options of the Spark engine" in err and "--engine spark" in err
    assert main(["training-set", "--repo", str(path), "--labels", str(tmp_path / "l.parquet"), "--features",
                 "stats:spend_24h", "--out", str(tmp_path / "o.parquet"), "--spark-master", "local[2]"]) == 2
    assert "--spark-master is an option of the Spark engine" in capsys.readouterr().err


def test_reading_the_event_log_without_the_jdbc_driver_names_it(cli_repo, tmp_path, monkeypatch, capsys):
    """``--source postgres`` reads the event log over JDBC: without the driver's jar the command stops
    and says where the jar is looked for and how to install it — in a fresh JVM whose jars hold no driver
    (the setting names a jar without it), and before any JVM starts when FEATURESTORE_SPARK_JDBC_JAR
    names a missing file."""
    import zipfile

    path, _ = cli_repo
    args = ["backfill", "--repo", str(path), "--view", "stats", "--engine", "spark", "--source", "postgres",
            "--spark-master", "local[1]", "--out", f"file://{tmp_path}/never"]
    empty = tmp_path / "no-driver.jar"
    with zipfile.ZipFile(empty, "w") as jar:
        jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, JAR_SETTING: str(empty)}
    done = subprocess.run([sys.executable, "-m", "featurestore", *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "needs the PostgreSQL JDBC driver" in done.stderr
    assert f"{JAR_SETTING}={empty} holds no PostgreSQL driver or is not in this Spark session's spark.jars" \
        in done.stderr
    assert "apt-get install libpostgresql-jdbc-java" in done.stderr
    assert not (tmp_path / "never").exists()

    monkeypatch.setenv(JAR_SETTING, str(tmp_path / "postgresql.jar"))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{JAR_SETTING}={tmp_path / 'postgresql.jar'} does not exist" in err and "jdbc.postgresql.org" in err
