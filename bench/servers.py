"""Servers for the benchmarks: the configured ones, or an embedded stack started here and stopped at exit."""

from __future__ import annotations

import atexit
import tempfile

from featurestore.dev.stack import EmbeddedStack, resolve_servers
from featurestore.settings import Settings


def bench_settings() -> Settings:
    """Settings naming real servers; an embedded stack started for this run is stopped when the process exits."""
    settings = Settings()
    if not settings.uses_embedded():
        return settings
    state_dir = tempfile.mkdtemp(prefix="fsbench-")
    atexit.register(EmbeddedStack(state_dir).down)
    return resolve_servers(settings.model_copy(update={"state_dir": state_dir}))
