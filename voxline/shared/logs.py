"""Logging setup: plain text or one JSON object per line, with the session and sentence a line
belongs to.

The session id, utterance and sentence index live in context variables: `Session.run` binds
the session once (every task it starts inherits a copy of its context), the relay binds each
sentence it delivers, a worker each job it runs. Every log line in that context carries them
without any log call naming them.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

Format = Literal["text", "json"]
FORMATS: tuple[Format, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Record attributes carrying the context; `extra={...}` on a call overrides them.
CONTEXT_FIELDS = ("session_id", "utterance", "sentence")

_session_id: ContextVar[str | None] = ContextVar("voxline_session_id", default=None)
_utterance: ContextVar[int | None] = ContextVar("voxline_utterance", default=None)
_sentence: ContextVar[int | None] = ContextVar("voxline_sentence", default=None)


def bind_session(session_id: str) -> None:
    _session_id.set(session_id)


def bind_sentence(utterance: int, sentence: int) -> None:
    _utterance.set(utterance)
    _sentence.set(sentence)


def bind_job(session_id: str, utterance: int, sentence: int) -> None:
    bind_session(session_id)
    bind_sentence(utterance, sentence)


def context() -> dict[str, Any]:
    """The bound fields that are set."""
    values = (_session_id.get(), _utterance.get(), _sentence.get())
    return {k: v for k, v in zip(CONTEXT_FIELDS, values, strict=True) if v is not None}


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record, in the logging call's own context (a
    handler's filter runs synchronously in the caller's task)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in context().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO 8601, UTC), level, logger, message, the context
    fields that are known, exc_info (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # default=str: a message argument nobody meant to serialize must not lose the line.
        return json.dumps(entry, ensure_ascii=False, default=str)


_installed: list[logging.Handler] = []


UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """One handler on the root logger (stderr) for every logger, uvicorn's included when it
    is started with `log_config=None`. A second call replaces the first one's handler only
    (others, such as pytest's, stay)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.setLevel(level.upper())
    while _installed:
        root.removeHandler(_installed.pop())
    root.addHandler(handler)
    _installed.append(handler)
    for name in UVICORN_LOGGERS:
        # A uvicorn configured earlier in the process (its default dictConfig) gave these their
        # own handlers and cut them off from the root: hand them back to this one.
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
