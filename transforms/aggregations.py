"""Partial aggregates, how they merge, and how they become feature values.

This states the aggregation algebra for scalars and numpy arrays.  The streaming
engine (``transforms.engine``) keeps partials per tile and merges them when it
evaluates, with the scalar merges of ``transforms.engine.algebra`` (compiled; the
scalar branch here calls the same functions); the batch path (``transforms.batch``)
builds the same partials vectorized and merges ranges of them with the array branch.

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

from .engine.algebra import merge_m2, merge_mean

#: Functions whose empty value is a number rather than null.
EMPTY_VALUES = {"sum": 0.0, "count": 0, "count_events": 0, "count_distinct": 0, "events_per_minute": 0.0}


# The scalar merges are the compiled engine's (``transforms.engine.algebra``), called as plain Python here.
_merge_mean = getattr(merge_mean, "py_func", merge_mean)
_merge_m2 = getattr(merge_m2, "py_func", merge_m2)


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
    return n, _merge_mean(n_a, mean_a, n_b, mean_b), _merge_m2(n_a, mean_a, m2_a, n_b, mean_b, m2_b)


def sample_variance(count, m2):
    """Sample variance (n - 1); None (scalar) or NaN (array) with fewer than 2 values."""
    if isinstance(count, np.ndarray):
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.maximum(m2, 0.0) / (count - 1)
        return np.where(count >= 2, var, np.nan)
    if count < 2:
        return None
    return max(m2, 0.0) / (count - 1)


def scalar_stddev(count, m2):
    var = sample_variance(count, m2)
    return None if var is None else math.sqrt(var)


#: The value of each function from a merged scalar partial, as a Python expression over
#: ``{n}`` n_events, ``{c}`` count, ``{s}`` total, ``{mu}`` mean, ``{q}`` m2, ``{lo}``, ``{hi}``
#: and ``{w}`` window_ms.  ``finalize`` compiles these for scalars, and the streaming kernels
#: (``transforms.kernels``) write them inline: one definition, no call per feature.
SCALAR_FINAL = {
    "count_events": "{n}",
    "events_per_minute": "{n} / ({w} / 60000)",
    "count": "{c}",
    "sum": "{s}",
    "mean": "({s} / {c} if {c} else None)",
    "min": "({lo} if {c} else None)",
    "max": "({hi} if {c} else None)",
    "var": "sample_variance({c}, {q})",
    "stddev": "scalar_stddev({c}, {q})",
}
#: Names the expressions of ``SCALAR_FINAL`` call.
SCALAR_NAMESPACE = {"sample_variance": sample_variance, "scalar_stddev": scalar_stddev}
_SCALAR = {fn: eval("lambda n, c, s, mu, q, lo, hi, w: " + expr.format(n="n", c="c", s="s", mu="mu", q="q",  # noqa: S307
                                                                       lo="lo", hi="hi", w="w"), dict(SCALAR_NAMESPACE))
           for fn, expr in SCALAR_FINAL.items()}


def finalize(function: str, *, n_events, count, total, mean, m2, lo, hi, window_ms):
    """Feature value of ``function`` from a merged partial.

    Scalars give Python values with ``None`` for null (``SCALAR_FINAL``); arrays give float
    arrays with NaN for null (the batch path turns NaN into null at the end).
    """
    is_array = isinstance(count, np.ndarray) or isinstance(n_events, np.ndarray)
    if not is_array:
        scalar = _SCALAR.get(function)
        if scalar is None:
            raise ValueError(f"finalize does not handle {function!r}")
        return scalar(n_events, count, total, mean, m2, lo, hi, window_ms)
    if function == "count_events":
        return n_events
    if function == "events_per_minute":
        return n_events / (window_ms / 60_000)
    if function == "count":
        return count
    if function == "sum":
        return total
    if function == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.where(count > 0, count, 1), np.nan)
    if function in ("min", "max"):
        return np.where(count > 0, lo if function == "min" else hi, np.nan)
    if function in ("var", "stddev"):
        var = sample_variance(count, m2)
        return var if function == "var" else np.sqrt(var)
    raise ValueError(f"finalize does not handle {function!r}")


def is_null(value) -> bool:
    """True for None and float NaN: the values every column aggregation skips."""
    return value is None or (isinstance(value, float) and value != value)
