"""Operator login, sessions, cookies, and the CSRF / same-origin rule, end to end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import stat
from http.cookies import SimpleCookie

import aiohttp
import pytest
from yarl import URL

from enforcer.files import replace_file
from tests.gateway.stack import Stack


async def test_pages_redirect_to_login_and_the_api_answers_401(stack: Stack) -> None:
    async with stack.client() as client:
        async with client.get(stack.url("/agents?x=1"), allow_redirects=False) as resp:
            assert resp.status == 303
            location = URL(resp.headers["Location"])
            assert location.path == "/login"
            assert location.query["next"] == "/agents?x=1"
        async with client.get(stack.url("/api/agents")) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "unauthorized"
        async with client.get(stack.url("/agent/alpha/"), allow_redirects=False) as resp:
            assert resp.status == 303
    # Nothing anonymous reached the core's operator surface, nor any agent.
    assert stack.core.seen == []
    assert stack.agent.seen == []


async def test_the_login_form_is_public(stack: Stack) -> None:
    async with stack.client() as client, client.get(stack.url("/login")) as resp:
        assert resp.status == 200
        text = await resp.text()
        assert "name=token" in text
        assert "frame-ancestors" in resp.headers["Content-Security-Policy"]


async def test_login_sets_a_strict_httponly_session_cookie(stack: Stack) -> None:
    async with stack.client() as client:
        async with client.post(
            stack.url("/login"),
            data={"token": stack.token, "next": "/agents"},
            headers={"Origin": stack.origin},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == "/agents"
            cookies = SimpleCookie()
            for header in resp.headers.getall("Set-Cookie"):
                cookies.load(header)
        session = cookies["hive_session"]
        assert session["httponly"] is True
        assert session["samesite"] == "Strict"
        assert session["path"] == "/"
        assert int(session["max-age"]) == stack.config.gateway.session_ttl_seconds
        assert not session["secure"]  # no TLS in this stack; see test_tls.py
        async with client.get(stack.url("/api/agents")) as resp:
            assert resp.status == 200
            assert (await resp.json())["principal"] == "operator"


@pytest.mark.parametrize(
    ("token", "origin_ok"),
    [("wrong-token", True), ("", True), (None, True), ("RIGHT", False)],
)
async def test_a_bad_login_gets_no_session(
    stack: Stack, token: str | None, origin_ok: bool
) -> None:
    data = {} if token is None else {"token": stack.token if token == "RIGHT" else token}
    origin = stack.origin if origin_ok else "http://evil.example"
    async with stack.client() as client:
        async with client.post(
            stack.url("/login"), data=data, headers={"Origin": origin}, allow_redirects=False
        ) as resp:
            assert resp.status in {401, 403}
            assert "Set-Cookie" not in resp.headers
        async with client.get(stack.url("/api/agents")) as resp:
            assert resp.status == 401


async def test_login_never_redirects_off_site(stack: Stack) -> None:
    async with stack.client() as client:
        for evil in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
            async with client.post(
                stack.url("/login"),
                data={"token": stack.token, "next": evil},
                headers={"Origin": stack.origin},
                allow_redirects=False,
            ) as resp:
                assert resp.headers["Location"] == "/"


def _logout(
    stack: Stack, client: aiohttp.ClientSession, csrf: str
) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
    """``POST /logout`` as the operator's page sends it (same origin, CSRF token)."""
    return client.post(
        stack.url("/logout"),
        headers={"Origin": stack.origin, "X-CSRF-Token": csrf},
        allow_redirects=False,
    )


async def test_logout_ends_the_session(stack: Stack) -> None:
    async with stack.client() as client:
        csrf = await stack.login(client)
        async with _logout(stack, client, csrf) as resp:
            assert resp.status == 303
        async with client.get(stack.url("/api/agents")) as resp:
            assert resp.status == 401


async def test_a_stolen_cookie_is_useless_after_logout(stack: Stack) -> None:
    async with stack.client() as client:
        csrf = await stack.login(client)
        cookie = {c.key: c.value for c in client.cookie_jar}["hive_session"]
        async with client.post(
            stack.url("/logout"), headers={"Origin": stack.origin, "X-CSRF-Token": csrf}
        ):
            pass
    async with stack.client() as other:
        headers = {"Cookie": f"hive_session={cookie}"}
        async with other.get(stack.url("/api/agents"), headers=headers) as resp:
            assert resp.status == 401


async def test_logout_needs_the_csrf_token(stack: Stack) -> None:
    async with stack.client() as client:
        await stack.login(client)
        async with client.post(stack.url("/logout"), headers={"Origin": stack.origin}) as resp:
            assert resp.status == 403
        async with client.get(stack.url("/api/agents")) as resp:
            assert resp.status == 200


async def test_a_logout_that_cannot_be_recorded_is_a_clear_503_not_a_500(stack: Stack) -> None:
    # Found in review: with revoked.lock made a directory under a running
    # gateway, the logout raised an OSError: a 500 page and a traceback.
    lock = stack.state_dir / "gateway" / "revoked.lock"
    async with stack.client() as client:
        csrf = await stack.login(client)
        lock.unlink()
        lock.mkdir()
        try:
            async with _logout(stack, client, csrf) as resp:
                assert resp.status == 503
                page = await resp.text()
                assert "not available right now" in page  # fixed words for a 5xx page
                assert "Traceback" not in page
                assert "revoked.lock" not in page
            # This worker refuses the session all the same.
            async with client.get(stack.url("/api/agents")) as resp:
                assert resp.status == 401
        finally:
            lock.rmdir()


async def test_a_session_expires() -> None:
    async with Stack(gateway={"session_ttl_seconds": 1}) as stack, stack.client() as client:
        await stack.login(client)
        async with client.get(stack.url("/api/agents")) as resp:
            assert resp.status == 200
        await asyncio.sleep(1.1)
        async with client.get(stack.url("/api/agents")) as resp:
            assert resp.status == 401


# The CSRF matrix: (session?, how the token is sent, Origin, Sec-Fetch-Site, expected status).
RIGHT, WRONG = "right", "wrong"
CASES = [
    (True, ("header", RIGHT), "own", None, 200),
    (True, ("form", RIGHT), "own", None, 200),
    (True, ("header", RIGHT), None, "same-origin", 200),
    (True, ("header", RIGHT), "own", "same-origin", 200),
    (False, ("header", RIGHT), "own", None, 401),
    (True, None, "own", None, 403),
    (True, ("header", WRONG), "own", None, 403),
    (True, ("form", WRONG), "own", None, 403),
    (True, ("header", RIGHT), None, None, 403),
    (True, ("header", RIGHT), "null", None, 403),
    (True, ("header", RIGHT), "http://evil.example", None, 403),
    (True, ("header", RIGHT), "other-port", None, 403),
    (True, ("header", RIGHT), "own", "cross-site", 403),
    (True, ("header", RIGHT), None, "same-site", 403),
    (True, ("form", RIGHT), "null", None, 403),
]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize(("session", "token", "origin", "fetch_site", "expected"), CASES)
async def test_state_changes_need_session_csrf_token_and_own_origin(
    stack: Stack,
    method: str,
    session: bool,
    token: tuple[str, str] | None,
    origin: str | None,
    fetch_site: str | None,
    expected: int,
) -> None:
    async with stack.client() as client:
        csrf = await stack.login(client) if session else "x" * 43
        headers: dict[str, str] = {}
        if origin == "own":
            headers["Origin"] = stack.origin
        elif origin == "other-port":
            headers["Origin"] = f"http://127.0.0.1:{stack.port + 1}"
        elif origin is not None:
            headers["Origin"] = origin
        if fetch_site is not None:
            headers["Sec-Fetch-Site"] = fetch_site
        data: dict[str, str] | None = {"answer": "yes"}
        if token is not None:
            value = csrf if token[1] == RIGHT else "not-the-token"
            if token[0] == "header":
                headers["X-CSRF-Token"] = value
            else:
                data = {"answer": "yes", "csrf_token": value}
        async with client.request(
            method, stack.url("/api/questions/7/answer"), data=data, headers=headers
        ) as resp:
            assert resp.status == expected, await resp.text()
            if expected == 200:
                assert (await resp.json())["principal"] == "operator"
    # A refused request never changes state: the core never even saw it.
    assert stack.core.state_changes == (1 if expected == 200 else 0)


async def test_a_form_post_reaches_the_core_with_its_body_intact(stack: Stack) -> None:
    async with stack.client() as client:
        csrf = await stack.login(client)
        async with client.post(
            stack.url("/questions/7/answer"),
            data={"answer": "ok ✓", "csrf_token": csrf},
            headers={"Origin": stack.origin},
        ) as resp:
            assert resp.status == 200
    body = stack.core.seen[-1].body
    assert b"answer=ok+%E2%9C%93" in body
    assert stack.core.seen[-1].headers["Content-Length"] == str(len(body))


async def test_a_form_arriving_in_pieces_is_read_whole(stack: Stack) -> None:
    async with stack.client() as client:
        csrf = await stack.login(client)
        cookie = {c.key: c.value for c in client.cookie_jar}["hive_session"]
    body = f"answer=in+two+pieces&csrf_token={csrf}".encode()
    head = (
        f"POST /questions/7/answer HTTP/1.1\r\nHost: 127.0.0.1:{stack.port}\r\n"
        f"Origin: {stack.origin}\r\nCookie: hive_session={cookie}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    try:
        writer.write(head + body[:10])
        await writer.drain()
        await asyncio.sleep(0.1)  # the gateway has read the first piece by now
        writer.write(body[10:])
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert stack.core.seen[-1].body == body


async def test_an_oversized_form_without_the_header_is_refused(stack: Stack) -> None:
    async with stack.client() as client:
        csrf = await stack.login(client)
        async with client.post(
            stack.url("/questions/7/answer"),
            data={"csrf_token": csrf, "blob": "x" * 100_000},
            headers={"Origin": stack.origin},
        ) as resp:
            assert resp.status == 400
    assert stack.core.state_changes == 0


async def test_a_cross_origin_websocket_to_the_core_is_refused(stack: Stack) -> None:
    async with stack.client() as client:
        await stack.login(client)
        async with client.get(
            stack.url("/api/ws"),
            headers={
                "Origin": "http://evil.example",
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        ) as resp:
            assert resp.status == 403
    assert not any(s.raw_path == "/api/ws" for s in stack.core.seen)


async def test_the_core_learns_the_csrf_token_to_embed_it(stack: Stack) -> None:
    async with stack.client() as client:
        csrf = await stack.login(client)
        async with client.get(stack.url("/questions")):
            pass
    assert stack.core.seen[-1].headers["X-Hive-CSRF-Token"] == csrf


async def _login_status(stack: Stack, token: str) -> int:
    async with (
        stack.client() as client,
        client.post(
            stack.url("/login"),
            data={"token": token, "next": "/"},
            headers={"Origin": stack.origin},
            allow_redirects=False,
        ) as resp,
    ):
        return resp.status


async def test_the_token_lives_in_the_gateways_own_directory(stack: Stack) -> None:
    # STATE itself is root:hive-core 1775 under the shipped units, where the
    # gateway's user cannot create files; STATE/gateway is its own (0700).
    token_file = stack.config.operator_token_file
    assert token_file.parent == stack.config.state_dir / "gateway"
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert not (stack.config.state_dir / "operator-token").exists()


async def test_a_replaced_token_counts_from_the_next_login_without_a_restart(
    stack: Stack,
) -> None:
    old = stack.token
    assert await _login_status(stack, old) == 303
    new = secrets.token_urlsafe(32)
    replace_file(stack.config.operator_token_file, (new + "\n").encode(), mode=0o600)
    assert await _login_status(stack, old) == 401
    assert await _login_status(stack, new) == 303


async def test_a_deleted_token_is_made_anew_and_the_old_one_stops_working(stack: Stack) -> None:
    old = stack.token
    stack.config.operator_token_file.unlink()
    assert await _login_status(stack, old) == 401
    made = stack.token
    assert made != old
    assert await _login_status(stack, made) == 303


async def test_a_token_file_others_can_read_stops_logins_rather_than_keeping_the_old_token(
    stack: Stack,
) -> None:
    token = stack.token
    stack.config.operator_token_file.chmod(0o644)
    async with (
        stack.client() as client,
        client.post(
            stack.url("/login"),
            data={"token": token},
            headers={"Origin": stack.origin, "Accept": "application/json"},
            allow_redirects=False,
        ) as resp,
    ):
        assert resp.status == 503
        assert "Set-Cookie" not in resp.headers
        assert "Traceback" not in await resp.text()
    stack.config.operator_token_file.chmod(0o600)
    assert await _login_status(stack, token) == 303


async def test_a_fifo_as_the_token_file_refuses_logins_and_the_worker_keeps_serving(
    stack: Stack,
) -> None:
    # Found by an attack review: the token file was opened without O_NONBLOCK,
    # so a FIFO in its place hung the worker's event loop in open(2) at the
    # first login attempt; every later request to that worker went unanswered.
    token = stack.token
    path = stack.config.operator_token_file
    path.unlink()
    os.mkfifo(path, 0o600)
    try:
        async with asyncio.timeout(10):
            assert await _login_status(stack, token) == 503
            async with stack.client() as client, client.get(stack.url("/login")) as resp:
                assert resp.status == 200
    finally:
        path.unlink()
