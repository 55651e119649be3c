"""The scalar algebra of partials in compilable form: what one tile merge and one final value do.

``transforms.aggregations`` states the algebra for scalars and numpy arrays; these are its
scalar cases written in the subset numba compiles, so that the streaming kernels, the online
reader and ``aggregations.merge_moments`` run one definition.  ``n`` are counts of non-null
values, ``mean`` / ``m2`` the running mean and sum of squared deviations (Chan et al.).
"""

from __future__ import annotations

import math

from .jit import njit


@njit
def merge_mean(n_a, mean_a, n_b, mean_b):
    """Mean of two merged partials (both counts positive)."""
    return mean_a + (mean_b - mean_a) * n_b / (n_a + n_b)


@njit
def merge_m2(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """M2 of two merged partials (both counts positive)."""
    delta = mean_b - mean_a
    return m2_a + m2_b + delta * delta * n_a * n_b / (n_a + n_b)


@njit
def sample_variance_or_nan(n, m2):
    """Sample variance (n - 1); NaN with fewer than two values."""
    if n < 2:
        return math.nan
    return max(m2, 0.0) / (n - 1)
