"""A running server follows ``featurestore apply``: every ``ServerConfig.registry_poll_s`` seconds it
reloads the repository when one of its files changed, looks up in the registry the version of each
view whose definition matches, and from the next request on serves what changed (a view applied or
given a new version, a new feature, view or service), without a restart.

A poll that fails (PostgreSQL down, a repository file that does not load) is logged and changes
nothing: the server goes on serving what it served, and the next poll tries again."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Awaitable, Callable

from featurestore.client import FeatureStore
from featurestore.exceptions import ConfigurationError, RegistryError
from featurestore.repo import Repository, load_repo

__all__ = ["RegistryWatch"]

logger = logging.getLogger(__name__)


def _signature(path: Path | None) -> tuple:
    """(name, modification time, size) of each file of the repository at ``path`` (a file or a folder)."""
    if path is None:
        return ()
    files = [path] if path.is_file() else sorted(path.glob("*.py"))
    out = []
    for file in files:
        try:
            stat = file.stat()
        except OSError:
            continue
        out.append((file.name, stat.st_mtime_ns, stat.st_size))
    return tuple(out)


class RegistryWatch:
    """Keeps ``store`` on the registry's versions of its repository's definitions.

    ``changed()`` is awaited after each change, once the store reads the new versions: the server
    drops what it derived from the old repository and compiles the new read plans."""

    def __init__(self, store: FeatureStore, interval_s: float, changed: Callable[[], Awaitable[None]]) -> None:
        self.store, self.interval_s, self.changed = store, interval_s, changed
        self._signature = _signature(store.repo.path)
        self._failing = False

    async def run(self) -> None:
        """Poll until cancelled (the server's shutdown)."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged once per failing streak; the server serves on
                if not self._failing:
                    logger.warning("registry poll failed (serving the versions of the last poll until it "
                                   "succeeds): %s: %s", type(exc).__name__, exc)
                self._failing = True
            else:
                if self._failing:
                    logger.info("registry poll succeeds again")
                self._failing = False

    async def refresh(self) -> bool:
        """One poll; True when the store now serves other versions or definitions."""
        store = self.store
        repo = store.repo
        signature = _signature(repo.path)
        if signature != self._signature and repo.path is not None:
            self._signature = signature  # a file that does not load is tried again at its next change
            repo = await asyncio.to_thread(load_repo, repo.path)
            logger.info("repository %s reloaded: %d views, %d services", repo.path, len(repo.views),
                        len(repo.services))
        versions = await _registered_versions(store, repo)
        if repo is store.repo and versions == store.versions:
            return False
        for name in sorted(set(versions) | set(store.versions)):
            old, new = store.versions.get(name), versions.get(name)
            if old != new:
                logger.info("view %s: serving %s (was %s)", name, f"v{new}" if new else "nothing (not applied)",
                            f"v{old}" if old else "not applied")
        store.use_versions(versions, repo)
        await self.changed()
        return True


async def _registered_versions(store: FeatureStore, repo: Repository) -> dict[str, int]:
    """The registered version of each view of ``repo`` whose definition matches (as
    ``FeatureStore.aresolve_versions``); the store's own versions when it has no registry."""
    try:
        _, registry = await store.astores()
    except ConfigurationError:
        registry = None
    if registry is None:
        return store.versions
    versions = {}
    for name, view in repo.views.items():
        try:
            versions[name] = await registry.version_of(name, view.fingerprint())
        except RegistryError:
            continue
    return versions
