"""Feature statistics of one run, and drift against a reference run (pure: numpy and pandas only).

For a numeric (or bool) feature: count, null rate, mean, std, min, max, p1/p50/p90/p99 and a
``BUCKETS``-bucket histogram between min and max; for a string feature: count, null rate, distinct count
and the most frequent values; list and embedding features get count and null rate only.

Drift is the population stability index of the values against the reference run's buckets
(numeric: its histogram's edges, with two open buckets for values beyond them; string: its most
frequent values plus "other"): ``PSI = sum((p - q) * ln(p / q))`` over buckets, shares floored at
``PSI_FLOOR``.  ``drift_level`` names the usual thresholds: below 0.1 stable, below 0.25 moderate,
else significant."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["BUCKETS", "PSI_FLOOR", "TOP_VALUES", "column_stats", "drift_level", "psi"]

BUCKETS = 20
TOP_VALUES = 10
PSI_FLOOR = 1e-4
_PERCENTILES = (1, 50, 90, 99)


def _kind(values: pd.Series) -> str:
    present = values.dropna()
    if present.empty:
        return "numeric" if pd.api.types.is_numeric_dtype(values.dtype) else "empty"
    first = present.iloc[0]
    if isinstance(first, (list, tuple, np.ndarray)):
        return "list"
    if isinstance(first, str):
        return "string"
    if isinstance(first, (bool, np.bool_, int, float, np.integer, np.floating)):
        return "numeric"
    return "other"


def column_stats(values: pd.Series, reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """The statistics of one feature's values (one value per entity; None/NaN is null), with ``psi`` and
    ``drift`` against ``reference`` (an earlier result of this function) when given and comparable."""
    n = len(values)
    kind = _kind(values)
    nulls = int(values.isna().sum()) if kind != "list" else int(values.map(lambda v: v is None).sum())
    out: dict[str, Any] = {"kind": kind, "count": n, "nulls": nulls, "null_rate": nulls / n if n else None}
    if kind == "numeric":
        out.update(_numeric(pd.to_numeric(values, errors="coerce").astype(float).to_numpy()))
    elif kind == "string":
        counts = values.dropna().astype(str).value_counts()
        out["distinct"] = int(len(counts))
        out["top"] = [[str(k), int(v)] for k, v in counts.head(TOP_VALUES).items()]
    if reference is not None and reference.get("kind") == kind:
        value = psi(values, reference)
        if value is not None:
            out["psi"], out["drift"] = value, drift_level(value)
    return out


def _numeric(x: np.ndarray) -> dict[str, Any]:
    x = x[~np.isnan(x)]
    if x.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "histogram": None,
                **{f"p{p}": None for p in _PERCENTILES}}
    lo, hi = float(x.min()), float(x.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, BUCKETS + 1)
    counts, _ = np.histogram(x, edges)
    pct = np.percentile(x, _PERCENTILES)
    return {"mean": float(x.mean()), "std": float(x.std()), "min": lo, "max": hi,
            **{f"p{p}": float(v) for p, v in zip(_PERCENTILES, pct)},
            "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}}


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    shares = counts / total if total else np.zeros(len(counts))
    return np.maximum(shares, PSI_FLOOR)


def psi(values: pd.Series, reference: dict[str, Any]) -> float | None:
    """The PSI of ``values`` against the reference's buckets; None when either side has no value."""
    if reference.get("kind") == "numeric":
        hist = reference.get("histogram")
        x = pd.to_numeric(values, errors="coerce").astype(float).to_numpy()
        x = x[~np.isnan(x)]
        if not hist or x.size == 0:
            return None
        edges = np.asarray(hist["edges"], dtype=float)
        inner = np.asarray(hist["counts"], dtype=float)
        ref = np.concatenate([[0.0], inner, [0.0]])  # below the lowest edge, the buckets, above the highest
        where = np.searchsorted(edges, x, side="right")
        where[x == edges[-1]] = len(edges) - 1  # the top edge belongs to the last bucket, as in np.histogram
        cur = np.bincount(where, minlength=len(edges) + 1).astype(float)
    elif reference.get("kind") == "string":
        top = [k for k, _ in reference.get("top") or []]
        if not top:
            return None
        present = values.dropna().astype(str)
        if present.empty:
            return None
        ref_counts = dict(reference["top"])
        ref_other = max(0, reference["count"] - reference["nulls"] - sum(ref_counts.values()))
        ref = np.asarray([ref_counts[k] for k in top] + [ref_other], dtype=float)
        counts = present.value_counts()
        cur = np.asarray([counts.get(k, 0) for k in top] + [len(present) - sum(counts.get(k, 0) for k in top)],
                         dtype=float)
    else:
        return None
    p, q = _shares(cur), _shares(ref)
    value = float(np.sum((p - q) * np.log(p / q)))
    return 0.0 if math.isclose(value, 0.0, abs_tol=1e-12) else value


def drift_level(value: float) -> str:
    return "stable" if value < 0.1 else ("moderate" if value < 0.25 else "significant")
