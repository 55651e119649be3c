"""Feast's shapes of ``/get-online-features``: the request body parsed into an ``OnlineQuery``, and an
``OnlineResponse`` written as Feast's response, one result per name of ``metadata.feature_names``
(the join keys first, then the features in request order)::

    {"metadata": {"feature_names": ["customer_id", "spend_1h"]},
     "results": [{"values": ["C1"], "statuses": ["PRESENT"], "event_timestamps": ["1970-01-01T00:00:00Z"]},
                 {"values": [42.5], "statuses": ["PRESENT"], "event_timestamps": ["2026-01-01T10:00:00.250Z"]}]}

Statuses are Feast's names of ours: ``PRESENT``, ``NOT_FOUND`` (missing), ``OUTSIDE_MAX_AGE``
(expired).  Event times are RFC 3339 in UTC, milliseconds shown when not zero; a join key, an
on-demand feature and a missing value have Feast's zero time, ``1970-01-01T00:00:00Z``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from orjson import Fragment, dumps

from featurestore.online.reader import EXPIRED, MISSING, PRESENT
from featurestore.responses import OnlineResponse
from featurestore.types import parse_timestamp

from .errors import ApiError
from .jsonio import load_object

__all__ = ["EPOCH_TEXT", "STATUS_NAMES", "OnlineQuery", "encode_online", "encode_read", "parse_online", "rfc3339"]

STATUS_NAMES = {PRESENT: "PRESENT", MISSING: "NOT_FOUND", EXPIRED: "OUTSIDE_MAX_AGE"}
EPOCH_TEXT = "1970-01-01T00:00:00Z"


@dataclass
class OnlineQuery:
    """One parsed request: exactly one of ``features`` and ``feature_service``; ``entities`` the join
    key columns as sent and ``rows`` the same as one dict per entity row."""

    features: list[str] | None
    feature_service: str | None
    entities: dict[str, list]
    rows: list[dict]
    request_data: dict[str, list] | None
    at_ms: int | None
    full_names: bool

    @property
    def shape(self) -> tuple:
        """What the request reads, as a hashable key (the client compiles one plan per shape)."""
        return (tuple(self.features) if self.features is not None else None), self.feature_service


_STR = {str}


def _malformed(message: str) -> ApiError:
    return ApiError(400, "malformed_body", message)


def _columns(value: object, name: str) -> dict[str, list]:
    if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
        raise _malformed(f"{name!r} must be an object of arrays, one value per entity row "
                         f"(e.g. {{\"customer_id\": [\"C1\", \"C2\"]}})")
    return value


def parse_online(body: bytes, max_entities: int, request_fields: frozenset[str] = frozenset()) -> OnlineQuery:
    """The query of a ``/get-online-features`` body.  ``request_fields``: request-data names of the
    repository's on-demand views; found among ``entities`` (where Feast clients send them) they are
    request data.  ``ApiError``: 400 for a malformed body, 413 for more than ``max_entities`` rows,
    422 for a bad ``at``."""
    try:
        doc = load_object(body)
    except ValueError as exc:
        raise _malformed(str(exc)) from None
    features, service = doc.get("features"), doc.get("feature_service")
    if features is not None and (type(features) is not list or (features and set(map(type, features)) != _STR)):
        raise _malformed("'features' must be an array of 'view:feature' strings")
    if service is not None and not isinstance(service, str):
        raise _malformed("'feature_service' must be a string: the name of a feature service")
    if (features is None) == (service is None):
        raise _malformed("pass exactly one of 'features' (an array of 'view:feature') and 'feature_service' (a name)")
    if "entities" not in doc:
        raise _malformed("'entities' is missing: an object of join key columns, e.g. {\"customer_id\": [\"C1\"]}")
    entities = _columns(doc["entities"], "entities")
    lengths = {len(v) for v in entities.values()}
    if len(lengths) > 1:
        sizes = ", ".join(f"{k}: {len(v)}" for k, v in entities.items())
        raise _malformed(f"the arrays of 'entities' must have one length, got {sizes}")
    n = lengths.pop() if lengths else 0
    if n > max_entities:
        raise ApiError(413, "too_many_entities", f"{n} entity rows in one request; this server answers at most "
                                                 f"{max_entities} (FEATURESTORE_SERVER_MAX_ENTITIES): split it")
    request_data = None if doc.get("request_data") is None else dict(_columns(doc["request_data"], "request_data"))
    moved = [k for k in entities if k in request_fields]
    if moved:
        request_data = {**{k: entities[k] for k in moved}, **(request_data or {})}
        entities = {k: v for k, v in entities.items() if k not in request_fields}
    full_names = doc.get("full_feature_names", False)
    if not isinstance(full_names, bool):
        raise _malformed("'full_feature_names' must be true or false")
    keys = list(entities)
    rows = [dict(zip(keys, values)) for values in zip(*entities.values())] if keys else [{} for _ in range(n)]
    return OnlineQuery(features, service, entities, rows, request_data, _at_ms(doc.get("at")), full_names)


def _at_ms(value: object) -> int | None:
    if value is None:
        return None
    if type(value) is int:
        return value
    if isinstance(value, str):
        try:
            return int(value) if value.lstrip("-").isdigit() else parse_timestamp(value)
        except ValueError as exc:
            raise ApiError(422, "invalid_input", f"'at': {exc}") from None
    raise ApiError(422, "invalid_input", f"'at' must be epoch milliseconds (an integer) or an ISO-8601 time, "
                                         f"got {value!r}")


_SECONDS = [f"{s:02d}" for s in range(60)]
_MILLIS = ["Z"] + [f".{m:03d}Z" for m in range(1, 1000)]
_MINUTES: dict[int, str] = {}  # epoch minute -> "YYYY-MM-DDTHH:MM:"
_MAX_MINUTES = 200_000


def rfc3339(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 in UTC (``2026-01-01T10:00:00Z``, ``...:00.250Z`` with milliseconds);
    the text of each minute is kept, so one costs a lookup and a concatenation."""
    minute, rem = divmod(ms, 60_000)
    prefix = _MINUTES.get(minute)
    if prefix is None:
        if len(_MINUTES) >= _MAX_MINUTES:
            _MINUTES.clear()
        prefix = _MINUTES[minute] = time.strftime("%Y-%m-%dT%H:%M:", time.gmtime(minute * 60))
    seconds, millis = divmod(rem, 1000)
    return prefix + _SECONDS[seconds] + _MILLIS[millis]


_TEXTS: dict[int | None, str] = {}  # event time -> its text: an entity's time stays until its next event
_MAX_TEXTS = 500_000


def _time_text(ms: int | None) -> str:
    if len(_TEXTS) >= _MAX_TEXTS:
        _TEXTS.clear()
    text = _TEXTS[ms] = EPOCH_TEXT if ms is None else rfc3339(ms)
    return text


def encode_online(response: OnlineResponse) -> dict:
    """Feast's response of ``response``, for ``orjson.dumps``: the join keys first (``PRESENT``, zero
    time), then each feature.

    The features of one view share their event times and, mostly, their statuses: each distinct list
    is converted and written as JSON once, and stands in every result that has it as an
    ``orjson.Fragment`` (JSON copied as is)."""
    names = list(response.columns)
    n = len(next(iter(response.columns.values()))) if names else 0
    key_statuses, key_times = Fragment(dumps(["PRESENT"] * n)), Fragment(dumps([EPOCH_TEXT] * n))
    texts = _TEXTS
    status_memo: dict[tuple, Fragment] = {}
    times_memo: dict[tuple, Fragment] = {}
    last_statuses: list | None = None
    last_times: list | None = None
    feast_statuses, feast_times = key_statuses, key_times  # replaced at the first feature
    results = []
    for name in names:
        values = response.columns[name]
        statuses = response.statuses.get(name)
        if statuses is None:  # a join key, as the request sent it
            results.append({"values": values, "statuses": key_statuses, "event_timestamps": key_times})
            continue
        if statuses != last_statuses:  # features of one view follow each other: mostly the list just seen
            skey = tuple(statuses)
            known = status_memo.get(skey)
            if known is None:
                known = status_memo[skey] = Fragment(dumps([STATUS_NAMES[s] for s in statuses]))
            feast_statuses = known
            last_statuses = statuses
        times = response.event_times[name]
        if times != last_times:
            tkey = tuple(times)
            known = times_memo.get(tkey)
            if known is None:
                known = times_memo[tkey] = Fragment(dumps([texts.get(t) or _time_text(t) for t in times]))
            feast_times = known
            last_times = times
        results.append({"values": values, "statuses": feast_statuses, "event_timestamps": feast_times})
    return {"metadata": {"feature_names": names}, "results": results}


def encode_read(plan, entity_rows: list[dict], results: list, full_names: bool) -> dict | None:
    """Feast's response straight from what the read path returns (``_OnlinePlan`` and the
    ``aread_rows`` results of ``entity_rows``), as ``encode_online`` writes it from the client's
    ``OnlineResponse``, without building the latter: each view's statuses and event times are
    written as JSON once, and each feature's values are the view rows' column.  None for a plan with
    on-demand features (those take ``FeatureStore.aget_online_features`` and ``encode_online``)."""
    labels, pick_columns, steps, pick_views = plan.outputs(full_names)
    if steps is not None:
        return None
    n = len(entity_rows)
    key_statuses, key_times = Fragment(dumps(["PRESENT"] * n)), Fragment(dumps([EPOCH_TEXT] * n))
    out = [{"values": [row.get(key) for row in entity_rows], "statuses": key_statuses, "event_timestamps": key_times}
           for key in plan.join_keys]
    columns: list = []
    view_statuses: list[Fragment] = []
    view_times: list[Fragment] = []
    status_memo: dict[tuple, Fragment] = {}
    texts = _TEXTS
    for read, (view_rows, statuses, times, _) in zip(plan.reads, results):
        columns += zip(*view_rows) if n else [()] * len(read.features)
        skey = tuple(statuses)
        known = status_memo.get(skey)
        if known is None:
            known = status_memo[skey] = Fragment(dumps([STATUS_NAMES[s] for s in statuses]))
        view_statuses.append(known)
        view_times.append(Fragment(dumps([texts.get(t) or _time_text(t) for t in times])))
    out += [{"values": values, "statuses": status, "event_timestamps": at}
            for values, status, at in zip(pick_columns(columns), pick_views(view_statuses), pick_views(view_times))]
    return {"metadata": {"feature_names": [*plan.join_keys, *labels]}, "results": out}
