"""Search across the catalog: names, descriptions, owners and tags of every definition, and the names and
descriptions of features.  Case-insensitive substring matches; each hit says what matched."""

from __future__ import annotations

from typing import Any

from featurestore.repo import Repository

from .catalog import KINDS, table_of

__all__ = ["MAX_QUERY", "search"]

#: longest query read (longer ones are cut): a page of results needs no more
MAX_QUERY = 200


def search(repo: Repository, query: str, base: str = "") -> list[dict[str, Any]]:
    """Hits for ``query``: ``{"kind", "name", "feature", "matched", "text", "url"}``, definitions first
    (in the order of ``KINDS``), then features; [] for an empty query."""
    q = query.strip().lower()[:MAX_QUERY]
    if not q:
        return []
    hits: list[dict[str, Any]] = []
    for kind, (part, _, _) in KINDS.items():
        for name, obj in sorted(table_of(repo, kind).items()):
            url = f"{base}/{part}/{name}"
            for matched, text in _texts(obj):
                if q in text.lower():
                    hits.append({"kind": kind, "name": name, "feature": None, "matched": matched, "text": text,
                                 "url": url})
                    break
    for vname, view in sorted(repo.views.items()):
        for f in view.features:
            for matched, text in (("feature", f.name), ("feature description", getattr(f, "description", "") or "")):
                if text and q in text.lower():
                    hits.append({"kind": "feature", "name": vname, "feature": f.name, "matched": matched,
                                 "text": text, "url": f"{base}/views/{vname}#feature-{f.name}"})
                    break
    for oname, odfv in sorted(repo.odfvs.items()):
        for fname in odfv.schema:
            if q in fname.lower():
                hits.append({"kind": "feature", "name": oname, "feature": fname, "matched": "feature", "text": fname,
                             "url": f"{base}/on-demand/{oname}"})
    return hits


def _texts(obj: Any) -> list[tuple[str, str]]:
    out = [("name", obj.name), ("description", getattr(obj, "description", "") or ""),
           ("owner", getattr(obj, "owner", "") or "")]
    for key, value in sorted((getattr(obj, "tags", {}) or {}).items()):
        out.append(("tag", f"{key}={value}"))
    return [(m, t) for m, t in out if t]
