"""Point-in-time correct training data: ``get_historical_features``.

For each entity row ``(key, t)`` and each requested feature view the value is exactly
what ``ViewState(view.agg_specs(), lateness_ms=source.allowed_lateness)`` returns from
``evaluate(t)`` after being fed, in arrival order ``(partition, offset)``, the entity's
logged events with event time ``<= t`` (BatchTransform columns ``__bt_<name>`` derived
first).  That is the parity contract with the online store.

How: per view ONE ``load_events`` for the distinct keys up to ``max(t)``, then one
``transforms.compute_batch`` with the entity rows as queries.  ``compute_batch`` decides
acceptance (late / duplicate id) over all loaded events, while "fed the events <= t"
decides it over the events ``<= t`` only.  The two differ only for a query ``t`` with
``e.ts <= t < P(e)`` for some event ``e`` rejected in the batch, where ``P(e)`` is the
largest event time of the entity's events that arrived before ``e`` (at ``t >= P(e)``
every earlier event is visible, so the verdict is the same).  Those few queries are
recomputed exactly from the entity's events ``<= t``.

TTL and missing entities: when the entity has no accepted event ``<= t``, or the latest
one is older than ``t - ttl`` (strictly), the view's values are missing and every
feature of the view takes its ``default`` (None when it has none).

Nulls in the result: float64 features are ``float64`` columns with NaN for null
(empty ``mean``/``min``/..., no default); int64 features are ``int64`` columns, or
pandas ``Int64`` with ``<NA>`` when some value is missing without a default; every
other type (string, bool, timestamp as epoch ms, lists, embeddings) is an ``object``
column with ``None`` for null.  On-demand outputs are typed by ``coerce_column``.

The parts, one job each:

* ``labels.py`` — the entity rows and feature references as given: references, timestamps, keys;
* ``point_in_time.py`` — one view's values as of each entity row (``compute_view``);
* ``columns.py`` — those values as typed result columns, defaults where missing;
* ``on_demand.py`` — on-demand views over the joined columns;
* ``training_set.py`` — ``get_historical_features``: loads, joins and assembles the result.
"""

from .labels import EVENT_TIMESTAMP, parse_refs, to_epoch_ms
from .point_in_time import compute_view as compute_view
from .training_set import get_historical_features

__all__ = ["EVENT_TIMESTAMP", "get_historical_features", "parse_refs", "to_epoch_ms"]
