"""structlog set-up: one JSON object per line, the same shape in every daemon."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii as _json_str
from types import MappingProxyType
from typing import Any, TextIO

import structlog

__all__ = [
    "DecisionLine",
    "configure_logging",
    "decision_line",
    "get_logger",
    "log_decision",
]

# The writer and level of the last configure_logging() (None: never configured).
_writer: _LineLogger | None = None
_level = logging.INFO
# The file descriptor DecisionLine.write may write a line to directly: the
# writer's, while it has one, INFO is enabled and its last line is whole; else -1.
_direct_fd = -1


def configure_logging(stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """Route structlog to ``stream`` (stderr by default) as JSON lines.

    Lines go to the stream's file descriptor with ``write(2)``, past its
    Python buffer: anything else written through the same stream object must
    be flushed to keep its place (``sys.stderr`` is line-buffered).
    """
    global _writer, _level
    stream = stream or sys.stderr
    with contextlib.suppress(OSError, ValueError):
        stream.flush()
    factory = _LineLoggerFactory(stream)
    _writer, _level = factory.logger, level
    _writer.publish_direct()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
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
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            self._fd = None  # an in-memory stream (tests)

    def publish_direct(self) -> None:
        """Tell :meth:`DecisionLine.write` whether it may write to this writer's fd itself."""
        global _direct_fd
        if _writer is self:
            fd = self._fd
            _direct_fd = fd if fd is not None and not self._torn and _level <= logging.INFO else -1

    def msg(self, message: str) -> None:
        if self._fd is None:
            self._stream.write(("\n" if self._torn else "") + message + "\n")
            self._stream.flush()
            return
        self._stream.flush()  # keep order with anything written through the stream
        self.finish(f"{chr(10) if self._torn else ''}{message}\n".encode(), 0)

    def finish(self, data: bytes, written: int) -> None:
        """Write ``data`` (a line, or what is left of one: ``written`` bytes already are)."""
        assert self._fd is not None
        try:
            while written < len(data):
                written += os.write(self._fd, data[written:] if written else data)
        except OSError:
            if written:
                self._torn = True
                self.publish_direct()
            raise
        if self._torn:
            self._torn = False
            self.publish_direct()

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


class _LineLoggerFactory:
    def __init__(self, stream: TextIO) -> None:
        self.logger = _LineLogger(stream)

    def __call__(self, *args: Any) -> _LineLogger:
        return self.logger


# --- decision events: the hot path of every request --------------------------------

# The fields of a policy decision event (enforcer.policy.decision_event), which
# log_decision renders itself in the order JSONRenderer(sort_keys=True) would.
_DECISION_KEYS = frozenset(
    {"action", "channel", "decision", "principal", "request_id", "resource", "revision", "rule"}
)
# The date part of the timestamp, formatted once a second; the end of a decision
# line (timestamp, closing brace, newline), formatted once a millisecond and
# valid for time.time() in [_ts_from, _ts_until).
_ts_second = -1
_ts_prefix = ""
_ts_tail = b""
_ts_from = 0.0
_ts_until = 0.0


def _set_timestamp(now_ms: int) -> None:
    global _ts_second, _ts_prefix, _ts_tail, _ts_from, _ts_until
    second, ms = divmod(now_ms, 1000)
    if second != _ts_second:
        moment = datetime.datetime.fromtimestamp(second, datetime.UTC)
        _ts_prefix, _ts_second = moment.strftime("%Y-%m-%dT%H:%M:%S."), second
    _ts_tail = f'{_ts_prefix}{ms:03d}Z"}}\n'.encode()
    _ts_from, _ts_until = now_ms / 1000, (now_ms + 1) / 1000


def _timestamp() -> str:
    """ISO 8601 UTC with milliseconds (the current time)."""
    _set_timestamp(time.time_ns() // 1_000_000)
    return _ts_tail[:-3].decode()


def _json(value: object) -> str:
    if isinstance(value, str):
        return _json_str(value)
    return json.dumps(value, default=repr)


def decision_line(event: Mapping[str, Any], logger: str) -> str:
    """The JSON line structlog's chain renders for ``info("decision", logger=..., **event)``.

    Same keys, same order (sorted), same escaping (ASCII JSON); only the
    timestamp is cheaper (milliseconds, from a per-second cached prefix).
    """
    if event.keys() != _DECISION_KEYS:
        return json.dumps(
            {
                **event,
                "event": "decision",
                "level": "info",
                "logger": logger,
                "timestamp": _timestamp(),
            },
            sort_keys=True,
            default=repr,
        )
    rule = event["rule"]
    return (
        f'{{"action": {_json(event["action"])}, "channel": {_json(event["channel"])}, '
        f'"decision": {_json(event["decision"])}, "event": "decision", "level": "info", '
        f'"logger": {_json_str(logger)}, "principal": {_json(event["principal"])}, '
        f'"request_id": {_json(event["request_id"])}, "resource": {_json(event["resource"])}, '
        f'"revision": {_json(event["revision"])}, '
        f'"rule": {"null" if rule is None else _json(rule)}, "timestamp": "{_timestamp()}"}}'
    )


class DecisionLine:
    """One decision's JSON line, rendered once, with the request id and timestamp left open.

    The enforcer keeps one per (principal, resource, action, policy version):
    :meth:`write` then costs one join and one ``write(2)``, and emits exactly
    the line :func:`log_decision` would for the same event.
    """

    __slots__ = ("_head", "_logger", "_middle", "event")

    _head: bytes
    _middle: bytes

    def __init__(self, event: Mapping[str, Any], logger: str) -> None:
        # ``event`` without its request id: the fields shared by every request.
        self.event: Mapping[str, Any] = MappingProxyType(
            {k: v for k, v in event.items() if k != "request_id"}
        )
        self._logger = logger
        full = {**self.event, "request_id": ""}
        if full.keys() == _DECISION_KEYS:
            rule = full["rule"]
            # Up to the request id's opening quote; from its closing quote to the timestamp.
            self._head = (
                f'{{"action": {_json(full["action"])}, "channel": {_json(full["channel"])}, '
                f'"decision": {_json(full["decision"])}, "event": "decision", "level": "info", '
                f'"logger": {_json_str(logger)}, "principal": {_json(full["principal"])}, '
                '"request_id": "'
            ).encode()
            self._middle = (
                f'", "resource": {_json(full["resource"])}, '
                f'"revision": {_json(full["revision"])}, '
                f'"rule": {"null" if rule is None else _json(rule)}, "timestamp": "'
            ).encode()
        else:  # not a plain decision event: render it whole each time
            self._head = self._middle = b""

    def write(self, request_id: str) -> None:
        """Log this decision for ``request_id`` now (``OSError`` when it cannot be written)."""
        if request_id.isascii() and request_id.isalnum():
            self.write_hex(request_id)  # no escaping needed
            return
        writer = _writer
        if writer is None or not self._head:
            log_decision({**self.event, "request_id": request_id}, self._logger)
        elif _level <= logging.INFO:
            line = b"".join((self._head[:-1], _json_str(request_id).encode(), self._middle[1:]))
            writer.msg(f'{line.decode()}{_timestamp()}"}}')

    def write_hex(self, request_id: str) -> None:
        """:meth:`write`, for a ``request_id`` known to be ASCII letters and digits only.

        The enforcer's own ids are hex; this skips checking them per request.
        """
        fd = _direct_fd
        # The per-request path, all in this frame (each call is measurable,
        # bench/agent_socket.py). time.time() and a float range: cheaper than
        # time.time_ns() // 1_000_000 and a comparison.
        if fd >= 0 and self._head:
            now = time.time()
            if not _ts_from <= now < _ts_until:
                _set_timestamp(int(now * 1000))
            data = b"".join((self._head, request_id.encode(), self._middle, _ts_tail))
            written = os.write(fd, data)  # raises before anything is written
            if written != len(data) and _writer is not None:
                _writer.finish(data, written)
            return
        writer = _writer
        if writer is None or not self._head:
            log_decision({**self.event, "request_id": request_id}, self._logger)
        elif _level <= logging.INFO:
            line = b"".join((self._head, request_id.encode(), self._middle))
            writer.msg(f'{line.decode()}{_timestamp()}"}}')


def log_decision(event: Mapping[str, Any], logger: str) -> None:
    """Log one decision event now, as one whole line with one ``write(2)``.

    Synchronous on purpose: every decision is logged or not made, so a write
    error (a full disk) reaches the caller as ``OSError`` before any handler
    runs. Without :func:`configure_logging`, structlog's own set-up is used.
    """
    writer = _writer
    if writer is None:
        structlog.get_logger().info("decision", logger=logger, **event)
    elif _level <= logging.INFO:
        writer.msg(decision_line(event, logger))


def get_logger(name: str, **bound: Any) -> Any:
    """A bound structlog logger carrying ``logger=name``."""
    return structlog.get_logger(name).bind(logger=name, **bound)
