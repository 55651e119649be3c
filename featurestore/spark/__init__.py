"""The Spark engine of backfills and training sets: the same transforms in Spark tasks.

``session`` (a SparkSession, Java checked), ``jdbc`` (the PostgreSQL JDBC driver's jar and
address), ``readers`` (Parquet history on any Hadoop file system, the PostgreSQL event log over
JDBC in parallel offset ranges), ``frames`` (the Arrow layouts), ``buckets`` (events by entity
hash into buckets, each computed by ``compute_batch``), ``writers`` (history rows into
PostgreSQL), ``backfill`` (the job), ``training`` (training sets).  pyspark is imported only when
a session is made: ``pip install 'streamfeatures[spark]'``.
"""

from .backfill import SparkBackfillOptions, run_spark_backfill
from .session import check_java, spark_session
from .training import spark_historical_features

__all__ = ["SparkBackfillOptions", "check_java", "run_spark_backfill", "spark_historical_features", "spark_session"]
