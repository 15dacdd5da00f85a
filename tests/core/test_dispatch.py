"""enforcer.dispatch: the same route and the same answer as aiohttp's own routing, always.

:class:`Dispatch` replaces ``Application._handle`` for the agent surface. It
must never pick another handler than aiohttp's router would, for any method
and any path, before or after it learnt a shortcut; and what follows routing
(``Expect``, the match info a handler reads) must be the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

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
