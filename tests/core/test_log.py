"""The decision log: each decision is one whole JSON line, as structlog renders it.

:class:`enforcer.log.DecisionLine` renders its line itself (the per-request
path); these tests hold it to structlog's own rendering, and check that a
torn write never corrupts the records after it.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from enforcer import log
from enforcer.log import DecisionLine, configure_logging

_TIMESTAMP = re.compile(r'"timestamp": "(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)"')

texts = st.text(st.characters(codec="utf-8"), max_size=40)
request_ids = st.one_of(
    st.from_regex(r"[0-9a-f]{16}", fullmatch=True),
    texts,  # anything else takes the escaping path
)


@st.composite
def decision_events(draw: st.DrawFn) -> dict[str, Any]:
    """The fields of enforcer.policy.decision_event, with hostile strings."""
    return {
        "action": draw(texts),
        "channel": draw(st.sampled_from(["socket", "gateway", "priv"])),
        "decision": draw(st.sampled_from(["allow", "deny"])),
        "principal": draw(texts),
        "request_id": draw(texts),
        "resource": draw(texts),
        "revision": draw(st.from_regex(r"[0-9a-f]{16}", fullmatch=True)),
        "rule": draw(st.none() | texts),
    }


def _structlog_line(event: dict[str, Any], request_id: str, timestamp: str) -> str:
    """What structlog's JSONRenderer(sort_keys=True) makes of the same event."""
    rendered = structlog.processors.JSONRenderer(sort_keys=True)(
        None,
        "info",
        {
            **event,
            "request_id": request_id,
            "event": "decision",
            "level": "info",
            "logger": "enforcer.authz",
            "timestamp": timestamp,
        },
    )
    assert isinstance(rendered, str)
    return rendered


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "decisions.log"
    with path.open("w") as stream:
        configure_logging(stream)
        try:
            yield path
        finally:
            configure_logging(io.StringIO())


def _write_one(stream: TextIO, event: dict[str, Any], request_id: str) -> None:
    configure_logging(stream)
    try:
        DecisionLine(event, "enforcer.authz").write(request_id)
    finally:
        configure_logging(io.StringIO())


def _timestamp_of(line: str) -> str:
    found = _TIMESTAMP.search(line)
    assert found is not None, line
    return found.group(1)


@given(event=decision_events(), request_id=request_ids)
def test_a_decision_line_is_exactly_what_structlog_renders(
    tmp_path_factory: pytest.TempPathFactory, event: dict[str, Any], request_id: str
) -> None:
    path = tmp_path_factory.mktemp("log") / "decisions.log"
    with path.open("w") as stream:
        _write_one(stream, event, request_id)  # straight to the file's descriptor
    data = path.read_bytes()
    assert data.count(b"\n") == 1, "one line"
    assert data.endswith(b"\n"), "a whole line"
    line = data.decode("ascii")  # ASCII JSON, like JSONRenderer's default
    assert line[:-1] == _structlog_line(event, request_id, _timestamp_of(line))
    assert json.loads(line)["request_id"] == request_id


@given(event=decision_events(), request_id=request_ids)
def test_a_stream_without_a_descriptor_gets_the_same_line(
    event: dict[str, Any], request_id: str
) -> None:
    stream = io.StringIO()
    _write_one(stream, event, request_id)
    line = stream.getvalue()
    assert line == _structlog_line(event, request_id, _timestamp_of(line)) + "\n"


_EVENT = {
    "action": "agent.whoami",
    "channel": "socket",
    "decision": "allow",
    "principal": "agent:a",
    "request_id": "",
    "resource": "agent:a",
    "revision": "0123456789abcdef",
    "rule": "p, agent:a, socket, agent:a, agent.whoami, allow",
}


def test_a_torn_line_never_corrupts_the_next_record() -> None:
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        with os.fdopen(ours.fileno(), "w", closefd=False) as stream:
            configure_logging(stream)
            line = DecisionLine({**_EVENT, "resource": "r" * 50_000}, "enforcer.authz")
            filler = 0
            with contextlib.suppress(BlockingIOError):
                while True:
                    filler += ours.send(b"x" * 4096)
            # Room for part of the next line only: it is written in part, then EAGAIN.
            received = _recv_exactly(theirs, 4096)
            with pytest.raises(BlockingIOError):
                line.write("00000000000000aa")
            assert log._direct_fd == -1, "a torn writer sends lines the careful way"
            theirs.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    chunk = theirs.recv(1 << 20)
                    received += chunk
            theirs.setblocking(True)
            line.write("00000000000000bb")
            assert log._direct_fd == ours.fileno(), "whole again after a whole line"
            line.write("00000000000000cc")
            ours.shutdown(socket.SHUT_WR)
            while chunk := theirs.recv(1 << 20):
                received += chunk
    finally:
        configure_logging(io.StringIO())
        ours.close()
        theirs.close()
    records = received[filler:].split(b"\n")
    assert 0 < len(records[0]) < len(line_bytes := records[1]), "a fragment, alone on its line"
    assert [json.loads(r)["request_id"] for r in records[1:-1]] == [
        "00000000000000bb",
        "00000000000000cc",
    ]
    assert json.loads(line_bytes)["resource"] == "r" * 50_000
    assert records[-1] == b""


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        data += sock.recv(n - len(data))
    return data


def test_a_write_that_fails_outright_leaves_the_log_whole(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # EPIPE: nothing at all is written
    try:
        with os.fdopen(write_end, "w", closefd=False) as stream:
            configure_logging(stream)
            with pytest.raises(BrokenPipeError):
                DecisionLine(_EVENT, "enforcer.authz").write("00000000000000aa")
            assert log._direct_fd == write_end, "nothing torn: the next line is direct"
    finally:
        configure_logging(io.StringIO())
        os.close(write_end)


def test_lines_below_the_configured_level_are_not_written(log_file: Path) -> None:
    with log_file.open("w") as stream:
        configure_logging(stream, level=40)
        DecisionLine(_EVENT, "enforcer.authz").write("00000000000000aa")
    assert log_file.read_bytes() == b""


def test_a_line_is_stamped_with_the_current_time(log_file: Path) -> None:
    with log_file.open("w") as stream:
        configure_logging(stream)
        before = datetime.datetime.now(datetime.UTC)
        for n in range(50):  # across several milliseconds
            DecisionLine(_EVENT, "enforcer.authz").write(f"{n:016x}")
            time.sleep(0.0003)
        after = datetime.datetime.now(datetime.UTC)
    stamps = [
        datetime.datetime.strptime(_timestamp_of(line), "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.UTC
        )
        for line in log_file.read_text().splitlines()
    ]
    assert len(stamps) == 50
    assert stamps == sorted(stamps)
    slack = datetime.timedelta(milliseconds=1)
    assert before - slack <= stamps[0]
    assert stamps[-1] <= after + slack
