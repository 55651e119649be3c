"""``/get-online-features``: a Feast request read through the client's own asyncio read path (its
plan of the request shape and ``aread_rows``; ``FeatureStore.aget_online_features`` for on-demand
features), and answered in Feast's shape.

Before the read, the join keys the request needs are checked (present, not null, of the entity's key
type), so that a bad entity gets a 422 naming the key, the row and the view."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import redis.exceptions

from featurestore.client import FeatureStore
from featurestore.online.reader import aread_rows
from featurestore.read_plan import PlanCache

from .errors import ApiError
from .feast import OnlineQuery, encode_online, encode_read, parse_online
from .jsonio import json_bytes

__all__ = ["OnlineAnswer", "OnlineReads"]

_KEY_TYPES = {"string": str, "int64": int}


@dataclass
class OnlineAnswer:
    """The response body, and what it served: ``rows`` entity rows of ``features`` features each."""

    body: bytes
    rows: int
    features: int


class OnlineReads:
    """Answers ``/get-online-features`` bodies from ``store``."""

    def __init__(self, store: FeatureStore, max_entities: int) -> None:
        self.store = store
        self.max_entities = max_entities
        self._keys = PlanCache()  # request shape -> the join keys it needs (``_key_spec``)
        self.reset()

    def reset(self) -> None:
        """Derive again what depends on the store's repository (after it changed)."""
        repo = self.store.repo
        join_keys = {e.join_key for e in repo.entities.values()} | {v.entity.join_key for v in repo.views.values()}
        self.request_fields = frozenset(f for odfv in repo.odfvs.values() for f in odfv.request_schema) - join_keys
        self._keys.clear()

    def parse(self, body: bytes) -> OnlineQuery:
        return parse_online(body, self.max_entities, self.request_fields)

    async def answer(self, query: OnlineQuery) -> OnlineAnswer:
        """Read ``query`` and write Feast's response (``ApiError`` or the client's errors on bad input).

        The client's read path: its plan of the request shape and its Redis read (``aread_rows``);
        the response is written from the rows it returns (``encode_read``), or, for on-demand
        features, from ``aget_online_features``' answer."""
        self._check_keys(query)
        store = self.store
        plan, rows, keys = store._online_request(query.rows, query.features, query.feature_service)
        if plan.outputs(query.full_names)[2] is not None:  # on-demand features: the client computes them
            return await self._answer_odfv(query)
        try:
            results = await aread_rows(store.online, plan.reads, keys, query.at_ms)
        except redis.exceptions.ConnectionError:  # a pooled connection Redis closed (a restart, an idle timeout):
            results = await aread_rows(store.online, plan.reads, keys, query.at_ms)  # a read changes nothing
        doc = encode_read(plan, rows, results, query.full_names)
        assert doc is not None  # no on-demand features: checked above
        return OnlineAnswer(json_bytes(doc), len(rows), len(doc["results"]) - len(plan.join_keys))

    async def _answer_odfv(self, query: OnlineQuery) -> OnlineAnswer:
        read = partial(self.store.aget_online_features, query.rows, features=query.features,
                       feature_service=query.feature_service, request_data=query.request_data, at_ms=query.at_ms,
                       full_names=query.full_names)
        try:
            response = await read()
        except redis.exceptions.ConnectionError:  # as in ``answer``
            response = await read()
        return OnlineAnswer(json_bytes(encode_online(response)), len(query.rows), len(response.statuses))

    def _key_spec(self, query: OnlineQuery) -> dict[str, tuple[type, str, str]]:
        """join key -> (Python type, key type, a view keyed by it) of the views the query reads."""
        spec = self._keys.get(query.shape)
        if spec is None:
            repo = self.store.repo
            views = []
            for ref in self.store.resolve(query.features, query.feature_service):  # UnknownNameError: 404
                if ref.view in repo.views:
                    views.append(repo.views[ref.view])
                else:
                    views += [repo.views[name] for name, _ in repo.odfvs[ref.view].inputs()]
            spec = {}
            for view in views:
                spec.setdefault(view.entity.join_key, (_KEY_TYPES[view.entity.key_type], view.entity.key_type,
                                                       view.name))
            self._keys[query.shape] = spec
        return spec

    def _check_keys(self, query: OnlineQuery) -> None:
        for key, (python_type, key_type, view) in self._key_spec(query).items():
            values = query.entities.get(key)
            if values is None:
                sent = ", ".join(query.entities) or "nothing"
                raise ApiError(422, "missing_join_key", f"'entities' lacks the join key {key!r} of feature view "
                                                        f"{view!r} (it has: {sent})")
            for i, value in enumerate(values):
                if type(value) is not python_type:
                    if value is None:
                        raise ApiError(422, "missing_join_key", f"entities.{key}[{i}] is null: every entity row "
                                                                f"needs the join key {key!r} of feature view {view!r}")
                    raise ApiError(422, "wrong_key_type", f"entities.{key}[{i}] is {_json_kind(value)} {value!r}: "
                                                          f"feature view {view!r} has {key_type} keys")


def _json_kind(value: object) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "a boolean", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)
