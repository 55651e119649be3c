"""The local backfill's readers keep nullable int64 values exact beyond 2^53 (float64 is exact to 2^53 only)."""

from __future__ import annotations


def test_backfill_reader_and_spill_keep_nullable_int64_values_exact(tmp_path) -> None:
    """A Parquet history with an optional int64 field holding values beyond 2^53 and nulls: the
    backfill's file reader and its spill (written, then read back as ``compute_batch`` takes it) give
    the exact ints, not float64 approximations."""
    import numpy as np
    import pandas as pd

    from featurestore.definitions import EventSource, FileHistory
    from workers.backfill_readers import iter_file_history
    from workers.backfill_spill import Spill

    big = 2 ** 62
    qty = [big + 1, None, big + 3]
    path = tmp_path / "h.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a", "b", "c"], "k": ["x", "y", "x"], "qty": pa.array(qty, pa.int64()),
                             "at": [1_000, 2_000, 3_000]}), path)  # no pandas metadata: as Spark or DuckDB write
    source = EventSource(name="o", topic="o", schema={"id": "string", "k": "string", "qty": "int64", "at": "timestamp"},
                         timestamp_field="at", entity_field="k", event_id_field="id", optional_fields=("qty",),
                         history=FileHistory(path=str(path)))
    valid, rejects = next(iter(iter_file_history(source, 100)))
    assert not rejects and valid["qty"].tolist()[0] == big + 1 and valid["qty"].tolist()[2] == big + 3
    (tmp_path / "spill").mkdir()
    spill = Spill(tmp_path / "spill", source)
    frame = pd.DataFrame({"__key": ["x", "y", "x"], "__ts": [1_000, 2_000, 3_000], "__eid": ["a", "b", "c"],
                          "__part": [-1, -1, -1], "__off": [0, 1, 2], "id": ["a", "b", "c"],
                          "qty": pd.array(qty, dtype="Int64")})
    spill.add(frame, np.zeros(3, dtype=np.int64))
    spill.close()
    back = spill.read(0)
    assert [None if pd.isna(v) else int(v) for v in back["qty"]] == qty
