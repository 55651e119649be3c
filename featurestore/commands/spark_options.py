"""The Spark engine on the command line: ``backfill --engine spark`` (its options, added to the
backfill parser by ``add_spark_arguments``) and ``training-set`` (``add_training_set``), both
computed by ``featurestore.spark`` (docs/spark.md)."""

from __future__ import annotations

import json
import sys

from ..cli import load_settings
from ..exceptions import InvalidInputError
from ..runtime import PG_SCHEMA, open_runtime

__all__ = ["add_spark_arguments", "add_training_set", "run_spark_backfill_cmd", "run_training_set"]


def _engine_arguments(p, what: str) -> None:
    p.add_argument("--engine", choices=["local", "spark"], default="local",
                   help=f"where {what} is computed: this process (local), or Spark tasks (spark; needs "
                        f"pip install 'streamfeatures[spark]' and Java 17+) (default local)")
    p.add_argument("--spark-master", metavar="URL",
                   help="with --engine spark: the cluster (spark://host:7077, yarn, local[4], ...; default: "
                        "spark-submit's, else local[*])")
    p.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                   help="with --engine spark: a Spark setting (repeat), e.g. spark.executor.memory=8g; "
                        "spark.jars=PATH takes the place of the PostgreSQL JDBC driver's jar that reads the "
                        "event log (FEATURESTORE_SPARK_JDBC_JAR, default /usr/share/java/postgresql.jar)")


def add_spark_arguments(p) -> None:
    """The ``backfill`` options of the Spark engine."""
    _engine_arguments(p, "the history")
    p.add_argument("--out", metavar="URL",
                   help="with --engine spark: write the history as Parquet partitioned by date to this folder "
                        "(any Hadoop URL: file://, s3a://, hdfs://; replaced whole by a rerun) instead of the "
                        "PostgreSQL history table")
    p.add_argument("--history-path", metavar="URL",
                   help="with --engine spark --source files: read this Parquet file or folder instead of the "
                        "source's FileHistory path")
    p.add_argument("--buckets", type=int, default=None,
                   help="with --engine spark: entity buckets, one task each (default: about 200k events each, "
                        "at least two per core)")


def add_training_set(subparsers, common) -> None:
    """The ``training-set`` command."""
    p = subparsers.add_parser("training-set", parents=[common],
                              help="point-in-time feature values for label rows, written as Parquet")
    p.add_argument("--repo", help="feature repository (file or folder); default: the bundled example")
    p.add_argument("--labels", required=True, metavar="PATH",
                   help="label rows (.parquet or .csv; with --engine spark, any Parquet URL): the join key "
                        "column(s) and event_timestamp")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--service", help="a feature service: its features")
    g.add_argument("--features", nargs="+", metavar="VIEW:FEATURE", help="these features")
    p.add_argument("--full-feature-names", action="store_true", help="name every column view__feature")
    p.add_argument("--out", required=True, metavar="PATH", help="the Parquet file (local) or folder (spark) to write")
    _engine_arguments(p, "the training set")
    p.set_defaults(handler=run_training_set)


def _session(args):
    from ..spark.session import parse_conf, spark_session

    return spark_session(args.spark_master, parse_conf(args.spark_conf), app_name="featurestore")


def refuse_spark_options(args) -> None:
    """``InvalidInputError`` naming the Spark-only options given with ``--engine local``."""
    given = [flag for flag, value in (("--spark-master", getattr(args, "spark_master", None)),
                                      ("--spark-conf", getattr(args, "spark_conf", None)),
                                      ("--out", getattr(args, "out", None) if hasattr(args, "history_path") else None),
                                      ("--history-path", getattr(args, "history_path", None)),
                                      ("--buckets", getattr(args, "buckets", None))) if value]
    if given:
        one = len(given) == 1
        raise InvalidInputError(f"{', '.join(given)} {'is an option' if one else 'are options'} of the Spark engine: "
                                f"add --engine spark, or leave {'it' if one else 'them'} out")


def run_spark_backfill_cmd(args, time_ms) -> int:
    """``backfill --engine spark``; ``time_ms`` parses --start/--end."""
    import asyncio

    from ..exceptions import BackfillError
    from ..processing import prepare_view
    from .stream import print_rejects
    from ..spark import SparkBackfillOptions, run_spark_backfill

    if args.source == "kafka":
        raise InvalidInputError("--engine spark reads --source files or postgres; a Kafka topic is read by "
                                "--engine local")
    if args.shards != 1:
        raise InvalidInputError("--shards splits a local backfill over processes; with --engine spark, Spark "
                                "spreads the buckets over its executors: drop --shards/--shard")
    rt = open_runtime(load_settings(args), args.repo)
    pv = prepare_view(rt.repo.view(args.view), rt.versions()[args.view], rt.project)
    opts = SparkBackfillOptions(source=args.source, out=args.out, history_path=args.history_path,
                                start_ms=time_ms(args.start), end_ms=time_ms(args.end), buckets=args.buckets,
                                online=args.online, group=args.group or f"featurestore-{rt.project}",
                                strict=args.strict,
                                pg={"dsn": rt.postgres_dsn, "project": rt.project, "schema": PG_SCHEMA},
                                kafka_options=rt.kafka_options() if rt.settings.kafka_bootstrap_servers else {})
    spark = _session(args)
    loop = asyncio.new_event_loop()
    offline = loop.run_until_complete(rt.offline())
    try:
        report = run_spark_backfill(spark, pv, opts, offline, rt.online() if args.online else None, loop=loop)
    except BackfillError as exc:
        print(f"backfill stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        loop.run_until_complete(offline.close())
        loop.close()
    print(json.dumps({**report.as_dict(), "engine": "spark", "out": args.out}, indent=2))
    print_rejects(report)
    return 0


def run_training_set(args) -> int:
    from ..client import FeatureStore

    features = args.features
    with FeatureStore.connect(args.repo, load_settings(args)) as store:
        if args.engine == "spark":
            spark = _session(args)
            try:
                labels = spark.read.parquet(args.labels) if not args.labels.endswith(".csv") else \
                    spark.read.option("header", True).option("inferSchema", True).csv(args.labels)
            except Exception as exc:  # AnalysisException: no such path, not Parquet
                raise InvalidInputError(f"cannot read the labels {args.labels}: {str(exc).splitlines()[0]}") from None
            store.get_historical_features(labels, features, args.service, args.full_feature_names, engine="spark",
                                          spark=spark, out=args.out)
            rows = spark.read.parquet(args.out).count()
        else:
            refuse_spark_options(args)
            frame = _read_labels(args.labels)
            result = store.get_historical_features(frame, features, args.service, args.full_feature_names)
            result.to_parquet(args.out, index=False)
            rows = len(result)
    print(json.dumps({"out": args.out, "rows": rows, "engine": args.engine}))
    return 0


def _read_labels(path: str):
    import pandas as pd

    try:
        return pd.read_csv(path) if path.endswith(".csv") else pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read the labels {path}: {exc}") from None
