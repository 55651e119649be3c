"""Partial aggregates, how they merge, and how they become feature values.

These are the only definitions of the aggregation algebra.  The streaming
state (``transforms.state``) keeps partials per tile and merges them when it
evaluates; the batch path (``transforms.batch``) builds the same partials
vectorized and merges ranges of them.  Every function here works elementwise
on Python scalars and on numpy arrays alike, so both paths call the same code.

Partial of one tile (or of any range of events) for one input column:

=========  ===========================================================
n_events   events in the range (null values included)
count      non-null values
total      sum of the non-null values
mean, m2   running mean and sum of squared deviations (Welford / Chan)
lo, hi     min and max of the non-null values
=========  ===========================================================

first/last, last_n and count_distinct are positional or set-valued and are
kept beside the partial (see ``transforms.state``).
"""

from __future__ import annotations

import math

import numpy as np

#: Functions whose empty value is a number rather than null.
EMPTY_VALUES = {"sum": 0.0, "count": 0, "count_events": 0, "count_distinct": 0, "events_per_minute": 0.0}


def merge_moments(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan et al. pairwise merge of (count, mean, M2): numerically stable.

    Works on scalars and on numpy arrays; a side with count 0 is the identity.
    """
    n = n_a + n_b
    if isinstance(n, np.ndarray):
        safe = np.where(n == 0, 1, n)
        delta = mean_b - mean_a
        mean = mean_a + delta * (n_b / safe)
        m2 = m2_a + m2_b + delta * delta * (n_a * n_b / safe)
        return n, np.where(n == 0, 0.0, mean), np.where(n == 0, 0.0, m2)
    if n_b == 0:
        return n_a, mean_a, m2_a
    if n_a == 0:
        return n_b, mean_b, m2_b
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n


def sample_variance(count, m2):
    """Sample variance (n - 1); None (scalar) or NaN (array) with fewer than 2 values."""
    if isinstance(count, np.ndarray):
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.maximum(m2, 0.0) / (count - 1)
        return np.where(count >= 2, var, np.nan)
    if count < 2:
        return None
    return max(m2, 0.0) / (count - 1)


def finalize(function: str, *, n_events, count, total, mean, m2, lo, hi, window_ms):
    """Feature value of ``function`` from a merged partial.

    Scalars give Python values with ``None`` for null; arrays give float
    arrays with NaN for null (the batch path turns NaN into null at the end).
    """
    is_array = isinstance(count, np.ndarray) or isinstance(n_events, np.ndarray)
    if function == "count_events":
        return n_events
    if function == "events_per_minute":
        return n_events / (window_ms / 60_000)
    if function == "count":
        return count
    if function == "sum":
        return total
    if function == "mean":
        if is_array:
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(count > 0, total / np.where(count > 0, count, 1), np.nan)
        return total / count if count else None
    if function in ("min", "max"):
        value = lo if function == "min" else hi
        if is_array:
            return np.where(count > 0, value, np.nan)
        return value if count else None
    if function in ("var", "stddev"):
        var = sample_variance(count, m2)
        if function == "var":
            return var
        if is_array:
            return np.sqrt(var)
        return None if var is None else math.sqrt(var)
    raise ValueError(f"finalize does not handle {function!r}")


def is_null(value) -> bool:
    """True for None and float NaN: the values every column aggregation skips."""
    return value is None or (isinstance(value, float) and value != value)
