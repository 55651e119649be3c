"""Expectations: each check kind on a frame of values (table-driven), their definition errors, how views and
services carry them into the registry, and the registry's handling of them (a metadata change)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featurestore.console.checks import checks_of, evaluate, failure_line
from featurestore.definitions import (Aggregate, AllowedValues, Entity, EventSource, FeatureService, FeatureView,
                                      Latest, NotNull, Range, Relation)
from featurestore.exceptions import DefinitionError
from featurestore.repo import Repository

customer = Entity(name="customer", join_key="customer_id")
tx = EventSource(name="tx", topic="tx", schema={"customer_id": "string", "amount": "float64", "kind": "string",
                                                 "ts": "timestamp"}, timestamp_field="ts", entity_field="customer_id")
FEATURES = [Aggregate("avg_7d", "amount", "mean", window="7d"), Aggregate("max_7d", "amount", "max", window="7d"),
            Latest(name="last_kind", column="kind"), Aggregate("recent", "amount", "last_n", window="1d", n=3)]

FRAME = pd.DataFrame({
    "avg_7d": [1.0, 5.0, None, 9.0, np.nan],
    "max_7d": [2.0, 4.0, 3.0, None, 1.0],
    "last_kind": ["a", "b", None, "z", "a"],
    "recent": [[1.0], None, [2.0, 3.0], [], None],
})


@pytest.mark.parametrize("check,failing,checked", [
    (Range("avg_7d", min=0, max=5), [False, False, False, True, False], 3),
    (Range("avg_7d", min=2), [True, False, False, False, False], 3),
    (Range("max_7d", max=3), [False, True, False, False, False], 4),
    (NotNull("avg_7d"), [False, False, True, False, True], 5),
    (NotNull("last_kind"), [False, False, True, False, False], 5),
    (NotNull("recent"), [False, True, False, False, True], 5),  # an empty list is a value
    (AllowedValues("last_kind", ["a", "b"]), [False, False, False, True, False], 4),
    (Relation("avg_7d", "<=", "max_7d"), [False, True, False, False, False], 2),
    (Relation("avg_7d", ">", "max_7d"), [True, False, False, False, False], 2),
    (Relation("avg_7d", "==", "max_7d", tolerance=1.0), [False, False, False, False, False], 2),
    (Relation("avg_7d", "!=", "max_7d"), [False, False, False, False, False], 2),
    (Relation("avg_7d", "<", "max_7d", tolerance=1.0), [False, True, False, False, False], 2),  # 5 < 4 + 1 fails
])
def test_each_check_kind(check, failing, checked) -> None:
    assert check.failing(FRAME).tolist() == failing
    assert check.checked(FRAME) == checked


def test_a_mean_above_its_max_by_rounding_passes_with_a_tolerance() -> None:
    mean = sum([0.1, 0.1, 0.1]) / 3  # 0.10000000000000002
    frame = pd.DataFrame({"avg_7d": [mean], "max_7d": [0.1]})
    assert Relation("avg_7d", "<=", "max_7d").failing(frame).tolist() == [True]
    assert Relation("avg_7d", "<=", "max_7d", tolerance=1e-9).failing(frame).tolist() == [False]


@pytest.mark.parametrize("make,message", [
    (lambda: Range("avg_7d"), "give min, max or both"),
    (lambda: Range("avg_7d", min=3, max=1), "min 3.0 is above max 1.0"),
    (lambda: Range("avg_7d", max=float("inf")), "finite"),
    (lambda: AllowedValues("last_kind", []), "values must not be empty"),
    (lambda: AllowedValues("last_kind", "ab"), "must be a list"),
    (lambda: Relation("avg_7d", "=<", "max_7d"), "field 'op'"),
    (lambda: Relation("avg_7d", "<=", "avg_7d"), "with itself"),
    (lambda: Relation("avg_7d", "<=", "max_7d", tolerance=-1), "tolerance"),
])
def test_bad_checks_are_definition_errors(make, message) -> None:
    with pytest.raises(DefinitionError, match=message):
        make()


def view(*checks) -> FeatureView:
    return FeatureView(name="spend", entity=customer, source=tx, features=FEATURES, expectations=list(checks))


@pytest.mark.parametrize("check,message", [
    (Range("nope", max=1), r"no feature 'nope' \(features: avg_7d, max_7d, last_kind, recent\)"),
    (Range("last_kind", max=1), "feature 'last_kind' is string; Range compares numbers"),
    (Relation("avg_7d", "<", "last_kind"), "Relation compares numbers"),
    (AllowedValues("recent", [1.0]), "is a list"),
])
def test_a_view_rejects_checks_on_features_it_lacks_or_cannot_compare(check, message) -> None:
    with pytest.raises(DefinitionError, match=message):
        view(check)


def test_a_view_rejects_what_is_not_a_check() -> None:
    with pytest.raises(DefinitionError, match="item 0 is str, expected Range, NotNull, AllowedValues or Relation"):
        view("avg_7d <= max_7d")


def test_checks_are_in_the_views_json_but_not_its_fingerprint() -> None:
    plain, checked = view(), view(Relation("avg_7d", "<=", "max_7d"), NotNull("last_kind", description="set"))
    assert "expectations" not in plain.to_json()  # a view without checks registers as before
    assert checked.to_json()["expectations"] == [
        {"kind": "relation", "left": "avg_7d", "op": "<=", "right": "max_7d", "tolerance": 0.0,
         "check": "avg_7d <= max_7d"},
        {"kind": "not_null", "feature": "last_kind", "check": "last_kind not null", "description": "set"}]
    assert plain.fingerprint() == checked.fingerprint()


def _service(*checks) -> FeatureService:
    other = FeatureView(name="other", entity=customer, source=tx, features=[FEATURES[1]])
    return FeatureService(name="svc", features=[view()[["avg_7d", "max_7d"]], other], expectations=list(checks))


def test_a_service_binds_its_checks_to_one_view() -> None:
    svc = _service(Relation("avg_7d", "<=", "spend:max_7d"), Range("other:max_7d", min=0))
    assert [c.describe() for c in svc.expectations_of("spend")] == ["avg_7d <= max_7d"]
    assert [c.describe() for c in svc.expectations_of("other")] == ["max_7d in [0, inf]"]
    assert svc.to_json()["expectations"][0]["right"] == "spend:max_7d"


@pytest.mark.parametrize("check,message", [
    (Range("max_7d", min=0), "'max_7d' is in views spend, other; name it 'view:feature'"),
    (Range("last_kind", min=0), "'last_kind' is not a feature of the service's views"),
    (Relation("spend:avg_7d", "<=", "other:max_7d"), "reads features of views other, spend"),
])
def test_a_service_rejects_ambiguous_or_unknown_or_cross_view_checks(check, message) -> None:
    with pytest.raises(DefinitionError, match=message):
        _service(check)


def test_evaluate_counts_failures_names_entities_and_words_the_failure() -> None:
    repo = Repository(path=Path(__file__))
    spend = view(Range("max_7d", max=3), Relation("avg_7d", "<=", "max_7d"))
    repo._add(spend, Path(__file__))
    repo._add(FeatureService(name="svc", features=[spend], expectations=[NotNull("spend:last_kind")]), Path(__file__))
    checks = checks_of(repo, "spend")
    assert [(by, c.describe()) for by, c in checks] == [
        ("view spend", "max_7d in [-inf, 3]"), ("view spend", "avg_7d <= max_7d"),
        ("service svc", "last_kind not null")]
    results = evaluate(checks, FRAME, ["c1", "c2", "c3", "c4", "c5"])
    assert [(r["failed"], r["rows"], r["ok"], r["examples"]) for r in results] == [
        (1, 4, False, ["c2"]), (1, 2, False, ["c2"]), (1, 5, False, ["c3"])]
    assert failure_line("spend", results[1]) == (
        "view spend: check 'avg_7d <= max_7d' (features avg_7d, max_7d, declared by view spend): "
        "1 of 2 rows failed, e.g. c2")


@pytest.mark.integration
def test_adding_checks_to_a_registered_view_updates_its_metadata_only(pg_dsn: str, pg_schema: str) -> None:
    from featurestore.offline import PostgresOfflineStore
    from featurestore.registry import Registry

    def repo_of(v: FeatureView) -> Repository:
        repo = Repository(path=Path(__file__))
        repo._add(v, Path(__file__))
        repo._add(FeatureService(name="svc", features=[v]), Path(__file__))
        return repo

    async def go() -> None:
        store = await PostgresOfflineStore.create(pg_dsn, "proj", pg_schema)
        try:
            reg = Registry.for_store(store)
            await reg.apply(repo_of(view()), store)  # a version registered without checks
            changes = {c.name: c for c in await reg.apply(repo_of(view(Range("max_7d", min=0))), store)}
            assert (changes["spend"].action, changes["spend"].new_version) == ("update_metadata", 1)
            assert "expectations" in changes["spend"].detail
            described = await reg.describe("spend")
            assert described["version"] == 1 and described["latest_version"] == 1
        finally:
            await store.close()

    asyncio.run(go())
