"""The SparkSession of a Spark backfill or training set: ``spark_session`` checks that pyspark and
Java are there (naming what to install when not) and builds a session whose Python workers run
this interpreter, so the tasks import the same ``transforms`` and ``featurestore`` code, with the
PostgreSQL JDBC driver (``jdbc.jdbc_jar``) in ``spark.jars`` for reads of the event log."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from typing import Any, Mapping

from ..exceptions import ConfigurationError

__all__ = ["DEFAULT_CONF", "check_java", "jdbc_jars", "parse_conf", "spark_session"]

#: Settings of every session made here (``--spark-conf`` overrides them): Arrow for the pandas
#: hand-over, UTC, the UI and console progress off, large Arrow batches.
DEFAULT_CONF: dict[str, str] = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    # rows per Arrow batch handed to a task's Python function: fewer, larger calls of validate_frame
    "spark.sql.execution.arrow.maxRecordsPerBatch": "100000",
}


def check_java() -> str:
    """The ``java`` that Spark will start (``JAVA_HOME/bin/java`` or on the PATH), checked to be
    Java 17 or newer; ``ConfigurationError`` saying what to install otherwise."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        raise ConfigurationError(
            "the Spark engine needs Java 17 or newer and no `java` was found (JAVA_HOME unset and no java on "
            "the PATH): install it (Debian: apt-get install openjdk-17-jre-headless) or set JAVA_HOME")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    text = out.stderr or out.stdout
    major = _java_major(text)
    if major is not None and major < 17:
        raise ConfigurationError(f"the Spark engine needs Java 17 or newer; {java} is Java {major}: install a newer "
                                 f"JDK (Debian: apt-get install openjdk-17-jre-headless) or point JAVA_HOME at one")
    return java


def _java_major(version_text: str) -> int | None:
    """17 from ``openjdk version "17.0.15"``, 8 from ``"1.8.0_392"``; None when unreadable."""
    first = version_text.split('"')
    if len(first) < 2:
        return None
    parts = first[1].split(".")
    try:
        return int(parts[1]) if parts[0] == "1" and len(parts) > 1 else int(parts[0])
    except ValueError:
        return None


def parse_conf(items: list[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` (``--spark-conf``) as a dict; ``ConfigurationError`` naming a malformed item."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(f"--spark-conf {item!r} must look like KEY=VALUE (e.g. spark.executor.memory=4g)")
        out[key.strip()] = value
    return out


def spark_session(master: str | None = None, conf: Mapping[str, Any] | None = None, app_name: str = "featurestore"):
    """A SparkSession (the active one when it exists and no ``master`` is asked for), with
    ``DEFAULT_CONF`` and ``conf``; ``ConfigurationError`` when pyspark or Java is missing."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigurationError("the Spark engine needs pyspark: pip install 'streamfeatures[spark]'") from None
    active = SparkSession.getActiveSession()
    if active is not None and master is None:
        return active
    check_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # local workers: this interpreter, this code
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    elif not os.environ.get("SPARK_HOME") and "MASTER" not in os.environ:
        builder = builder.master("local[*]")
    settings = {**DEFAULT_CONF, **{k: str(v) for k, v in (conf or {}).items()}}
    jars = jdbc_jars(settings)
    if jars:
        settings["spark.jars"] = jars
    for key, value in settings.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def jdbc_jars(settings: Mapping[str, str]) -> str | None:
    """``spark.jars`` of a new session: the jars already asked for (``--spark-conf spark.jars=...``, a
    ``spark-submit --jars`` that launched this driver, ``$SPARK_HOME/conf/spark-defaults.conf``) plus,
    unless one of them is a PostgreSQL driver, the PostgreSQL JDBC driver's jar
    (``FEATURESTORE_SPARK_JDBC_JAR``) when it exists: a session reading only Parquet needs none, and a
    job reading the event log without it stops naming it (``jdbc.driver_missing``).  A jar set
    explicitly by that setting must exist."""
    from .jdbc import driver_missing, jdbc_jar

    given = list(dict.fromkeys(j.strip() for source in (settings.get("spark.jars", ""), _launched_jars(),
                                                        _default_jars())
                               for j in source.split(",") if j.strip()))
    if any("postgresql" in os.path.basename(j).lower() for j in given):
        return ",".join(given)
    path, explicit = jdbc_jar()
    if os.path.isfile(path):
        return ",".join(given + [path])
    if explicit:
        raise driver_missing()
    return ",".join(given) or None


def _launched_jars() -> str:
    """``spark.jars`` of the JVM that launched this driver (``spark-submit``), else ""."""
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        return ""
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # the launching JVM's gateway: it exists already
    return SparkConf().get("spark.jars", "") or ""


def _default_jars() -> str:
    """``spark.jars`` of ``$SPARK_HOME/conf/spark-defaults.conf``, else ""."""
    home = os.environ.get("SPARK_HOME")
    path = os.path.join(home, "conf", "spark-defaults.conf") if home else ""
    if not path or not os.path.isfile(path):
        return ""
    with open(path, encoding="utf-8") as lines:
        for line in lines:  # "key value", "key=value" or "key: value" (a Java properties file)
            found = re.match(r"(\S+?)\s*[=:\s]\s*(.*)", line.strip())
            if found and found.group(1) == "spark.jars":
                return found.group(2).strip()
    return ""


def ship_repo_modules() -> None:
    """Send the functions of loaded repository files (BatchTransforms, on-demand views) to the
    tasks by value: those modules are loaded from a path (``featurestore.repo``) and cannot be
    imported by name in a Spark worker."""
    from pyspark import cloudpickle

    for name, module in list(sys.modules.items()):
        if name.startswith("_featurestore_repo_") and module is not None:
            cloudpickle.register_pickle_by_value(module)
