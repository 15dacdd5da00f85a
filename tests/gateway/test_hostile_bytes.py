"""Raw bytes the gateway must refuse cleanly, or pass on exactly as sent.

Found by an attack review: bytes that are not UTF-8 where the gateway compares
secrets, WebSocket handshakes it cannot accept, and request bodies with a
``Content-Encoding``. Each answer is a 4xx with no internals (never a 5xx),
and what reaches the core is what the client sent.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enforcer.log import configure_logging
from tests.gateway.stack import RawResponse, ThreadedStack, raw_request


@pytest.fixture(scope="module")
def gw() -> Iterator[ThreadedStack]:
    with ThreadedStack() as stack:
        yield stack


def _send(gw: ThreadedStack, head: bytes, body: bytes = b"", timeout: float = 10) -> RawResponse:
    host = f"Host: 127.0.0.1:{gw.stack.port}\r\n".encode()
    request_line, _, rest = head.partition(b"\r\n")
    return raw_request(
        gw.stack.port,
        request_line + b"\r\n" + host + rest + b"Connection: close\r\n\r\n" + body,
        timeout=timeout,
    )


def _send_logged(
    gw: ThreadedStack, head: bytes, tmp_path: Path
) -> tuple[RawResponse, list[dict[str, Any]]]:
    """:func:`_send`, with the gateway's log caught: the answer and its request.refused lines."""
    log = tmp_path / "gateway.log"
    with log.open("w") as stream:
        configure_logging(stream)
        try:
            answer = _send(gw, head)
        finally:
            configure_logging(io.StringIO())
    events = [json.loads(line) for line in log.read_text().splitlines()]
    return answer, [e for e in events if e["event"] == "request.refused"]


def _logged_in(gw: ThreadedStack) -> bytes:
    return f"Cookie: hive_session={gw.cookie}\r\nOrigin: {gw.stack.origin}\r\n".encode()


def test_a_session_cookie_with_bytes_that_are_not_utf8_is_no_session(gw: ThreadedStack) -> None:
    session_id, expires, _mac = gw.cookie.split(".")
    cookie = f"{session_id}.{expires}.".encode() + b"\xff\xfe\xfd"
    answer = _send(gw, b"GET /api/agents HTTP/1.1\r\nCookie: hive_session=" + cookie + b"\r\n")
    assert answer.status == 401, answer
    assert b"Traceback" not in answer.body


def test_a_csrf_header_with_bytes_that_are_not_utf8_is_refused(gw: ThreadedStack) -> None:
    changes = gw.stack.core.state_changes
    answer = _send(
        gw,
        b"POST /api/questions/1/answer HTTP/1.1\r\n"
        + _logged_in(gw)
        + b"X-CSRF-Token: \xff\xfe\r\nContent-Length: 0\r\n",
    )
    assert answer.status == 403, answer
    assert gw.stack.core.state_changes == changes


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (b"application/x-www-form-urlencoded", b"token=\xff\xfe&next=/"),
        (
            b"multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="token"\r\n\r\n\xff\xfe\r\n--b--\r\n',
        ),
    ],
    ids=["urlencoded", "multipart"],
)
def test_a_login_form_that_is_not_utf8_is_a_400(
    gw: ThreadedStack, content_type: bytes, body: bytes
) -> None:
    answer = _send(
        gw,
        b"POST /login HTTP/1.1\r\n"
        + f"Origin: {gw.stack.origin}\r\n".encode()
        + b"Content-Type: "
        + content_type
        + b"\r\nContent-Length: %d\r\n" % len(body),
        body,
    )
    assert 400 <= answer.status < 500, answer
    assert b"Traceback" not in answer.body


@pytest.mark.parametrize(
    ("path", "key"),
    [
        (b"/agent/alpha/ws", b"Sec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n"),
        (b"/agent/alpha/ws", b""),
        (b"/api/ws", b"Sec-WebSocket-Version: 13\r\n"),
        (
            b"/api/ws",
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 99\r\n",
        ),
    ],
    ids=["agent-bad-key", "agent-no-key", "core-no-key", "core-unknown-version"],
)
def test_a_websocket_handshake_that_cannot_be_accepted_is_a_400_and_opens_nothing_upstream(
    gw: ThreadedStack, path: bytes, key: bytes
) -> None:
    def opened() -> tuple[int, int]:
        # The gateway may ask the core where the agent is; nothing else may go upstream.
        core = [s for s in gw.stack.core.seen if not s.raw_path.startswith("/api/agents/")]
        return len(gw.stack.agent.seen), len(core)

    before = opened()
    answer = _send(
        gw,
        b"GET "
        + path
        + b" HTTP/1.1\r\n"
        + _logged_in(gw)
        + b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
        + key,
        timeout=5,
    )
    assert answer.status == 400, answer
    assert opened() == before


def test_a_compressed_request_body_reaches_the_core_exactly_as_sent(gw: ThreadedStack) -> None:
    body = gzip.compress(b'{"answer": "yes"}')
    seen = gw.stack.core.seen
    before = len(seen)
    answer = _send(
        gw,
        b"POST /api/answers HTTP/1.1\r\n"
        + _logged_in(gw)
        + f"X-CSRF-Token: {gw.csrf}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
        + b"Content-Length: %d\r\n" % len(body),
        body,
    )
    assert answer.status < 500, answer
    forwarded = seen[before:]
    assert len(forwarded) == 1
    assert forwarded[0].body == body
    assert forwarded[0].headers["Content-Encoding"] == "gzip"
    assert forwarded[0].headers["Content-Length"] == str(len(body))


@pytest.mark.parametrize(
    "request_line",
    [b"OPTIONS * HTTP/1.1", b"CONNECT core:80 HTTP/1.1", b"CONNECT 127.0.0.1:22 HTTP/1.1"],
    ids=["asterisk-form", "authority-form", "authority-form-ssh"],
)
def test_a_target_that_is_not_a_path_is_refused_logged_and_never_proxied(
    gw: ThreadedStack, request_line: bytes, tmp_path: Path
) -> None:
    # Found in review: no route matches such a target, not even the
    # enforcer's fallback, so aiohttp answered a bare "404: Not Found" that no
    # log line recorded. Now: a 400 with a reason and a request id, logged.
    core_seen = len(gw.stack.core.seen)
    answer, refused = _send_logged(gw, request_line + b"\r\n", tmp_path)
    assert answer.status == 400, answer
    assert b"the request target must be a path" in answer.body  # a small page
    request_id = answer.headers["X-Hive-Request-Id"]
    assert "aiohttp" not in answer.headers.get("Server", "")
    assert [(e["request_id"], e["status"], e["channel"]) for e in refused] == [
        (request_id, 400, "gateway")
    ]
    assert len(gw.stack.core.seen) == core_seen


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET * HTTP/1.1",
        b"HEAD core:80 HTTP/1.1",
        b"GET file:///etc/passwd HTTP/1.1",
        b"GET ?x=1 HTTP/1.1",
        b"FOO / HTTP/1.1",
        b"PRI * HTTP/2.0",
        b"GET / HTTP/1.1\r\nBad Header: x",
    ],
    ids=["asterisk-get", "authority-head", "file-url", "query-only", "unknown-method", "h2", "hdr"],
)
def test_a_request_the_parser_refuses_gets_the_gateways_answer_not_aiohttps(
    gw: ThreadedStack, request_line: bytes, tmp_path: Path
) -> None:
    # Found by an attack review: aiohttp's parser refuses these before any
    # application code runs, and its own answer named aiohttp and its version,
    # echoed the request line back and was never logged.
    answer, refused = _send_logged(gw, request_line + b"\r\n", tmp_path)
    assert 400 <= answer.status < 500, answer
    assert answer.headers["Server"] == "hive-boundary"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    body = json.loads(answer.body)
    assert body["reason"] == "the request could not be read as HTTP/1.1"
    assert request_line.split(b"\r\n")[0] not in answer.body
    assert [e["request_id"] for e in refused] == [answer.headers["X-Hive-Request-Id"]]
