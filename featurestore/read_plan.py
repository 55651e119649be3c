"""One online request shape compiled once: which views to read, how entity keys are built, which
response column comes from where, and the statuses of on-demand outputs."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable

from .definitions import FeatureView
from .online.reader import EXPIRED, MISSING, PRESENT, ViewRead, picker
from .repo import Repository
from .responses import FeatureRef

#: request shapes whose compiled plans a client (and the server's key checks) keep
PLAN_CACHE_SIZE = 256


class PlanCache:
    """What was compiled for the ``size`` request shapes used last (the least recently used is dropped
    past that): a client asked for ever new feature lists keeps a bounded number of plans."""

    def __init__(self, size: int = PLAN_CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any:
        """The item of ``key`` (now the most recently used), or None."""
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def __setitem__(self, key: Hashable, item: Any) -> None:
        self._items[key] = item
        self._items.move_to_end(key)
        if len(self._items) > self.size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def values(self):
        """The items kept, least recently used first (a view: the cache is not reordered)."""
        return self._items.values()

    def clear(self) -> None:
        self._items.clear()


def _odfv_statuses(input_statuses: list[list[str]], n: int, compute_on_missing: bool) -> list[str]:
    """Per row, the status of an on-demand view's outputs: ``missing`` when an input view is missing,
    else ``expired`` when one expired, else ``present`` (always ``present`` with ``compute_on_missing``)."""
    if compute_on_missing or not input_statuses:
        return [PRESENT] * n
    out = []
    for row in zip(*input_statuses):
        out.append(MISSING if MISSING in row else EXPIRED if EXPIRED in row else PRESENT)
    return out


class _OnlinePlan:
    """One online request shape, compiled once: the views to read, how entity keys are built and
    which response column comes from where (labels per ``full_names``)."""

    def __init__(self, repo: Repository, refs: list[FeatureRef], needed: dict[str, list[str]],
                 reads: list[ViewRead], views: list[FeatureView]):
        self.refs, self.needed, self.reads, self.views = refs, needed, reads, views
        self.repo = repo
        self.service: object = None  # the FeatureService object this plan was compiled for, when keyed by one
        entity_index: dict[tuple, int] = {}
        self.entities: list[tuple[str, bool, FeatureView]] = []  # (join key, string keys, first view) per entity
        self.view_entity: list[int] = []
        for view in views:
            ident = (view.entity.join_key, view.entity.key_type)
            if ident not in entity_index:
                entity_index[ident] = len(self.entities)
                self.entities.append((view.entity.join_key, view.entity.key_type == "string", view))
            self.view_entity.append(entity_index[ident])
        self.join_keys = list(dict.fromkeys(view.entity.join_key for view in views))
        view_index = {name: i for i, name in enumerate(needed)}
        first_column = [sum(len(r.features) for r in reads[:i]) for i in range(len(reads))]
        #: (view, feature) -> (view index, index of its column among all views' columns)
        self.position = {(name, f): (view_index[name], first_column[view_index[name]] + j)
                         for name in needed for j, f in enumerate(reads[view_index[name]].features)}
        self.odfv_inputs = {ref.view: [(f, self.position[(view, f)][1]) for view, f in repo.odfvs[ref.view].inputs()]
                            for ref in refs if ref.view not in repo.views}
        #: on-demand view -> indexes of its input views (their statuses decide whether it is computed)
        self.odfv_views = {ref.view: sorted({self.position[(view, f)][0] for view, f in repo.odfvs[ref.view].inputs()})
                           for ref in refs if ref.view not in repo.views}
        names = [r.feature for r in refs]
        self.clash = {n for n in set(names) if names.count(n) > 1}
        self._outputs: dict[bool, tuple] = {}

    def outputs(self, full_names: bool) -> tuple:
        """(labels, columns, steps, views) in request order.  Without on-demand features,
        ``columns`` picks each label's column from the list of all views' columns, ``views`` its
        view's item from a list with one item per view, and ``steps`` is None; else ``steps`` holds
        (view index, column, None, feature) per feature-view label and (None, None, on-demand
        view, feature) per on-demand label (``columns`` and ``views`` None)."""
        hit = self._outputs.get(full_names)
        if hit is None:
            labels: list[str] = []
            steps: list[tuple] = []
            for ref in self.refs:
                labels.append(f"{ref.view}__{ref.feature}" if full_names or ref.feature in self.clash else ref.feature)
                if ref.view in self.repo.views:
                    steps.append((*self.position[(ref.view, ref.feature)], None, ref.feature))
                else:
                    steps.append((None, None, self.repo.odfvs[ref.view], ref.feature))
            if any(odfv is not None for _, _, odfv, _ in steps):
                hit = (labels, None, steps, None)
            else:
                hit = (labels, picker([c for _, c, _, _ in steps]), None, picker([v for v, _, _, _ in steps]))
            self._outputs[bool(full_names)] = hit
        return hit
