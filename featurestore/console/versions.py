"""Registered versions of a definition and the difference between two of them, read from the registry."""

from __future__ import annotations

import difflib
import json
from typing import Any

from featurestore.exceptions import UnknownNameError

__all__ = ["definition_diff", "registered_versions", "version_diff"]


async def registered_versions(registry: Any, kind: str, name: str) -> list[dict[str, Any]]:
    """Every registered version of ``name`` of ``kind`` (version, fingerprint, created_at), oldest first;
    [] when it is not registered (not applied yet) or there is no registry."""
    if registry is None:
        return []
    try:
        described = await registry.describe(name, kind=kind)
    except UnknownNameError:
        return []
    return list(described["versions"])


def definition_diff(old: dict[str, Any], new: dict[str, Any], old_label: str, new_label: str) -> list[dict[str, str]]:
    """The unified diff of two definitions' JSON (keys sorted, one value a line): a list of
    ``{"kind": "add" | "del" | "hunk" | "ctx", "text"}`` lines; [] when they are equal."""
    a = json.dumps(old, indent=2, sort_keys=True, default=str).splitlines()
    b = json.dumps(new, indent=2, sort_keys=True, default=str).splitlines()
    out = []
    for line in difflib.unified_diff(a, b, old_label, new_label, n=3, lineterm=""):
        if line.startswith(("---", "+++")):
            continue
        kind = {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "ctx")
        out.append({"kind": kind, "text": line})
    return out


async def version_diff(registry: Any, kind: str, name: str, old: int, new: int) -> dict[str, Any]:
    """Both versions' definitions and their diff; ``UnknownNameError`` names the versions there are."""
    a = await registry.describe(name, kind=kind, version=old)
    b = await registry.describe(name, kind=kind, version=new)
    return {"old": old, "new": new, "old_created_at": a["created_at"], "new_created_at": b["created_at"],
            "lines": definition_diff(a["definition"], b["definition"], f"v{old}", f"v{new}")}
