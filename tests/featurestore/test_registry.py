"""Registry: versions, metadata updates, plan without side effects (real PostgreSQL)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from featurestore.definitions import Aggregate, Entity, EventSource, FeatureService, FeatureView
from featurestore.exceptions import RegistryError, UnknownNameError
from featurestore.offline import PostgresOfflineStore
from featurestore.registry import Registry
from featurestore.repo import Repository

pytestmark = pytest.mark.integration

customer = Entity(name="customer", join_key="customer_id")
tx = EventSource(name="tx", topic="tx", schema={"customer_id": "string", "amount": "float64", "ts": "timestamp"},
                 timestamp_field="ts", entity_field="customer_id")


def make_view(window: str = "1h", owner: str = "a", ttl: str = "1d", **extra) -> FeatureView:
    return FeatureView(name="spend", entity=customer, source=tx, ttl=ttl, owner=owner,
                       features=[Aggregate("spend", "amount", "sum", window=window)], **extra)


def make_repo(view: FeatureView) -> Repository:
    repo = Repository(path=Path(__file__))
    repo._add(view, Path(__file__))
    repo._add(FeatureService(name="svc", features=[view]), Path(__file__))
    return repo


@pytest.fixture
def env(pg_dsn: str, pg_schema: str):
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(PostgresOfflineStore.create(pg_dsn, "proj", pg_schema))
    yield loop, store, Registry.for_store(store), pg_schema
    loop.run_until_complete(store.close())
    loop.close()


def actions(changes) -> dict:
    return {(c.kind, c.name): (c.action, c.old_version, c.new_version) for c in changes}


def test_apply_versions_and_metadata(env) -> None:
    loop, store, reg, schema = env
    run = loop.run_until_complete

    with pytest.raises(RegistryError, match="not applied"):
        run(reg.version_of("spend"))
    changes = run(reg.apply(make_repo(make_view()), store))
    assert actions(changes)[("view", "spend")] == ("create", None, 1)
    assert actions(changes)[("source", "tx")] == ("create", None, 1)
    assert run(reg.version_of("spend")) == 1
    d = run(reg.describe("spend"))
    assert d["kind"] == "view" and d["version"] == 1 and d["entity"] == "customer" and d["source_topic"] == "tx"
    assert d["features"][0]["window"] == "1h" and d["features"][0]["function"] == "sum"
    assert d["features"][0]["dtype"] == "float64" and d["features"][0]["hop"]
    # Offline tables exist for the source and the view's version.
    tables = run(store.pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema))
    names = {r["tablename"] for r in tables}
    assert {"proj__events__tx", "proj__history__spend__v1", "proj__rejects", "proj__registry"} <= names

    # Re-apply: nothing changes.
    assert {c.action for c in run(reg.apply(make_repo(make_view()), store))} == {"unchanged"}

    # Metadata only: same version, definition updated in place.
    changes = run(reg.apply(make_repo(make_view(owner="b", ttl="2d")), store))
    assert actions(changes)[("view", "spend")] == ("update_metadata", 1, 1)
    d = run(reg.describe("spend"))
    assert d["version"] == 1 and d["owner"] == "b" and d["ttl"] == "2d" and len(d["versions"]) == 1

    # A window change: v2; v1 stays describable.
    v2 = make_view(window="2h", owner="b", ttl="2d")
    changes = run(reg.apply(make_repo(v2), store))
    a = actions(changes)[("view", "spend")]
    assert a == ("new_version", 1, 2)
    assert "window" in [c for c in changes if c.name == "spend"][0].detail
    d = run(reg.describe("spend"))
    assert d["version"] == 2 and [v["version"] for v in d["versions"]] == [1, 2]
    assert d["features"][0]["window"] == "2h"
    old = run(reg.describe("spend", version=1))
    assert old["features"][0]["window"] == "1h"
    assert run(reg.version_of("spend")) == 2
    assert run(reg.version_of("spend", make_view().fingerprint())) == 1
    assert run(reg.version_of("spend", v2.fingerprint())) == 2
    with pytest.raises(RegistryError, match="not applied"):
        run(reg.version_of("spend", make_view(window="3h").fingerprint()))
    names = {r["tablename"]
             for r in run(store.pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema))}
    assert "proj__history__spend__v2" in names and "proj__history__spend__v1" in names

    # An explicit higher version wins.
    changes = run(reg.apply(make_repo(make_view(window="4h", version=7)), store))
    assert actions(changes)[("view", "spend")] == ("new_version", 2, 7)

    listed = {(i["kind"], i["name"]): i for i in run(reg.list())}
    assert listed[("view", "spend")]["version"] == 7 and listed[("view", "spend")]["versions"] == 3
    assert ("service", "svc") in listed and ("entity", "customer") in listed
    with pytest.raises(UnknownNameError):
        run(reg.describe("nothing"))


def test_plan_changes_nothing(env) -> None:
    loop, store, reg, _ = env
    run = loop.run_until_complete
    plan = run(reg.plan(make_repo(make_view())))
    assert actions(plan)[("view", "spend")] == ("create", None, 1)
    assert run(reg.list()) == []
    run(reg.apply(make_repo(make_view())))
    plan = run(reg.plan(make_repo(make_view(window="5h"))))
    assert actions(plan)[("view", "spend")] == ("new_version", 1, 2)
    plan = run(reg.plan(make_repo(make_view(owner="z"))))
    assert actions(plan)[("view", "spend")] == ("update_metadata", 1, 1)
    assert run(reg.version_of("spend")) == 1
    assert run(reg.describe("spend"))["owner"] == "a"


def test_describe_lists_a_services_features_and_hides_internal_columns(env) -> None:
    from featurestore.repo import load_repo

    loop, store, reg, _ = env
    run = loop.run_until_complete
    repo = load_repo(Path(__file__).resolve().parents[2] / "examples" / "repo.py")
    run(reg.apply(repo, store))
    service = run(reg.describe("fraud_detection"))
    names = [f["name"] for f in service["features"]]
    assert "customer_stats:spend_1h" in names and "customer_derived_features:high_value_customer" in names
    assert len(names) == len(repo.service("fraud_detection").resolve())
    view = run(reg.describe("transaction_stats"))
    columns = [f["column"] for f in view["features"]]
    assert any(f["kind"] == "BatchTransform" for f in view["features"])
    assert not any(str(c).startswith("__") for c in columns)
