"""Retry with exponential backoff, as a small object (after redis-py's Retry)."""

from __future__ import annotations

import logging
import random
import time
from typing import Callable, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Retry:
    """Call ``fn`` until it succeeds, sleeping ``base * 2**attempt`` (capped, jittered) between tries.

    ``should_stop()`` is checked between attempts: when it returns True the last
    error is raised (used for a bounded shutdown).  ``on_error(exc)`` runs after
    each failure, e.g. to drop caches or count the retry.
    """

    def __init__(self, errors: tuple[type[BaseException], ...], base: float = 0.1, cap: float = 5.0,
                 should_stop: Callable[[], bool] = lambda: False):
        self.errors = errors
        self.base = base
        self.cap = cap
        self.should_stop = should_stop

    def call(self, fn: Callable[[], T], on_error: Callable[[BaseException], None] = lambda e: None,
             wait: Callable[[float], None] = time.sleep) -> T:
        attempt = 0
        while True:
            try:
                return fn()
            except self.errors as exc:
                on_error(exc)
                if self.should_stop():
                    raise
                delay = min(self.cap, self.base * 2 ** attempt) * (0.5 + random.random() / 2)
                logger.warning("attempt %s failed (%s: %s); retrying in %.2f s", attempt + 1,
                               type(exc).__name__, exc, delay)
                wait(delay)
                attempt += 1
