"""The web console (``featurestore ui``, and ``/ui`` of ``featurestore serve``): catalog, lineage, search,
monitoring, usage and cost pages rendered on the server; docs/console.md.

The names below are imported on first use, so the client can use ``featurestore.console.usage`` (its read
counter) without loading the web framework and the templates."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Console", "create_console_app", "lineage_graph", "mount_console"]

_WHERE = {"Console": ".app", "create_console_app": ".app", "mount_console": ".app", "lineage_graph": ".lineage"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)
