"""``/registry``: what this server serves, as JSON: the repository's entities, sources, feature views
(with the version served and every registered version), on-demand views and services.

Built from the definitions (the registry's JSON of each object) and the registry's versions; it
holds no setting of the servers, so no secret."""

from __future__ import annotations

from featurestore.client import FeatureStore
from featurestore.exceptions import ConfigurationError

__all__ = ["registry_document"]


async def registry_document(store: FeatureStore) -> dict:
    repo = store.repo
    try:
        _, registry = await store.astores()
    except ConfigurationError:
        registry = None
    views = []
    for name, view in sorted(repo.views.items()):
        doc = view.to_json()
        doc["served_version"] = store.versions.get(name)
        doc["registered_versions"] = await registry.versions(name) if registry is not None else []
        views.append(doc)
    return {
        "project": store.project,
        "entities": [e.model_dump(mode="json") for _, e in sorted(repo.entities.items())],
        "sources": [s.to_json() for _, s in sorted(repo.sources.items())],
        "feature_views": views,
        "on_demand_feature_views": [o.to_json() for _, o in sorted(repo.odfvs.items())],
        "feature_services": [s.to_json() for _, s in sorted(repo.services.items())],
    }
