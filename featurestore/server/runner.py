"""How the feature server runs on uvicorn: the same options for ``featurestore serve`` and for the
benchmark, so what is measured is what is deployed."""

from __future__ import annotations

from typing import Any

__all__ = ["uvicorn_options"]


def uvicorn_options(host: str = "127.0.0.1", port: int = 6566, *, ssl_certfile: str | None = None,
                    ssl_keyfile: str | None = None, access_log: bool = False) -> dict[str, Any]:
    """Keyword arguments of ``uvicorn.Config`` (or ``uvicorn.run``): uvloop's event loop, httptools'
    HTTP parser, no ``server`` header, our logging (uvicorn's loggers log through the root handler,
    with its secret filter), TLS when both files are given, 10 s for requests in flight at shutdown."""
    return {"host": host, "port": port, "loop": "uvloop", "http": "httptools", "lifespan": "on",
            "log_config": None, "access_log": access_log, "server_header": False, "ssl_certfile": ssl_certfile,
            "ssl_keyfile": ssl_keyfile, "timeout_graceful_shutdown": 10}
