"""BatchTransforms see the same frame in the worker as in the batch path: the validated frame's
dtypes (object strings with None, Int64 / boolean when a value is missing), batch by batch."""

from __future__ import annotations

import numpy as np
import pandas as pd

from featurestore.definitions import BatchTransform, Entity, EventSource, FeatureView
from featurestore.schema import validate_frame, validator_for
from featurestore.processing import add_derived_columns, prepare_view


def describe(df: pd.DataFrame) -> pd.Series:
    """What a user function may do with optional fields: the text form depends on the dtypes."""
    return (df["city"].astype(str) + "|" + df["n"].astype(str) + "|" + df["flag"].astype(str) + "|"
            + df["amount"].astype(str) + "|" + df["city"].map(type).map(lambda t: t.__name__))


SOURCE = EventSource(name="visits", topic="visits",
                     schema={"uid": "string", "city": "string", "n": "int64", "flag": "bool", "amount": "float64",
                             "at": "timestamp"},
                     timestamp_field="at", entity_field="uid", optional_fields=("city", "n", "flag", "amount"))
VIEW = FeatureView(name="visit_text", entity=Entity(name="visitor", join_key="uid"), source=SOURCE,
                   features=[BatchTransform(name="text", inputs=["city", "n", "flag", "amount"], fn=describe,
                                            dtype="string")])


def test_worker_frames_have_the_batch_dtypes() -> None:
    rng = np.random.default_rng(2)
    n = 60
    raw = pd.DataFrame({
        "uid": [f"u{i % 7}" for i in range(n)],
        "city": np.where(rng.random(n) < 0.3, None, rng.choice(["Lyon", "Zürich", ""], size=n)).astype(object),
        "n": pd.array(np.where(rng.random(n) < 0.3, None, rng.integers(0, 5, size=n)), dtype="Int64"),
        "flag": pd.array(np.where(rng.random(n) < 0.3, None, rng.random(n) < 0.5), dtype="boolean"),
        "amount": np.where(rng.random(n) < 0.3, np.nan, rng.normal(size=n)),
        "at": 1_767_225_600_000 + np.arange(n) * 1000})
    frame, rejects = validate_frame(SOURCE, raw)
    assert rejects.empty
    batch = VIEW.batch_transforms()[0].apply(frame).tolist()  # what the batch path derives

    validate = validator_for(SOURCE)
    events = [validate(record) for record in raw.astype(object).where(raw.notna(), None).to_dict("records")]
    streamed = []
    for lo, size in ((0, 1), (1, 5), (6, 20), (26, 34)):  # batches with and without missing values
        part = events[lo:lo + size]
        add_derived_columns([prepare_view(VIEW, 1, "p")], part)
        streamed += [e.values["__bt_text"] for e in part]
    assert streamed == batch
    texts = [v for v in batch if v is not None]  # a missing city stays missing through astype(str)
    assert len(texts) < len(batch) and any(v.endswith("|str") for v in texts)
    assert all(v.split("|")[1].isdigit() for v in texts)  # n is Int64 in both, never a float ("3.0")
