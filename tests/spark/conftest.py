"""One local Spark (``local[2]``) for the whole session: the JVM starts once (several seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def spark():
    """A SparkSession on ``local[2]``: few shuffle partitions, no UI.  Fails (does not skip) when
    pyspark or Java is missing: ``./dev test`` installs the first and checks the second."""
    from featurestore.exceptions import ConfigurationError
    from featurestore.spark.session import spark_session

    # the tasks import the test modules' functions (BatchTransforms, on-demand views) by name
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), before) if p)
    try:
        session = spark_session("local[2]", {"spark.sql.shuffle.partitions": "4",
                                             "spark.default.parallelism": "2",
                                             "spark.driver.memory": "1g",
                                             "spark.sql.adaptive.enabled": "false"})
    except ConfigurationError as exc:
        pytest.fail(str(exc))
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    if before is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = before
