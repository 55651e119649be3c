"""Expectations evaluated on a statistics run's values (pure: pandas only).

``checks_of(repo, view)`` lists the checks that apply to one view: its own, and those of every service
bound to that view's features.  ``evaluate`` runs them on the run's frame (one row per entity, a column per
feature by its plain name) and returns one result per check::

    {"check": "avg_amount_7d <= max_amount_7d", "kind": "relation", "features": [...],
     "declared_by": "view customer_stats" | "service fraud_detection", "description": "...",
     "rows": rows checked, "failed": rows failing, "ok": bool, "examples": up to 5 failing entity keys}
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from featurestore.definitions.expectations import Expectation

__all__ = ["EXAMPLES", "checks_of", "evaluate", "failed_checks", "failure_line"]

EXAMPLES = 5


def checks_of(repo: Any, view_name: str) -> list[tuple[str, Expectation]]:
    """``(declared_by, check)`` for every check on ``view_name``'s features, the view's first."""
    out: list[tuple[str, Expectation]] = [(f"view {view_name}", c) for c in repo.view(view_name).expectations]
    for name in sorted(repo.services):
        out += [(f"service {name}", c) for c in repo.services[name].expectations_of(view_name)]
    return out


def evaluate(checks: list[tuple[str, Expectation]], frame: pd.DataFrame, keys: list[Any]) -> list[dict[str, Any]]:
    """The result of each check on ``frame`` (``keys``: the entity key of each row, for examples)."""
    results = []
    index = pd.Index(keys) if len(keys) == len(frame) else pd.RangeIndex(len(frame))
    for declared_by, check in checks:
        bad = check.failing(frame).to_numpy(dtype=bool)
        failed = int(bad.sum())
        result: dict[str, Any] = {
            "check": check.describe(), "kind": check.kind, "features": list(check.features()),
            "declared_by": declared_by, "rows": check.checked(frame), "failed": failed, "ok": failed == 0,
            "examples": [_plain(k) for k in index[bad][:EXAMPLES]]}
        if check.description:
            result["description"] = check.description
        results.append(result)
    return results


def _plain(key: Any) -> Any:
    return key.item() if hasattr(key, "item") else key


def failed_checks(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in run.get("checks") or [] if not c["ok"]]


def failure_line(view: str, check: dict[str, Any]) -> str:
    """``"view spend: check 'max_7d in [0, 300]' (feature max_7d, declared by view spend): 7 of 25 rows
    failed, e.g. C003, C007"``."""
    features = ", ".join(check["features"])
    plural = "features" if len(check["features"]) > 1 else "feature"
    examples = ", ".join(str(k) for k in check["examples"])
    return (f"view {view}: check {check['check']!r} ({plural} {features}, declared by {check['declared_by']}): "
            f"{check['failed']:,} of {check['rows']:,} rows failed" + (f", e.g. {examples}" if examples else ""))
