"""The public API is importable from the package root, as Feast users type it."""

from __future__ import annotations

import subprocess
import sys


def test_root_exports():
    import featurestore
    from featurestore import Entity, FeatureStore, FeatureStoreError, FeatureView
    from featurestore.client import FeatureStore as ClientFeatureStore
    from featurestore.definitions import Entity as DefinitionEntity

    assert FeatureStore is ClientFeatureStore and Entity is DefinitionEntity and FeatureView.__name__ == "FeatureView"
    assert set(featurestore.__all__) <= set(dir(featurestore)) | {"FeatureStore"}
    for name in featurestore.__all__:
        assert getattr(featurestore, name) is not None
    assert issubclass(featurestore.RecoveryError, FeatureStoreError)


def test_import_is_light():
    """``import featurestore`` does not load the client (pandas, redis, asyncpg) until it is used."""
    code = "import sys, featurestore; print('featurestore.client' in sys.modules, 'asyncpg' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
