"""The feature server (``featurestore serve``): online features over HTTP/JSON in Feast's request and
response shapes, read through the client's asyncio read path (docs/server.md)::

    from featurestore.server import ServerConfig, create_app
    app = create_app(store, ServerConfig(token="...", read_only=True))   # any ASGI server runs it

Modules: ``app`` (the endpoints), ``feast`` (Feast's shapes), ``online`` (the read endpoint), ``writes``
(push and materialize bodies), ``middleware`` (token, body limit, metrics, the hot endpoints, last-resort
500), ``errors``, ``metrics``, ``probes``, ``reload`` (the registry poll), ``registry_doc``, ``schemas``
(for /openapi.json), ``config``, ``jsonio``, ``runner`` (the uvicorn options of ``featurestore serve``
and the benchmark).
"""

from .app import ENDPOINTS, create_app
from .config import ServerConfig

__all__ = ["ENDPOINTS", "ServerConfig", "create_app"]
