"""What the client returns: ``OnlineResponse`` (online reads) and ``PushResult`` (push)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from .exceptions import InvalidInputError

@dataclass
class OnlineResponse:
    """Feature vectors for the requested entity rows, in request order."""

    columns: dict[str, list]
    statuses: dict[str, list[str]]
    event_times: dict[str, list[int | None]]

    def to_dict(self) -> dict[str, list]:
        """Feast-like: {column: [value per entity row]} (join keys included)."""
        return dict(self.columns)

    def to_df(self, statuses: bool = False, event_times: bool = False) -> pd.DataFrame:
        """One row per entity row; with ``statuses`` a ``<feature>__status`` column (present /
        missing / expired) and with ``event_times`` a ``<feature>__event_time`` column (epoch ms
        of the view's latest event, None for on-demand features and missing values) follow
        each feature column."""
        if not statuses and not event_times:
            return pd.DataFrame(self.columns)
        out: dict[str, list] = {}
        for name, values in self.columns.items():
            out[name] = values
            if name in self.statuses:
                if statuses:
                    out[f"{name}__status"] = self.statuses[name]
                if event_times:
                    out[f"{name}__event_time"] = pd.array(self.event_times[name], dtype="Int64")
        return pd.DataFrame(out)


@dataclass
class PushResult:
    """What ``push`` wrote: ``rows`` valid rows given; ``online_records`` (view, entity) states
    committed; ``offline_rows`` rows appended to the event log; ``refused``: rows the views'
    states refused (``row`` index label, ``reason`` late / duplicate_event_id, ``detail``), as
    the worker would dead-letter them; ``skipped_existing``: rows not appended to the event log
    because an event with the same (entity key, event id) is already there."""

    rows: int
    online_records: int = 0
    offline_rows: int = 0
    refused: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({"row": [], "reason": [], "detail": []}))
    skipped_existing: int = 0


@dataclass(frozen=True)
class FeatureRef:
    """One requested feature: ``view`` (a feature view or on-demand view) and ``feature``."""

    view: str
    feature: str

    @classmethod
    def parse(cls, text: str) -> "FeatureRef":
        view, sep, feature = text.partition(":")
        if not sep or not view or not feature:
            raise InvalidInputError(f"feature reference {text!r} must look like 'view:feature'")
        return cls(view, feature)
