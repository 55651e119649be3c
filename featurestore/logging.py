"""Logging setup: plain or structured JSON lines (ts, level, logger, msg and extra fields), with the
configured secrets redacted from every record, and the chatty client libraries kept at WARNING
unless the level is DEBUG."""

from __future__ import annotations

import datetime as dt
import json as jsonlib
import logging
import re
import sys
from typing import Any, Iterable, TextIO
from urllib.parse import unquote

from featurestore.settings import MASK

__all__ = ["configure_logging", "JsonFormatter", "SecretFilter", "CLIENT_LOGGERS"]

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message", "asctime", "taskName"}
_PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
#: Loggers of client libraries that log their configuration and traffic at DEBUG and INFO.
CLIENT_LOGGERS = ("kafka", "asyncpg", "asyncio", "urllib3", "redis")


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
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return jsonlib.dumps(entry, default=str, ensure_ascii=False)


def _forms(secret: str) -> set[str]:
    """*secret* as a log line may show it: as is, URL-decoded, and escaped inside a repr or JSON string."""
    forms = {secret, unquote(secret)}
    for form in list(forms):
        forms.add(repr(form)[1:-1])
        forms.add(jsonlib.dumps(form)[1:-1])
    return {form for form in forms if form}


class SecretFilter(logging.Filter):
    """Replaces each secret (and its URL-decoded and escaped forms) with ``***`` in a record's
    message, traceback, stack and string extra fields; the record itself is changed, so every
    handler after this one sees it redacted too."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        forms = sorted({form for secret in secrets if secret for form in _forms(secret)}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, forms))) if forms else None
        self._tracebacks = logging.Formatter()

    def redact(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern else text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._pattern is None:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - the handler's error report would print msg and args as they are
            message = f"{record.msg} (arguments that do not fit the format: {record.args!r})"
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._tracebacks.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, key, self.redact(value))
        return True


class _FeatureStoreHandler(logging.StreamHandler):
    """Marker class so repeated configure_logging calls replace only the handler they added."""


def configure_logging(level: int | str = logging.INFO, json: bool = False, stream: TextIO | None = None,
                      secrets: Iterable[str] = ()) -> None:
    """Log to *stream* (stderr) at *level*, as JSON lines when *json*, each of *secrets* replaced by
    ``***``; the CLIENT_LOGGERS log only warnings and errors unless *level* is DEBUG. Other root
    handlers are left alone."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _FeatureStoreHandler):
            root.removeHandler(handler)
    handler = _FeatureStoreHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json else logging.Formatter(_PLAIN_FORMAT))
    handler.addFilter(SecretFilter(secrets))
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    clients = logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).setLevel(clients)
