"""Logging setup: plain or structured JSON lines (ts, level, logger, msg and extra fields)."""

from __future__ import annotations

import datetime as dt
import json as jsonlib
import logging
import sys
from typing import Any, TextIO

__all__ = ["configure_logging", "JsonFormatter"]

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message", "asctime", "taskName"}
_PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, extra fields, and exc when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return jsonlib.dumps(entry, default=str, ensure_ascii=False)


class _FeatureStoreHandler(logging.StreamHandler):
    """Marker class so repeated configure_logging calls replace only the handler they added."""


def configure_logging(level: int | str = logging.INFO, json: bool = False, stream: TextIO | None = None) -> None:
    """Log to *stream* (stderr) at *level*, as JSON lines when *json*; other root handlers are left alone."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _FeatureStoreHandler):
            root.removeHandler(handler)
    handler = _FeatureStoreHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json else logging.Formatter(_PLAIN_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
