"""Window arithmetic of ``transforms.windows``: the default hops the README promises."""

from __future__ import annotations

import pytest

from transforms import DAY, HOUR, MINUTE, AggSpec, default_hop

# The README's "Window semantics": 1 h -> 1 min, 24 h -> 15 min, 7 d -> 3 h, 30 d -> 12 h, 90 d -> 1 d.
README_HOPS = [
    ("1h", HOUR, MINUTE),
    ("24h", 24 * HOUR, 15 * MINUTE),
    ("7d", 7 * DAY, 3 * HOUR),
    ("30d", 30 * DAY, 12 * HOUR),
    ("90d", 90 * DAY, DAY),
]


@pytest.mark.parametrize(("window", "hop"), [(w, h) for _, w, h in README_HOPS], ids=[t for t, _, _ in README_HOPS])
def test_default_hop_of_the_readme(window, hop):
    assert default_hop(window) == hop
    assert AggSpec("f", "sum", "x", window_ms=window).hop_ms == hop  # a spec without a hop takes it
