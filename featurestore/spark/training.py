"""Training sets on Spark: ``get_historical_features(..., engine="spark")``.

The label rows follow the events' bucketing: each row goes to the bucket ``crc32(join key's text)
% buckets`` of its entity, the events of the view's source to the same buckets, and each bucket is
computed in one task (``cogroup(...).applyInPandas``) by ``featurestore.historical``'s own
``compute_view`` — one ``compute_batch`` with the bucket's label rows as queries, the acceptance
corrections, TTL and defaults — then on-demand views over the joined columns with
``on_demand_columns``.  Views of one (source, join key) share one read and one cogroup; the parts
are joined back on the label row.  The events come from the PostgreSQL event log (as the local
path reads them) or, with ``events="files"``, from the source's Parquet history.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ..definitions import FeatureView
from ..exceptions import InvalidInputError
from ..historical.labels import EVENT_TIMESTAMP, entity_keys, parse_refs, to_epoch_ms
from ..historical.on_demand import on_demand_columns
from ..historical.point_in_time import compute_view
from ..historical.training_set import _check_columns, _needed_features
from ..repo import Repository
from .buckets import bucket_column
from ..events_layout import arrow_type, events_frame
from .frames import spark_pandas, table_of
from .readers import event_log_events, file_events, history_url
from .session import ship_repo_modules

__all__ = ["spark_historical_features"]

_ROW, _TS = "__fs_row", "__fs_ts"


def spark_historical_features(spark, repo: Repository, entity_df, refs, full_feature_names: bool = False,
                              pg: dict | None = None, events: str = "postgres", buckets: int | None = None):
    """``entity_df`` (pandas or Spark: join key column(s) + ``event_timestamp``) with one column per
    requested feature, as the local ``get_historical_features`` computes it, as a Spark DataFrame
    (ordered as the rows of a pandas ``entity_df``).  ``pg``: dsn, project, schema of the event log."""
    from pyspark.sql import functions as F

    pairs = parse_refs(repo, refs)
    needed, odfvs = _needed_features(repo, pairs)
    views = {name: repo.view(name) for name in needed}
    labels, columns = _labels(spark, entity_df, views, odfvs)
    if events == "postgres" and not pg:
        raise InvalidInputError("a Spark training set over the event log needs PostgreSQL (FEATURESTORE_POSTGRES_DSN)")
    ship_repo_modules()
    n = buckets or max(2, 2 * spark.sparkContext.defaultParallelism)
    groups: dict[tuple[str, str], list[FeatureView]] = {}
    for view in views.values():
        groups.setdefault((view.source.name, view.entity.join_key), []).append(view)
    result = labels
    for (_, join_key), group in groups.items():
        part = _group_values(spark, labels, group, needed, join_key, n, pg, events)
        result = result.join(part, _ROW, "left")
    if odfvs:
        result = _on_demand(result, odfvs, views, needed)
    names = _names(pairs, columns, full_feature_names)
    out = result.orderBy(_ROW).select(*[F.col(f"`{c}`") for c in columns],
                                      *[F.col(f"`{_col(o, f)}`").alias(names[(o, f)]) for o, f in pairs])
    return out


def _col(owner: str, feature: str) -> str:
    return f"{owner}__{feature}"


def _names(pairs: list[tuple[str, str]], inputs: list[str], full: bool) -> dict[tuple[str, str], str]:
    """Result column names, as the local path gives them (``training_set._result``)."""
    plain: dict[str, int] = {}
    for _, f in pairs:
        plain[f] = plain.get(f, 0) + 1
    return {(o, f): f if not full and plain[f] == 1 and f not in inputs else _col(o, f) for o, f in pairs}


def _labels(spark, entity_df, views: dict[str, FeatureView], odfvs: dict) -> tuple[Any, list[str]]:
    """The label rows as a Spark DataFrame with the row number and the time in epoch ms, and the
    input columns."""
    from pyspark.sql import functions as F

    if isinstance(entity_df, pd.DataFrame):
        if EVENT_TIMESTAMP not in entity_df.columns:
            raise InvalidInputError(f"entity_df lacks the {EVENT_TIMESTAMP!r} column "
                                    f"(columns: {', '.join(map(str, entity_df.columns))})")
        _check_columns(entity_df, views, odfvs)
        frame = entity_df.reset_index(drop=True).copy()
        frame[_TS] = to_epoch_ms(frame[EVENT_TIMESTAMP])
        frame[_ROW] = np.arange(len(frame), dtype="int64")
        return spark.createDataFrame(frame), [str(c) for c in entity_df.columns]
    cols = list(entity_df.columns)
    if EVENT_TIMESTAMP not in cols:
        raise InvalidInputError(f"entity_df lacks the {EVENT_TIMESTAMP!r} column (columns: {', '.join(cols)})")
    _check_columns(pd.DataFrame(columns=cols), views, odfvs)
    kind = dict(entity_df.dtypes)[EVENT_TIMESTAMP]
    ts = F.col(EVENT_TIMESTAMP)
    ts = ts.cast("long") if kind in ("bigint", "int") else F.unix_millis(ts.cast("timestamp"))
    return entity_df.withColumn(_TS, ts).withColumn(_ROW, F.monotonically_increasing_id()), cols


def _group_values(spark, labels, group: list[FeatureView], needed: dict[str, list[str]], join_key: str, n: int,
                  pg: dict | None, events: str):
    """``__fs_row`` and the needed features (``view__feature``) and liveness (``__live__view``) of
    the views of one (source, join key), computed per bucket."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    source = group[0].source
    if events == "files":
        ev = file_events(spark, source, history_url(source)).filter("__reason IS NULL")
    else:
        assert pg is not None
        ev = event_log_events(spark, source, pg["dsn"], pg["project"], pg.get("schema", "public"), None, None,
                              max(1, spark.sparkContext.defaultParallelism))
    ev = ev.drop("__reason", "__detail", "__payload").withColumn("__bucket", bucket_column(n))
    lab = (labels.select(_ROW, _TS, F.col(f"`{join_key}`").alias("__key"))
           .withColumn("__bucket", F.coalesce(bucket_column(n), F.lit(0))).withColumnRenamed("__key", join_key))
    fields = [(_ROW, pa.int64())]
    for view in group:
        fields += [(_col(view.name, f), arrow_type(view.feature(f).dtype)) for f in needed[view.name]]
        fields.append((f"__live__{view.name}", pa.bool_()))
    schema = pa.schema(fields)

    def apply(ev_frame: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
        return spark_pandas(_bucket_values(group, needed, ev_frame, labels, schema))

    return ev.groupBy("__bucket").cogroup(lab.groupBy("__bucket")).applyInPandas(apply, from_arrow_schema(schema))


def _bucket_values(group: list[FeatureView], needed: dict[str, list[str]], ev_frame: pd.DataFrame,
                   labels: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """One bucket of label rows: ``compute_view`` per view over the bucket's events."""
    if not len(labels):
        return schema.empty_table()
    source = group[0].source
    events = events_frame(source, ev_frame).drop(columns=["__part", "__off"])
    ts = labels[_TS].to_numpy(dtype="int64")
    out: dict[str, Any] = {_ROW: labels[_ROW].to_numpy(dtype="int64")}
    for view in group:
        keys = entity_keys(labels, view).reset_index(drop=True)
        live: dict[str, np.ndarray] = {}
        for name, series in compute_view(view, events, keys, ts, needed[view.name], live).items():
            out[_col(view.name, name)] = series
        out[f"__live__{view.name}"] = live[view.name]
    return table_of(pd.DataFrame(out), schema)


def _on_demand(result, odfvs: dict, views: dict[str, FeatureView], needed: dict[str, list[str]]):
    """The on-demand views' outputs over the joined columns (``on_demand_columns``, per batch)."""
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    base = to_arrow_schema(result.schema, timezone="UTC")
    extra = []
    for odfv in odfvs.values():
        extra += [(_col(odfv.name, c), arrow_type(vt)) for c, vt in odfv.schema.items()]
    schema = pa.schema(list(base) + extra)

    def apply(batches):
        for batch in batches:
            frame = batch.to_pandas()
            computed = {(v, f): frame[_col(v, f)] for v in needed for f in needed[v]}
            live = {v: frame[f"__live__{v}"].fillna(False).to_numpy(dtype=bool) for v in needed}
            for odfv in odfvs.values():
                for (o, c), series in on_demand_columns(odfv, computed, frame, live).items():
                    frame[_col(o, c)] = series.to_numpy()
            yield from table_of(frame, schema).to_batches()

    return result.mapInArrow(apply, from_arrow_schema(schema))
