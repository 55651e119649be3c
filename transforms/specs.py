"""Frozen descriptions of what to compute: one ``AggSpec`` per output feature.

The definitions layer (``featurestore.definitions``) compiles user-facing
features into these; the streaming state (``transforms.state``) and the batch
path (``transforms.batch``) both consume them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .windows import check_window, default_hop

#: Aggregations over an input column.  Nulls and NaN in the column are skipped.
COLUMN_FUNCTIONS = (
    "sum", "count", "mean", "min", "max", "first", "last", "last_n",
    "count_distinct", "var", "stddev",
)
#: Activity features: they read no column, only event times.
ACTIVITY_FUNCTIONS = ("count_events", "events_per_minute", "seconds_since_last")
FUNCTIONS = COLUMN_FUNCTIONS + ACTIVITY_FUNCTIONS

#: Functions that need numeric input (int, float or bool columns).
NUMERIC_FUNCTIONS = ("sum", "mean", "min", "max", "var", "stddev")

NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class AggSpec:
    """One windowed aggregation.

    ``window_ms=None`` means lifetime (all events so far).  ``hop_ms=None``
    takes ``default_hop(window_ms)``; ``hop_ms=1`` gives the exact sliding
    window.  ``n`` is the length for ``last_n``.
    """

    name: str
    function: str
    column: str | None = None
    window_ms: int | None = None
    hop_ms: int | None = None
    n: int = 0

    def __post_init__(self) -> None:
        where = f"aggregation {self.name!r}"
        if not isinstance(self.name, str) or not NAME_RE.match(self.name):
            raise ValueError(f"{where}: name must match {NAME_RE.pattern}")
        if self.function not in FUNCTIONS:
            raise ValueError(f"{where}: unknown function {self.function!r}; choose from {', '.join(FUNCTIONS)}")
        if self.function in COLUMN_FUNCTIONS and not self.column:
            raise ValueError(f"{where}: function {self.function!r} needs an input column")
        if self.function in ("events_per_minute",) and self.window_ms is None:
            raise ValueError(f"{where}: events_per_minute needs a window")
        if self.function == "last_n" and not (1 <= self.n <= 1000):
            raise ValueError(f"{where}: last_n needs n between 1 and 1000, got {self.n}")
        if self.window_ms is None:
            if self.hop_ms is not None:
                raise ValueError(f"{where}: a lifetime aggregation takes no hop")
        else:
            hop = default_hop(self.window_ms) if self.hop_ms is None else self.hop_ms
            try:
                check_window(self.window_ms, hop)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            object.__setattr__(self, "hop_ms", hop)

    @property
    def lifetime(self) -> bool:
        return self.window_ms is None
