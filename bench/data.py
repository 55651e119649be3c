"""Synthetic event histories shared by the benchmarks (deterministic by seed)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from transforms import DAY, HOUR, AggSpec

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms


def make_events(n_events: int, n_entities: int, days: int = 30, seed: int = 7) -> pd.DataFrame:
    """Events in arrival (= time) order: key (int64), ts (ms), amount (float64).

    Entity activity is skewed (Zipf-like) as in real traffic.
    """
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_entities + 1) ** 0.8
    keys = rng.choice(n_entities, size=n_events, p=weights / weights.sum())
    ts = np.sort(rng.integers(T0, T0 + days * DAY, size=n_events))
    amount = np.round(rng.lognormal(3.5, 1.0, size=n_events), 2)
    return pd.DataFrame({"key": keys.astype("int64"), "ts": ts.astype("int64"), "amount": amount})


def window_specs(functions=("sum", "count", "mean", "min", "max"),
                 windows=((HOUR, "1h"), (24 * HOUR, "24h"), (7 * DAY, "7d")), hop_ms=None):
    return [AggSpec(f"amount_{f}_{label}", f, "amount", window_ms=w, hop_ms=hop_ms)
            for w, label in windows for f in functions]
