"""What a feature server is told: its token, whether it writes, and the limits of one request."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ServerConfig"]


@dataclass(frozen=True)
class ServerConfig:
    """Options of one feature server app (``featurestore.server.create_app``).

    ``token``: the bearer token every endpoint but the probes (``/healthz``, ``/health``, ``/readyz``)
    requires (None: no token asked for).  ``read_only``: ``/push`` and ``/materialize`` answer 403.
    ``max_entities``: most entity rows of one ``/get-online-features`` request; ``max_body_bytes``:
    largest request body read (larger ones get 413 before the app reads them).  ``retry_after_s``: the
    ``Retry-After`` of a 503 (a store outage).  ``secrets``: strings never to show in an error body
    (the stores' passwords, the token).  ``metrics_dir``: the folder of prometheus_client's
    multiprocess mode, when several worker processes serve one port and ``/metrics`` adds up all of
    them.  ``gc_threshold``: Python's collector thresholds while serving, with what startup allocated
    frozen out of every collection (None: Python's own, nothing frozen), as the worker does: full
    collections scanning the imported modules' objects held requests up.  ``registry_poll_s``: seconds
    between two looks at the registry and the repository's files, to serve what ``featurestore apply``
    changed without a restart (0: never; ``featurestore.server.reload``).
    """

    token: str | None = field(default=None, repr=False)
    read_only: bool = False
    max_entities: int = 1000
    max_body_bytes: int = 1_048_576
    retry_after_s: int = 1
    secrets: tuple[str, ...] = field(default=(), repr=False)
    metrics_dir: str | None = None
    gc_threshold: tuple[int, int, int] | None = (50_000, 20, 100)
    registry_poll_s: float = 5.0
