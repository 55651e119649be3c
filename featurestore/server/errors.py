"""Errors as HTTP answers: one JSON body, ``{"error": {"code": ..., "message": ...}}``, and one status
per kind of problem, so a client in any language can tell its own mistakes (4xx) from an outage (503,
with ``Retry-After``) and from a bug of the server (500, logged with its traceback)."""

from __future__ import annotations

import logging

from featurestore.exceptions import (FeatureStoreError, InvalidInputError, StateFormatError, UnknownNameError,
                                     WorkerRunningError)
from featurestore.outages import STORE_OUTAGES

from .jsonio import json_bytes

__all__ = ["ApiError", "HANDLED", "OUTAGES", "describe", "error_body"]

logger = logging.getLogger(__name__)

#: exceptions that mean a store cannot be reached now (the one list, ``featurestore.outages``): 503, retry later
OUTAGES = STORE_OUTAGES


class ApiError(FeatureStoreError):
    """A request the server refuses: ``status`` (4xx), ``code`` (a stable word clients can test) and
    ``message`` (what is wrong, in words); ``extra`` fields join the error body."""

    def __init__(self, status: int, code: str, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


#: every exception class the app answers itself (the rest is a 500 of the outer middleware)
HANDLED: tuple[type[Exception], ...] = (ApiError, FeatureStoreError, *OUTAGES)


def describe(exc: BaseException, retry_after_s: int) -> tuple[int, str, str, dict, dict[str, str]]:
    """(status, code, message, extra body fields, headers) answering ``exc``."""
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.message, exc.extra, {}
    if isinstance(exc, UnknownNameError):
        return 404, "unknown_name", str(exc), {}, {}
    if isinstance(exc, InvalidInputError):
        rejects = getattr(exc, "rejects", None)
        extra = {"rejects": _records(rejects)} if rejects is not None else {}
        return 422, "invalid_input", str(exc), extra, {}
    if isinstance(exc, WorkerRunningError):
        return 409, "worker_running", str(exc), {}, {}
    if isinstance(exc, OUTAGES):
        message = f"a store is unavailable ({type(exc).__name__}: {exc}); retry after {retry_after_s} s"
        return 503, "store_unavailable", message, {}, {"Retry-After": str(retry_after_s)}
    if isinstance(exc, StateFormatError):
        return 500, "state_format", str(exc), {}, {}
    if isinstance(exc, FeatureStoreError):
        return 500, "feature_store_error", f"{type(exc).__name__}: {exc}", {}, {}
    return 500, "internal", "internal error of the feature server (its log has the traceback)", {}, {}


def error_body(code: str, message: str, extra: dict | None = None) -> bytes:
    return json_bytes({"error": {"code": code, "message": message, **(extra or {})}})


def _records(frame) -> list[dict]:
    """A rejects frame (row, reason, detail) as a list of objects."""
    return [{"row": row, "reason": reason, "detail": detail}
            for row, reason, detail in zip(frame["row"].tolist(), frame["reason"].tolist(), frame["detail"].tolist())]
