"""load_repo: the example repository, folders, duplicates, import failures."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featurestore.exceptions import DefinitionError, UnknownNameError
from featurestore.repo import load_repo
from featurestore.types import Embedding, LIST_FLOAT64, STRING

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

HEADER = """
from featurestore.definitions import Aggregate, Entity, EventSource, FeatureService, FeatureView, FileHistory
customer = Entity(name="customer", join_key="customer_id")
events = EventSource(
    name="events", topic="events",
    schema={"customer_id": "string", "amount": "float64", "ts": "timestamp"},
    timestamp_field="ts", entity_field="customer_id",
    history=FileHistory(path="data/events.csv"),
)
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_example_repo_objects():
    repo = load_repo(EXAMPLES / "repo.py")
    assert sorted(repo.entities) == ["customer"]
    assert sorted(repo.sources) == ["transactions"]
    assert sorted(repo.views) == ["customer_stats", "transaction_stats"]
    assert sorted(repo.odfvs) == ["customer_derived_features"]
    assert sorted(repo.services) == ["fraud_detection", "recommendation"]
    src = repo.source("transactions")
    assert src.history.path == str((EXAMPLES / "repo.py").resolve().parent / "data" / "transactions.parquet")
    assert src.allowed_lateness == 5 * 60_000 and src.event_id_field == "transaction_id"
    stats = repo.view("customer_stats")
    assert stats.ttl == 90 * 86_400_000 and stats.owner == "risk-team"
    assert stats.dtype("customer_segment") == STRING
    assert stats.dtype("recent_amounts") == LIST_FLOAT64
    assert repo.view("transaction_stats").dtype("txn_embedding") == Embedding(8)
    assert repo.service("recommendation").resolve() == [
        ("customer_stats", "total_purchases"),
        ("customer_stats", "customer_segment"),
        ("customer_stats", "distinct_categories_30d"),
        ("customer_stats", "last_category"),
    ]
    fraud = repo.service("fraud_detection").resolve()
    assert ("customer_derived_features", "high_value_customer") in fraud
    assert ("transaction_stats", "txn_embedding") in fraud
    assert len(fraud) == 8 + 3 + 2
    with pytest.raises(UnknownNameError, match=(
        r"unknown feature view 'nope' \(known: customer_stats, transaction_stats\)"
    )):
        repo.view("nope")
    with pytest.raises(UnknownNameError, match="unknown feature service 'x' .known: fraud_detection, recommendation."):
        repo.service("x")


def test_example_transforms_and_odfv():
    repo = load_repo(EXAMPLES / "repo.py")
    events = pd.DataFrame(
        {"amount": [10.0, 75.0, 250.0], "merchant_category": ["grocery", "travel", "grocery"],
         "is_online": [True, False, False]}
    )
    seg = repo.view("customer_stats").feature("customer_segment").apply(events)
    assert seg.tolist() == ["budget", "standard", "premium"]
    emb = repo.view("transaction_stats").feature("txn_embedding").apply(events)
    vecs = np.array(emb.tolist())
    assert vecs.shape == (3, 8)
    assert vecs[:, 7].tolist() == [1.0, 0.0, 0.0]
    assert vecs[0].argmax() == vecs[2].argmax()  # same category, same slot
    assert vecs[2].max() == pytest.approx(np.log1p(250.0))
    odfv = repo.odfvs["customer_derived_features"]
    rows = pd.DataFrame(
        {"total_purchases": [10, None], "avg_amount_7d": [50.0, None], "purchases_24h": [5, None],
         "current_amount": [20.0, 900.0]}
    )
    out = odfv.compute(rows)
    assert out["purchase_frequency_score"].tolist() == [0.5, 0.0]
    assert out["high_value_customer"].tolist() == [False, True]


def test_folder_repo_and_relative_history(tmp_path):
    write(tmp_path / "a_sources.py", HEADER)
    write(
        tmp_path / "b_views.py",
        HEADER + """
spend = FeatureView(name="spend", entity=customer, source=events,
                    features=[Aggregate(name="spend_1h", column="amount", function="sum", window="1h")])
service = FeatureService(name="svc", features=[spend])
""",
    )
    write(tmp_path / "_helpers.py", "raise RuntimeError('never executed')\n")
    repo = load_repo(tmp_path)
    assert sorted(repo.views) == ["spend"] and sorted(repo.services) == ["svc"]
    assert repo.source("events").history.path == str(tmp_path.resolve() / "data" / "events.csv")
    assert repo.origins[("FeatureView", "spend")] == (tmp_path / "b_views.py").resolve()


def test_referenced_objects_are_collected(tmp_path):
    f = write(
        tmp_path / "repo.py",
        """
from featurestore.definitions import Aggregate, Entity, EventSource, FeatureService, FeatureView

def build():
    customer = Entity(name="customer", join_key="customer_id")
    events = EventSource(name="events", topic="events",
        schema={"customer_id": "string", "amount": "float64", "ts": "timestamp"},
        timestamp_field="ts", entity_field="customer_id")
    return FeatureView(name="spend", entity=customer, source=events,
        features=[Aggregate(name="spend_1h", column="amount", function="sum", window="1h")])

svc = FeatureService(name="svc", features=[build()[["spend_1h"]]])
""",
    )
    repo = load_repo(f)
    assert list(repo.entities) == ["customer"] and list(repo.sources) == ["events"] and list(repo.views) == ["spend"]


def test_conflicting_duplicates_name_both_files(tmp_path):
    write(tmp_path / "one.py", HEADER)
    write(tmp_path / "two.py", HEADER.replace('join_key="customer_id"', 'join_key="cust_id"'))
    with pytest.raises(DefinitionError) as info:
        load_repo(tmp_path)
    msg = str(info.value)
    assert "Entity 'customer' is defined differently in" in msg
    assert str(tmp_path.resolve() / "one.py") in msg and str(tmp_path.resolve() / "two.py") in msg


def test_identical_duplicates_are_fine(tmp_path):
    write(tmp_path / "one.py", HEADER)
    write(tmp_path / "two.py", HEADER)
    assert list(load_repo(tmp_path).entities) == ["customer"]


def test_import_failure_names_the_file(tmp_path):
    f = write(tmp_path / "broken.py", "x = 1\nimport does_not_exist_anywhere\n")
    with pytest.raises(DefinitionError, match=(
        r"broken.py \(line 2\): failed to import: ModuleNotFoundError: No module named 'does_not_exist_anywhere'"
    )):
        load_repo(f)


def test_definition_error_names_the_file(tmp_path):
    f = write(tmp_path / "bad.py", HEADER + (
        'v = FeatureView(name="v", entity=customer, source=events, '
        'features=[Aggregate(name="s", column="amout", function="sum")])\n'
    ))
    with pytest.raises(DefinitionError) as info:
        load_repo(f)
    assert str(info.value).startswith(
        f"{f.resolve()}: FeatureView 'v': feature 's': column 'amout' is not in source 'events'")


def test_missing_path(tmp_path):
    with pytest.raises(DefinitionError, match="feature repository .* does not exist"):
        load_repo(tmp_path / "nope.py")
    with pytest.raises(DefinitionError, match="no .py files"):
        load_repo(tmp_path)


def test_two_sources_on_one_topic_are_refused(tmp_path):
    """A worker reads a topic as one source (its schema, its entity key the events are partitioned by): a
    second source on the same topic would silently get no events."""
    write(tmp_path / "a.py", HEADER)
    write(tmp_path / "b.py", """
from featurestore.definitions import EventSource

merchants = EventSource(name="merchant_events", topic="events",
    schema={"merchant_id": "string", "amount": "float64", "ts": "timestamp"},
    timestamp_field="ts", entity_field="merchant_id")
""")
    with pytest.raises(DefinitionError, match=r"EventSource 'merchant_events' in .*b\.py reads topic 'events', which "
                                              r"EventSource 'events' in .*a\.py reads too"):
        load_repo(tmp_path)


def test_one_wording_for_a_missing_repository():
    from featurestore.exceptions import ConfigurationError
    from featurestore.runtime import DEFAULT_REPO, repo_file

    with pytest.raises(ConfigurationError, match=r"feature repository /no/such/repo.py does not exist "
                                                 r"\(check the path given to --repo\)"):
        repo_file("/no/such/repo.py")
    assert repo_file(None) == DEFAULT_REPO and DEFAULT_REPO.exists()  # the bundled example, from the package
