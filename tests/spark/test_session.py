"""The Spark engine's checks before any JVM starts: Java found and new enough, ``--spark-conf`` items,
the PostgreSQL JDBC driver's jar and address, the event log's parallel ranges."""

from __future__ import annotations

import os

import pytest

from featurestore.exceptions import ConfigurationError
from featurestore.spark.jdbc import DEFAULT_JAR, JAR_SETTING, jdbc_jar, jdbc_target
from featurestore.spark.readers import log_ranges
from featurestore.spark.session import _java_major, check_java, jdbc_jars, parse_conf


def test_java_missing_is_named(monkeypatch, tmp_path):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    with pytest.raises(ConfigurationError, match="Java 17 or newer.*openjdk-17"):
        check_java()
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    with pytest.raises(ConfigurationError, match="no `java` was found"):
        check_java()


def test_old_java_is_refused(monkeypatch, tmp_path):
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text('#!/bin/sh\necho \'openjdk version "11.0.2" 2019-01-15\' >&2\n')
    java.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    with pytest.raises(ConfigurationError, match="is Java 11"):
        check_java()


def test_this_machine_has_java_17_or_newer():
    assert check_java()  # ./dev test installs or names it


@pytest.mark.parametrize("text, major", [('openjdk version "17.0.15" 2025-04-15', 17),
                                         ('java version "1.8.0_392"', 8), ('openjdk version "21" 2023', 21),
                                         ("garbage", None)])
def test_java_version_text(text, major):
    assert _java_major(text) == major


def test_spark_conf_items():
    assert parse_conf(["spark.executor.memory=8g", "a.b=x=y"]) == {"spark.executor.memory": "8g", "a.b": "x=y"}
    with pytest.raises(ConfigurationError, match="KEY=VALUE"):
        parse_conf(["spark.executor.memory"])


def test_jdbc_address_of_a_dsn_keeps_the_password_out_of_the_url(monkeypatch):
    for name in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"):
        monkeypatch.delenv(name, raising=False)
    url, props = jdbc_target("postgresql://feat:p%40ss@db.example:6432/store?sslmode=verify-full&application_name=bf")
    assert url == "jdbc:postgresql://db.example:6432/store"
    assert props == {"user": "feat", "password": "p@ss", "driver": "org.postgresql.Driver", "fetchsize": "10000",
                     "sslmode": "verify-full", "ApplicationName": "bf"}
    url, props = jdbc_target("host=pg port=5433 dbname=d user=u password='a b'")
    assert (url, props["user"], props["password"]) == ("jdbc:postgresql://pg:5433/d", "u", "a b")
    assert jdbc_target("postgresql://u@[::1]/d")[0] == "jdbc:postgresql://[::1]:5432/d"
    assert jdbc_target("postgresql://u@h1:5,h2/d")[0] == "jdbc:postgresql://h1:5,h2:5432/d"
    assert "password" not in jdbc_target("postgresql://postgres@127.0.0.1:5432/postgres")[1]
    with pytest.raises(ConfigurationError, match="TCP address"):
        jdbc_target("host=/var/run/postgresql dbname=d user=u")
    with pytest.raises(ConfigurationError, match="postgresql:// URL or key=value"):
        jdbc_target("mysql://u@h/d")
    # what the DSN leaves out comes from libpq's variables, as asyncpg takes it
    monkeypatch.setenv("PGHOST", "pg.internal")
    monkeypatch.setenv("PGPORT", "6543")
    monkeypatch.setenv("PGDATABASE", "feats")
    monkeypatch.setenv("PGPASSWORD", "s3cret")
    url, props = jdbc_target("user=u")
    assert (url, props["password"]) == ("jdbc:postgresql://pg.internal:6543/feats", "s3cret")


def test_event_log_ranges_split_each_partition_evenly_up_to_the_cut():
    bounds = {-1: (1, 10), 0: (0, 99), 1: (0, 49)}
    assert log_ranges(bounds, None, 4) == [(-1, 1, 10), (0, 0, 49), (0, 50, 99), (1, 0, 49)]
    # Kafka partitions absent from the cut-over are not read; partition < 0 rows (files, pushes) all are
    assert log_ranges(bounds, {0: 60}, 4) == [(-1, 1, 10), (0, 0, 19), (0, 20, 39), (0, 40, 60)]
    assert log_ranges(bounds, {0: -1, 1: 49}, 2) == [(-1, 1, 10), (1, 0, 24), (1, 25, 49)]
    assert log_ranges({}, None, 4) == [] and log_ranges({0: (5, 5)}, None, 8) == [(0, 5, 5)]
    ranges = log_ranges({0: (0, 999_999), 1: (0, 999_999)}, None, 7)
    sizes = [hi - lo + 1 for _, lo, hi in ranges]
    assert sum(sizes) == 2_000_000 and max(sizes) - min(sizes) <= 1  # even ranges, covering every offset


def test_the_jdbc_jar_comes_from_the_setting_or_spark_jars(monkeypatch, tmp_path):
    monkeypatch.delenv(JAR_SETTING, raising=False)
    assert jdbc_jar() == (DEFAULT_JAR, False)
    assert jdbc_jars({}) == (DEFAULT_JAR if os.path.isfile(DEFAULT_JAR) else None)
    assert jdbc_jars({"spark.jars": "/opt/jars/postgresql-42.7.4.jar"}) == "/opt/jars/postgresql-42.7.4.jar"
    jar = tmp_path / "pg.jar"
    jar.write_bytes(b"PK")
    monkeypatch.setenv(JAR_SETTING, str(jar))
    assert jdbc_jars({}) == str(jar)
    # jars asked for otherwise are kept, the driver added: --spark-conf, then spark-defaults.conf
    assert jdbc_jars({"spark.jars": "/opt/jars/hadoop-aws.jar"}) == f"/opt/jars/hadoop-aws.jar,{jar}"
    (tmp_path / "conf").mkdir()
    defaults = "spark.master  local[2]\nspark.jars  /opt/a.jar,/opt/b.jar\n"
    (tmp_path / "conf" / "spark-defaults.conf").write_text(defaults)
    monkeypatch.setenv("SPARK_HOME", str(tmp_path))
    assert jdbc_jars({"spark.jars": "/opt/c.jar"}) == f"/opt/c.jar,/opt/a.jar,/opt/b.jar,{jar}"
    monkeypatch.delenv("SPARK_HOME")
    monkeypatch.setenv(JAR_SETTING, str(tmp_path / "missing.jar"))
    with pytest.raises(ConfigurationError) as err:
        jdbc_jars({})
    text = str(err.value)
    assert f"{JAR_SETTING}={tmp_path / 'missing.jar'} does not exist" in text
    assert "apt-get install libpostgresql-jdbc-java" in text and "jdbc.postgresql.org" in text
