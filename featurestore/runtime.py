"""Wiring for commands: resolved settings, the loaded repository, the stores and the view versions."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from .dev.stack import resolve_servers
from .exceptions import ConfigurationError
from .online import RedisOnlineStore, open_online_store
from .repo import Repository, load_repo
from .settings import Settings

def print_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


DEFAULT_REPO = Path(__file__).resolve().parent / "examples" / "repo.py"
PG_SCHEMA = "public"


@dataclass
class Runtime:
    """Everything a command needs; ``settings`` name real servers (embedded ones started if unset)."""

    settings: Settings
    repo: Repository

    @property
    def project(self) -> str:
        return self.settings.project

    @property
    def redis_url(self) -> str:
        return self.settings.redis_url.get_secret_value()

    @property
    def postgres_dsn(self) -> str:
        return self.settings.postgres_dsn.get_secret_value()

    def kafka_options(self) -> dict:
        return self.settings.kafka_client_options()

    def online(self) -> RedisOnlineStore:
        return open_online_store(self.redis_url, self.project, self.settings.redis_cluster)

    async def offline(self):
        from .offline.postgres import PostgresOfflineStore

        return await PostgresOfflineStore.create(self.postgres_dsn, self.project, PG_SCHEMA)

    async def registry(self, offline):
        from .registry import Registry

        return Registry(offline.pool, self.project, PG_SCHEMA)

    def versions(self) -> dict[str, int]:
        """The registered version of each view of the repository whose definition matches."""
        async def go():
            offline = await self.offline()
            try:
                registry = await self.registry(offline)
                return {name: await registry.version_of(name, view.fingerprint())
                        for name, view in self.repo.views.items()}
            finally:
                await offline.close()

        return asyncio.run(go())


def open_runtime(settings: Settings, repo_path: str | Path | None, say=print_stderr) -> Runtime:
    """The runtime of a command (``say``: where the notice of the embedded stack goes; None: a WARNING)."""
    return Runtime(resolve_servers(settings, say=say), load_repo(repo_file(repo_path)))


def repo_file(repo_path: str | Path | None) -> Path:
    """The repository a command reads: ``--repo``, else the bundled example; one wording when missing."""
    path = Path(repo_path) if repo_path else DEFAULT_REPO
    if not path.exists():
        hint = "check the path given to --repo" if repo_path else "pass --repo PATH"
        raise ConfigurationError(f"feature repository {path} does not exist ({hint})")
    return path
