"""JSON in and out of the feature server (orjson, both ways)."""

from __future__ import annotations

import orjson
from starlette.responses import Response

__all__ = ["json_bytes", "json_response", "load_object"]


def _default(value: object) -> object:
    """JSON for what orjson does not know: numpy and pandas values (``tolist``), anything else as text."""
    tolist = getattr(value, "tolist", None)
    return tolist() if tolist is not None else str(value)


_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def json_bytes(doc: object) -> bytes:
    """``doc`` as JSON: numpy arrays and scalars included, NaN and infinities as null."""
    return orjson.dumps(doc, default=_default, option=_OPTIONS)


def json_response(doc: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json_bytes(doc), status, headers, media_type="application/json")


def load_object(body: bytes) -> dict:
    """The JSON object of a request body; ``ValueError`` naming what is wrong when it is not one."""
    if not body:
        raise ValueError("the request body is empty: send a JSON object")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the request body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"the request body must be a JSON object, got a JSON {_kind(doc)}")
    return doc


def _kind(value: object) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "null")
