"""structlog set-up: one JSON object per line, the same shape in every daemon."""

from __future__ import annotations

import io
import logging
import os
import sys
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging", "get_logger"]


def configure_logging(stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """Route structlog to ``stream`` (stderr by default) as JSON lines."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_LineLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


class _LineLogger:
    """Writes each event as one whole line, with one ``write(2)`` where possible.

    When a write fails part way (disk full), the caller gets the ``OSError``
    and the next line starts on a fresh line, so the torn fragment never
    corrupts the records after it.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._torn = False

    def msg(self, message: str) -> None:
        line = ("\n" if self._torn else "") + message + "\n"
        try:
            fd = self._stream.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            self._stream.write(line)  # an in-memory stream (tests)
            self._stream.flush()
            return
        self._stream.flush()  # keep order with anything written through the stream
        data = line.encode()
        written = 0
        try:
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError:
            self._torn = self._torn if written == 0 else True
            raise
        self._torn = False

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


class _LineLoggerFactory:
    def __init__(self, stream: TextIO) -> None:
        self._logger = _LineLogger(stream)

    def __call__(self, *args: Any) -> _LineLogger:
        return self._logger


def get_logger(name: str, **bound: Any) -> Any:
    """A bound structlog logger carrying ``logger=name``."""
    return structlog.get_logger(name).bind(logger=name, **bound)
