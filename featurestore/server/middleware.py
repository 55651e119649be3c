"""The ASGI layer in front of the app: the bearer token, the body size limit, the metrics of every
answer, and a JSON 500 for anything the app let through, so no request takes the server down.

Plain ASGI (no per-request objects beyond a closure): it runs on every request, the probes included.
The hot endpoints (``/get-online-features`` and the liveness probes) are answered here, by
``FastRoute`` handlers, without FastAPI's routing and request objects; the app behind still declares
them, for ``/docs`` and ``/openapi.json``."""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any, Awaitable, Callable

from .config import ServerConfig
from .errors import describe, error_body
from .metrics import ServerMetrics

__all__ = ["PROBES", "FastRoute", "ServerGuard"]

logger = logging.getLogger(__name__)

#: answered without the token (a load balancer or orchestrator asks them)
PROBES = frozenset({"/healthz", "/health", "/readyz"})
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
#: ``(body, request state) -> (status, JSON body)``: an endpoint answered by the guard itself
FastRoute = Callable[[bytes, dict], Awaitable[tuple[int, bytes]]]
#: ``(exception, request method, path, request state) -> (status, JSON body, headers)``: the app's error answer
OnError = Callable[[Exception, str, str, dict], tuple[int, bytes, dict[str, str]]]
_JSON = (b"content-type", b"application/json")


class ServerGuard:
    """Wraps ``app``: checks the token and the body size, records metrics, answers what escapes the app.

    ``endpoints``: the paths reported as themselves in the metrics (others are ``other``).  The app
    puts the service label and the error code of an answer in the request state (``fs_service``,
    ``fs_error``).  ``fast``: ``(method, path) -> FastRoute`` answered here; their errors (the
    ``handled`` classes) are answered by ``on_error``, as the app answers its own."""

    def __init__(self, app, config: ServerConfig, metrics: ServerMetrics, endpoints: frozenset[str],
                 fast: dict[tuple[str, str], FastRoute] | None = None, on_error: OnError | None = None,
                 handled: tuple[type[Exception], ...] = ()) -> None:
        self.app, self.config, self.metrics, self.endpoints = app, config, metrics, endpoints
        self.fast, self.on_error, self.handled = fast or {}, on_error, handled
        self._expected = config.token.encode() if config.token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        state = scope.setdefault("state", {})
        status = [0]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                await _answer(send_status, state, *refusal)
            else:
                body = await self._read_body(scope, receive)
                if body is None:
                    size = self.config.max_body_bytes
                    await _answer(send_status, state, 413, "body_too_large",
                                  f"the request body is larger than {size} bytes (FEATURESTORE_SERVER_MAX_BODY_BYTES)")
                else:
                    route = self.fast.get((scope["method"], path))
                    if route is None:
                        await self.app(scope, _replay(body, receive), send_status)
                    else:
                        await self._answer_fast(route, body, scope, state, send_status)
        except Exception as exc:  # noqa: BLE001 - answered as a 500 and logged; the server goes on
            logger.exception("%s %s failed", scope.get("method"), path)
            if status[0] == 0:
                code_status, code, message, _, headers = describe(exc, self.config.retry_after_s)
                await _answer(send_status, state, code_status, code, message, headers)
        finally:
            endpoint = path if path in self.endpoints else "other"
            self.metrics.observe(endpoint, state.get("fs_service", "-"), status[0] or 500,
                                 time.perf_counter() - started, state.get("fs_error"))

    async def _answer_fast(self, route: FastRoute, body: bytes, scope: Scope, state: dict, send: Send) -> None:
        headers: dict[str, str] = {}
        try:
            status, payload = await route(body, state)
        except self.handled as exc:
            assert self.on_error is not None
            status, payload, headers = self.on_error(exc, scope["method"], scope["path"], state)
        raw = [_JSON, (b"content-length", b"%d" % len(payload))]
        raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})

    def _refusal(self, scope: Scope, path: str) -> tuple[int, str, str, dict[str, str]] | None:
        """(status, code, message, headers) when the request is refused before the app sees it."""
        if self._expected is not None and path not in PROBES:
            given = _header(scope, b"authorization")
            scheme, _, token = (given or b"").partition(b" ")
            if given is None or scheme.lower() != b"bearer":
                return 401, "unauthorized", ("this server requires a bearer token: send the header "
                                             "'Authorization: Bearer <FEATURESTORE_SERVER_TOKEN>'"), _CHALLENGE
            if not hmac.compare_digest(token.strip(), self._expected):
                return 401, "unauthorized", "the bearer token is not this server's", _CHALLENGE
        length = _header(scope, b"content-length")
        if b"h2c" in (_header(scope, b"upgrade") or b"").lower() and length not in (None, b"0"):
            return 400, "h2c_upgrade", ("this server speaks HTTP/1.1, and the body of a request that asks to upgrade "
                                        "to HTTP/2 over plain http (Upgrade: h2c) does not reach it: send HTTP/1.1 "
                                        "(Java: HttpClient.Version.HTTP_1_1; curl: --http1.1)"), {}
        if length is not None and length.isdigit() and int(length) > self.config.max_body_bytes:
            return 413, "body_too_large", (f"the request body has {int(length)} bytes; this server reads at most "
                                           f"{self.config.max_body_bytes} (FEATURESTORE_SERVER_MAX_BODY_BYTES)"), {}
        return None

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole request body (b"" for none), or None past the size limit (a chunked body)."""
        if scope["method"] in ("GET", "HEAD"):
            return b""
        chunks, size, limit = [], 0, self.config.max_body_bytes
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="featurestore"'}


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` giving the body read already, then what the client sends next (a disconnect)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(send: Send, state: dict, status: int, code: str, message: str,
                  headers: dict[str, str] | None = None) -> None:
    state["fs_error"] = code
    body = error_body(code, message)
    raw = [_JSON, (b"content-length", b"%d" % len(body))]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
