"""Every response's security headers, whatever headers the response came with.

The hook (``gateway._security_headers``) builds its fixed headers once and
merges them in one call; these properties pin what each response must end
up with: the values it sets always, the defaults it adds only where the
response has none of its own, and the headers it drops.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from enforcer import authz, gateway
from enforcer.config import GatewayConfig, HiveConfig

_NAMES = (
    "Content-Type",
    "Server",
    "Access-Control-Allow-Origin",
    "access-control-allow-credentials",
    "X-Access-Control-Note",  # not CORS: kept
    "Content-Security-Policy",
    "X-Frame-Options",
    "Referrer-Policy",
    "Cross-Origin-Opener-Policy",
    "Cross-Origin-Resource-Policy",
    "Cache-Control",
    "Strict-Transport-Security",
    "Set-Cookie",
    "X-Content-Type-Options",
)
_VALUES = ("x", "default-src 'self'", "frame-ancestors 'none'", "DENY", "public, max-age=60")
_OPERATOR_DEFAULTS = {
    "X-Frame-Options": "SAMEORIGIN",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@st.composite
def answers(draw: st.DrawFn) -> tuple[list[tuple[str, str]], str, bool, str | None]:
    """A response's own headers, the request's raw path, TLS or not, a request id or none."""
    names = st.sampled_from(_NAMES).map(
        lambda n: n.lower() if draw(st.booleans()) else n  # any case
    )
    headers = draw(st.lists(st.tuples(names, st.sampled_from(_VALUES)), max_size=8))
    raw_path = draw(st.sampled_from(["/api/ping", "/", "/static/app.js", "/agent/alpha/x"]))
    request_id = draw(st.one_of(st.none(), st.just("0123456789abcdef")))
    return headers, raw_path, draw(st.booleans()), request_id


async def _finished(
    own: list[tuple[str, str]], raw_path: str, tls: bool, request_id: str | None
) -> CIMultiDict[str]:
    tls_files = (Path("/nonexistent/cert.pem"), Path("/nonexistent/key.pem")) if tls else None
    config = HiveConfig(
        gateway=GatewayConfig(
            tls_cert=tls_files[0] if tls_files else None,
            tls_key=tls_files[1] if tls_files else None,
        )
    )
    app = web.Application()
    app[gateway.CONFIG] = config
    request = make_mocked_request("GET", raw_path, app=app)
    if request_id is not None:
        request[authz.REQUEST_ID] = request_id
    response = web.StreamResponse(headers=CIMultiDict(own))
    await gateway._security_headers(request, response)
    return response.headers


@given(answers())
async def test_every_response_leaves_with_the_gateways_headers(
    case: tuple[list[tuple[str, str]], str, bool, str | None],
) -> None:
    own_list, raw_path, tls, request_id = case
    own = CIMultiDict(own_list)
    out = await _finished(own_list, raw_path, tls, request_id)
    # Set always, one value each, whatever the response said.
    assert out.getall("Server") == ["hive-boundary"]
    assert out.getall("X-Content-Type-Options") == ["nosniff"]
    if request_id is not None:
        assert out.getall("X-Hive-Request-Id") == [request_id]
    # No CORS header anywhere outside a capability space; other names kept.
    assert not [n for n in out if n.lower().startswith("access-control-")]
    assert out.getall("X-Access-Control-Note", []) == own.getall("X-Access-Control-Note", [])
    if raw_path.startswith("/agent/"):
        assert out.getall("Content-Security-Policy") == [gateway.AGENT_CSP]
        assert out.getall("Referrer-Policy") == ["no-referrer"]
        for name in ("Set-Cookie", "X-Frame-Options", "Strict-Transport-Security"):
            assert name not in out
        return
    # The response's own CSP keeps its words and always forbids foreign framing.
    csp = own.get("Content-Security-Policy")
    if csp is None:
        assert out.getall("Content-Security-Policy") == [gateway._OPERATOR_CSP_DEFAULT]
    elif "frame-ancestors" in csp:
        assert out.getall("Content-Security-Policy") == own.getall("Content-Security-Policy")
    else:
        assert out.getall("Content-Security-Policy") == [f"{csp}; frame-ancestors 'self'"]
    # Defaults only where the response has none of its own.
    defaults = dict(_OPERATOR_DEFAULTS)
    if not raw_path.startswith("/static/"):
        defaults["Cache-Control"] = "no-store"
    if tls:
        defaults["Strict-Transport-Security"] = "max-age=31536000"
    for name, value in defaults.items():
        assert out.getall(name) == (own.getall(name) if name in own else [value]), name
    if raw_path.startswith("/static/") and "Cache-Control" not in own:
        assert "Cache-Control" not in out
    if not tls:
        assert out.getall("Strict-Transport-Security", []) == own.getall(
            "Strict-Transport-Security", []
        )
