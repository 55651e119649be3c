"""``repeat``: run an async action now and then every interval, at a fixed rate (a run that takes longer
than the interval is followed at once by the next; missed starts are skipped, not queued)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from featurestore.exceptions import FeatureStoreError

__all__ = ["FAILED_RUN", "repeat"]

logger = logging.getLogger(__name__)

#: the exit code of a run that raised ``FeatureStoreError``
FAILED_RUN = 2


async def repeat(action: Callable[[], Awaitable[int]], interval_s: float, runs: int | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> int:
    """Await ``action()`` (which returns an exit code) ``runs`` times (None: forever), starting one every
    ``interval_s`` seconds from the first start.  A run that raises ``FeatureStoreError`` (a server down,
    say) is logged and counts as ``FAILED_RUN``; the schedule goes on.  Returns the highest code."""
    if interval_s <= 0:
        raise ValueError(f"interval must be positive, got {interval_s} s")
    worst = 0
    start = clock()
    n = 0
    while runs is None or n < runs:
        try:
            worst = max(worst, await action())
        except FeatureStoreError as exc:
            logger.error("scheduled run %d failed: %s", n + 1, exc)
            worst = max(worst, FAILED_RUN)
        n += 1
        if runs is not None and n >= runs:
            break
        elapsed = clock() - start
        ticks = int(elapsed // interval_s) + 1  # the next start not yet passed
        await sleep(max(0.0, start + ticks * interval_s - clock()))
    return worst
