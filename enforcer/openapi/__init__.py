"""OpenAPI 3 descriptions of the core's two surfaces, built from the route tables.

Each surface (:mod:`enforcer.agent_api`, :mod:`enforcer.operator_api`) declares
its routes once as :class:`ApiRoute` values: method, path, catalogue action,
resource function, handler, body/query :class:`~enforcer.bodies.Schema` and
documented responses. The daemons register exactly these routes and
:func:`build_document` describes exactly these routes, so the documents
(``agent.json``, ``operator.json`` beside this file, regenerated with
``python -m enforcer.openapi``) cannot list a route that does not exist. The
schemathesis run in ``tests/core/test_openapi.py`` keeps the response side true.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from enforcer.bodies import Schema, json_schema

__all__ = ["DOCUMENTS", "ApiRoute", "build_document", "document_path", "load_document"]

DOCUMENTS = ("agent", "operator")


@dataclass(frozen=True, slots=True)
class ApiRoute:
    """One route of a surface: how it is registered, enforced and described."""

    method: str
    path: str
    action: str
    resource: Callable[[web.Request], Any] | str
    handler: Handler
    summary: str
    body: Schema | None = None
    query: Schema | None = None
    raw_body: bool = False  # an opaque byte body (state files)
    responses: dict[int, str] = field(default_factory=dict)
    ok_status: int = 200
    ok_type: str = "application/json"
    path_params: dict[str, str] = field(default_factory=dict)  # name -> regex


_ERROR = {
    "type": "object",
    "required": ["error", "reason"],
    "properties": {
        "error": {"type": "string"},
        "reason": {"type": "string"},
        "request_id": {"type": "string"},
    },
}


def _openapi_path(path: str) -> str:
    # aiohttp's {name:regex} -> OpenAPI's {name}
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)


def _params(route: ApiRoute) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name in re.findall(r"\{(\w+)(?::[^}]*)?\}", route.path):
        schema: dict[str, Any] = {"type": "string"}
        pattern = route.path_params.get(name)
        if pattern:
            schema["pattern"] = f"^(?:{pattern})$"
        out.append({"name": name, "in": "path", "required": True, "schema": schema})
    if route.query is not None:
        props = json_schema(route.query)["properties"]
        for name, spec in route.query.fields.items():
            out.append(
                {"name": name, "in": "query", "required": spec.required, "schema": props[name]}
            )
    return out


def build_document(title: str, description: str, routes: Sequence[ApiRoute]) -> dict[str, Any]:
    """The OpenAPI 3.0 document of ``routes``."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        op: dict[str, Any] = {
            "operationId": re.sub(
                r"[^A-Za-z0-9]+", "_", f"{route.method.lower()}_{_openapi_path(route.path)}"
            ).strip("_"),
            "summary": route.summary,
            "description": f"Action `{route.action}`.",
            "x-hive-action": route.action,
        }
        params = _params(route)
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {
                "required": any(f.required for f in route.body.fields.values()),
                "content": {"application/json": {"schema": json_schema(route.body)}},
            }
        elif route.raw_body:
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        ok: dict[str, Any] = {"description": "success"}
        if route.ok_type == "application/json":
            ok["content"] = {"application/json": {"schema": {"type": "object"}}}
        elif route.ok_type == "text/event-stream":
            ok["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
        else:
            ok["content"] = {route.ok_type: {"schema": {"type": "string", "format": "binary"}}}
        responses: dict[str, Any] = {str(route.ok_status): ok}
        for status, text in {
            400: "bad input",
            403: "refused by the transport check or the policy",
            404: "no such object or route",
            413: "body too large",
            # Routes that take a body: one sent with a Content-Encoding is refused.
            **({415: "body sent with a Content-Encoding"} if "requestBody" in op else {}),
            **route.responses,
        }.items():
            responses[str(status)] = {
                "description": text,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        op["responses"] = responses
        paths.setdefault(_openapi_path(route.path), {})[route.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": "1", "description": description},
        "paths": paths,
        "components": {"schemas": {"Error": _ERROR}},
    }


def document_path(surface: str) -> Path:
    """Where the checked-in document of ``surface`` lives."""
    return Path(__file__).resolve().parent / f"{surface}.json"


def load_document(surface: str) -> dict[str, Any]:
    """The checked-in document of ``surface`` (``agent`` or ``operator``)."""
    data: dict[str, Any] = json.loads(document_path(surface).read_text(encoding="utf-8"))
    return data
