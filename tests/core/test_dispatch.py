"""enforcer.dispatch: the same route and the same answer as aiohttp's own routing, always.

:class:`Dispatch` replaces ``Application._handle`` for the agent surface. It
must never pick another handler than aiohttp's router would, for any method
and any path, before or after it learnt a shortcut; and what follows routing
(``Expect``, the match info a handler reads) must be the same.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from enforcer.agent_api import ROUTES
from enforcer.dispatch import Dispatch

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _named(name: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        info = dict(request.match_info)
        return web.json_response({"handler": name, "match": info})

    return handler


async def _continue_refused(request: web.Request) -> web.StreamResponse | None:
    return web.json_response({"handler": "expect-refused"}, status=417)


def _app() -> web.Application:
    """Plain, dynamic, catch-all and any-method routes, and paths that share a prefix."""
    app = web.Application()
    router = app.router
    router.add_get("/v1/whoami", _named("whoami"))
    router.add_post("/v1/whoami", _named("whoami-post"))
    router.add_get("/v1/state", _named("state-list"))
    router.add_get("/v1/state/{path:.+}", _named("state-read"))
    router.add_put("/v1/state/{path:.+}", _named("state-write"))
    router.add_route("*", "/v1/any", _named("any"))
    router.add_get("/v1/questions/{id}", _named("question"))
    router.add_post("/v1/expect", _named("expect"), expect_handler=_continue_refused)
    router.add_get("/v1/a/b", _named("a-b"))
    router.add_get("/v1/a/{x}", _named("a-x"))
    router.add_route("*", "/{_unmatched:.*}", _named("fallback"))
    app.freeze()
    return app


async def _answer(
    handle: Callable[[web.Request], Awaitable[web.StreamResponse]],
    method: str,
    path: str,
    headers: dict[str, str],
    app: web.Application,
) -> tuple[int, bytes]:
    request = make_mocked_request(method, path, headers=headers, app=app)
    try:
        response = await handle(request)
    except web.HTTPException as e:
        return e.status, e.text.encode() if e.text else b""
    assert isinstance(response, web.Response)
    body = response.body
    assert isinstance(body, bytes)
    return response.status, body


METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW"])
SEGMENTS = st.sampled_from(
    ["v1", "whoami", "state", "any", "questions", "a", "b", "x", "", "%41", "who%61mi", "..", "."]
)


@st.composite
def paths(draw: st.DrawFn) -> str:
    """Paths near the routes: their own, their prefixes, longer ones, encoded ones."""
    known = st.sampled_from(
        ["/v1/whoami", "/v1/state", "/v1/any", "/v1/a/b", "/v1/expect", "/", "/v1", "/v1/"]
    )
    made = st.lists(SEGMENTS, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
    path: str = draw(st.one_of(known, made))
    if draw(st.booleans()):
        path += draw(st.sampled_from(["/", "?q=1", "//", "/x"]))
    return path


@settings(max_examples=300, deadline=None)
@given(requests=st.lists(st.tuples(METHODS, paths(), st.booleans()), min_size=1, max_size=12))
def test_every_request_gets_the_route_and_answer_aiohttps_router_gives(
    requests: list[tuple[str, str, bool]],
) -> None:
    """Property: Dispatch answers as Application._handle, before and after it learns a key."""

    async def check() -> None:
        app = _app()
        dispatch = Dispatch(app)
        # Each request twice: the second may take the learnt shortcut.
        for method, path, expect in requests + requests:
            headers = {"Expect": "100-continue"} if expect else {}
            ours = await _answer(dispatch, method, path, headers, app)
            theirs = await _answer(app._handle, method, path, headers, app)
            assert ours == theirs, (method, path, expect)

    asyncio.run(check())


def test_a_learnt_plain_route_is_taken_without_asking_the_router_again() -> None:
    async def check() -> None:
        app = _app()
        dispatch = Dispatch(app)
        asked: list[str] = []
        resolve = app.router.resolve

        async def counted(request: web.Request) -> web.UrlMappingMatchInfo:
            asked.append(request.path)
            return await resolve(request)

        app.router.resolve = counted  # type: ignore[method-assign]
        for _ in range(3):
            assert (await _answer(dispatch, "GET", "/v1/whoami", {}, app))[0] == 200
        assert asked == ["/v1/whoami"]  # once, to learn it
        # A dynamic route is never a shortcut: aiohttp's own way, every time.
        for _ in range(2):
            status, body = await _answer(dispatch, "GET", "/v1/state/notes.txt", {}, app)
            assert status == 200
            assert b'"state-read"' in body
            assert b'"notes.txt"' in body

    asyncio.run(check())


def test_an_application_with_middlewares_or_not_started_is_refused() -> None:
    @web.middleware
    async def passthrough(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await handler(request)

    with_middleware = web.Application(middlewares=[passthrough])
    with_middleware.freeze()
    with pytest.raises(ValueError, match="without middlewares"):
        Dispatch(with_middleware)
    # Found in review: a sub-application's middlewares, its request.app and a
    # domain's dependence on Host are _handle's business; such an app is refused.
    for mount in ("prefix", "domain"):
        root, sub = web.Application(), web.Application(middlewares=[passthrough])
        sub.router.add_get("/secret", _named("secret"))
        if mount == "prefix":
            root.add_subapp("/admin", sub)
        else:
            root.add_domain("admin.example", sub)
        root.freeze()
        assert not Dispatch.serves(root)
        with pytest.raises(ValueError, match="sub-applications"):
            Dispatch(root)
    with pytest.raises(ValueError, match="frozen"):
        Dispatch(web.Application())


def test_an_expectation_goes_to_the_routes_expect_handler_as_aiohttp_does() -> None:
    async def check() -> None:
        app = _app()
        dispatch = Dispatch(app)
        expect = {"Expect": "100-continue"}
        for _ in range(2):  # learning, then learnt
            ours = await _answer(dispatch, "POST", "/v1/expect", expect, app)
            assert ours == await _answer(app._handle, "POST", "/v1/expect", expect, app)
            assert ours[0] == 417
            assert (await _answer(dispatch, "POST", "/v1/expect", {}, app))[0] == 200

    asyncio.run(check())


def test_a_request_no_route_can_place_goes_to_unrouted_and_nothing_else_does() -> None:
    async def check() -> None:
        app = _app()
        seen: list[str] = []

        def unrouted(request: web.Request) -> web.StreamResponse:
            seen.append(request.method)
            return web.json_response({"handler": "unrouted"}, status=400)

        dispatch = Dispatch(app, unrouted=unrouted)
        # The catch-all takes every path: only a target that is not one is unrouted.
        for method, target in (("OPTIONS", "*"), ("CONNECT", "core:80")):
            request = make_mocked_request(method, target, app=app)
            response = await dispatch(request)
            assert response.status == 400
        assert seen == ["OPTIONS", "CONNECT"]
        for method, path in (("GET", "/v1/whoami"), ("BREW", "/nowhere"), ("GET", "/v1/a/z")):
            ours = await _answer(dispatch, method, path, {}, app)
            assert ours == await _answer(app._handle, method, path, {}, app)
        assert seen == ["OPTIONS", "CONNECT"]

    asyncio.run(check())


# --- on the wire: aiohttp's real parser, the agent surface's real route shapes ---------


def _agent_shaped_app() -> web.Application:
    """The agent surface's routes (enforcer.agent_api.ROUTES) and its catch-all, named."""
    app = web.Application()
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _named(f"{route.method} {route.path}"))
    app.router.add_route("*", "/{_unmatched:.*}", _named("fallback"))
    app.freeze()
    return app


async def _exchange(path: str, data: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)  # to the close: the whole answer
    finally:
        writer.close()


def _without_date(answer: bytes) -> bytes:
    head, _, body = answer.partition(b"\r\n\r\n")
    kept = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"date:")]
    return b"\r\n".join(kept) + b"\r\n\r\n" + body


WIRE_METHODS = st.sampled_from(
    ["GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "get", "Get", "BREW", "M" * 300]
)
WIRE_SEGMENTS = st.sampled_from(
    ["v1", "whoami", "questions", "approvals", "messages", "status", "state", "", "x",
     "%76%31", "who%61mi", "%2F", "%2f", "%25", "..", ".", "%2e", "%2E%2E", "WHOAMI", "a;b"]
)  # fmt: skip


@st.composite
def wire_targets(draw: st.DrawFn) -> str:
    """Request targets near the agent routes: theirs, encoded, dotted, absolute-form."""
    known = st.sampled_from(["/v1/whoami", "/v1/state", "/v1/questions", "/v1/status"])
    made = st.lists(WIRE_SEGMENTS, min_size=1, max_size=4).map(lambda p: "/" + "/".join(p))
    target: str = draw(st.one_of(known, made))
    if draw(st.booleans()):
        target += draw(st.sampled_from(["/", "?q=1", "#f", "//", "%2F", "?"]))
    if draw(st.booleans()):
        target = draw(st.sampled_from(["http://h", "http://h:1"])) + target
    return target


@settings(max_examples=120, deadline=None)
@given(
    requests=st.lists(
        st.tuples(WIRE_METHODS, wire_targets(), st.booleans()), min_size=1, max_size=6
    )
)
def test_on_the_wire_dispatch_answers_every_request_as_application_handle(
    requests: list[tuple[str, str, bool]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Property: behind aiohttp's parser, on the agent routes, the same bytes come back."""
    base = tmp_path_factory.mktemp("dispatch")

    async def check() -> None:
        app = _agent_shaped_app()
        servers: list[asyncio.Server] = []
        paths = [str(base / "dispatch.sock"), str(base / "handle.sock")]
        handlers: list[Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]] = [
            Dispatch(app),
            app._handle,  # type: ignore[list-item]  # it takes the web.Request the factory makes
        ]
        for handler, path in zip(handlers, paths, strict=True):
            web_server = web.Server(handler, request_factory=app._make_request)
            servers.append(await asyncio.get_running_loop().create_unix_server(web_server, path))
        try:
            for method, target, expect in requests + requests:  # learning, then learnt
                extra = b"Expect: 100-continue\r\nContent-Length: 0\r\n" if expect else b""
                data = f"{method} {target} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n".encode()
                data += extra + b"\r\n"
                ours, theirs = [_without_date(await _exchange(p, data)) for p in paths]
                assert ours == theirs, (method, target, expect)
        finally:
            for listening in servers:
                listening.close()
                await listening.wait_closed()
            for path in paths:
                os.unlink(path)

    asyncio.run(check())


def test_a_learnt_routes_shared_match_info_cannot_carry_anything_to_the_next_request() -> None:
    async def check() -> None:
        app = _app()
        dispatch = Dispatch(app)
        seen = []
        for _ in range(3):
            request = make_mocked_request("GET", "/v1/whoami", app=app)
            assert (await dispatch(request)).status == 200
            seen.append(request.match_info)
        shared = seen[-1]
        assert seen[1] is shared  # learnt: one for all requests of the route
        assert dict(shared) == {}
        assert shared.current_app is app
        with pytest.raises(TypeError, match="shared"):
            shared["x"] = "left behind"
        with pytest.raises(TypeError, match="shared"):
            shared.update(x="left behind")
        with pytest.raises(TypeError, match="shared"):
            shared.current_app = web.Application()
        with pytest.raises(TypeError, match="shared"):
            shared |= {"x": "left behind"}  # found in review: dict's own |= bypassed update
        with pytest.raises(AttributeError):
            shared.note = "left behind"  # type: ignore[attr-defined]  # and an attribute
        assert dict(shared) == {}
        assert not hasattr(shared, "note")

    asyncio.run(check())
