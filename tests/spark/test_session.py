"""The Spark engine's checks before any JVM starts: Java found and new enough, ``--spark-conf`` items."""

from __future__ import annotations

import pytest

from featurestore.exceptions import ConfigurationError
from featurestore.spark.session import _java_major, check_java, parse_conf


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
