"""The request of a training set as given: feature references, the label timestamps and the
entity keys of each row, checked and normalized."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..definitions import FeatureView
from ..exceptions import InvalidInputError, UnknownNameError
from ..repo import Repository

__all__ = ["EVENT_TIMESTAMP", "entity_keys", "parse_refs", "to_epoch_ms"]

EVENT_TIMESTAMP = "event_timestamp"


def parse_refs(repo: Repository, refs: Iterable[Any]) -> list[tuple[str, str]]:
    """Normalize feature references to ``(view or ODFV name, feature)`` pairs, in order, once
    each.  Accepted: ``(name, feature)`` pairs, ``"name:feature"`` / ``"name__feature"``
    strings, or a bare view/ODFV name (all its features)."""
    out: list[tuple[str, str]] = []
    for ref in refs:
        owner, feature = _split_ref(repo, ref)
        names = _feature_names(repo, owner)
        if feature is not None and feature not in names:
            raise UnknownNameError(f"{owner!r} has no feature {feature!r} (features: {', '.join(names)})")
        for name in names if feature is None else [feature]:
            if (owner, name) not in out:
                out.append((owner, name))
    if not out:
        raise InvalidInputError("no features requested")
    return out


def _split_ref(repo: Repository, ref: Any) -> tuple[str, str | None]:
    """``(owner, feature)`` of one reference; feature None for a bare name (all its features)."""
    if isinstance(ref, (tuple, list)) and len(ref) == 2:
        return str(ref[0]), str(ref[1])
    if not isinstance(ref, str):
        raise InvalidInputError(f"feature reference {ref!r} is not a (view, feature) pair or a name")
    if ":" in ref:
        owner, feature = ref.split(":", 1)
        return owner, feature
    if ref in repo.views or ref in repo.odfvs:
        return ref, None
    if "__" in ref:
        owner, feature = ref.split("__", 1)
        return owner, feature
    return ref, None


def _feature_names(repo: Repository, owner: str) -> list[str]:
    """The features of view or on-demand view ``owner``; ``UnknownNameError`` naming the known ones."""
    if owner in repo.views:
        return list(repo.views[owner].feature_names)
    if owner in repo.odfvs:
        return list(repo.odfvs[owner].feature_names)
    known = sorted(repo.views) + sorted(repo.odfvs)
    raise UnknownNameError(f"unknown feature view {owner!r} (known: {', '.join(known) or 'none'})")


def to_epoch_ms(values: pd.Series, column: str = EVENT_TIMESTAMP) -> np.ndarray:
    """A timestamp column (datetime64, tz-aware or naive = UTC; int epoch ms; ISO strings)
    as int64 epoch ms; ``InvalidInputError`` on nulls or unparseable values."""
    s = values
    if s.isna().any():
        rows = list(s.index[s.isna().to_numpy()][:5])
        raise InvalidInputError(f"column {column!r} has null timestamps (rows {rows})")
    kind = s.dtype.kind if isinstance(s.dtype, np.dtype) else None
    if kind in ("i", "u") or (pd.api.types.is_integer_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)):
        return s.to_numpy(dtype="int64")
    if kind == "M" or isinstance(s.dtype, pd.DatetimeTZDtype):
        dt = pd.to_datetime(s, utc=True)
    elif kind == "f":
        arr = s.to_numpy(dtype="float64")
        if not np.all(arr == np.floor(arr)):
            raise InvalidInputError(f"column {column!r}: float timestamps are ambiguous; use int epoch ms or datetimes")
        return arr.astype("int64")
    else:
        try:
            dt = pd.to_datetime(s, utc=True, format="ISO8601")
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(
                f"column {column!r}: expected datetimes, epoch-ms ints or ISO-8601 strings ({exc})"
            ) from None
    return dt.dt.as_unit("ms").astype("int64").to_numpy()


def entity_keys(entity_df: pd.DataFrame, view: FeatureView) -> pd.Series:
    """The join key column as entity keys (object str / int64-or-object ints), nulls as None."""
    col = view.entity.join_key
    s = entity_df[col]
    null = s.isna().to_numpy()
    if view.entity.key_type == "int64":
        return _int_keys(s, null, view)
    vals = s.astype(object).to_numpy()
    bad = [v for v in vals[~null][:1000] if not isinstance(v, str)]
    if bad:
        raise InvalidInputError(f"column {col!r}: entity {view.entity.name!r} has string keys, "
                                f"got {type(bad[0]).__name__} {bad[0]!r}")
    return pd.Series(np.where(null, None, vals), index=s.index, dtype=object)


def _int_keys(s: pd.Series, null: np.ndarray, view: FeatureView) -> pd.Series:
    """``entity_keys`` of an entity with int64 keys: int64, or object ints with None where null."""
    if pd.api.types.is_integer_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return s.astype(object).where(~null, None) if null.any() else s.astype("int64")
    vals = s.to_numpy(dtype=object)
    out = np.full(len(s), None, dtype=object)
    for i in np.flatnonzero(~null):
        v = vals[i]
        if isinstance(v, (bool, np.bool_)) or not (isinstance(v, (int, np.integer))
                                                   or (isinstance(v, float) and v == int(v))):
            raise InvalidInputError(f"column {view.entity.join_key!r}: entity {view.entity.name!r} has int64 keys, "
                                    f"got {type(v).__name__} {v!r}")
        out[i] = int(v)
    return (pd.Series(out, index=s.index, dtype=object) if null.any()
            else pd.Series(out, index=s.index).astype("int64"))
